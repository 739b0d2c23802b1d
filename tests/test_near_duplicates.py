"""common/near_duplicates.py: the perceptual hash, its distances, the pair search and its cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import near_duplicates


@pytest.fixture
def faces(sample_root) -> list[Path]:
    """Clean photos of different sample identities (distinct pictures)."""
    return [sorted(folder.glob("*.jpg"))[0]
            for folder in sorted((sample_root / "Task_B" / "train").iterdir())[:6]]


def _reencoded(path: Path, target: Path) -> Path:
    image = Image.open(path)
    image.resize((image.width * 2 // 3, image.height * 2 // 3)).save(target, quality=60)
    return target


def test_hamming_distances_count_differing_bits():
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (5, near_duplicates.HASH_BYTES), dtype=np.uint8)
    second = rng.integers(0, 256, (3, near_duplicates.HASH_BYTES), dtype=np.uint8)
    expected = np.array([[bin(int.from_bytes((a ^ b).tobytes(), "big")).count("1")
                          for b in second] for a in first])
    np.testing.assert_array_equal(near_duplicates.hamming_distances(first, second), expected)


def test_copies_are_near_and_other_people_far(faces, tmp_path):
    copy = _reencoded(faces[0], tmp_path / "copy.jpg")
    hashes = np.stack([near_duplicates.compute_phash(Image.open(p)) for p in [copy, *faces]])
    assert hashes.shape == (7, near_duplicates.HASH_BYTES)
    distances = near_duplicates.hamming_distances(hashes[:1], hashes[1:])[0]
    assert distances[0] <= near_duplicates.MAX_DISTANCE
    assert (distances[1:] > near_duplicates.MAX_DISTANCE).all()
    grey = np.asarray(Image.open(faces[0]).convert("L"))
    assert near_duplicates.hamming_distances(  # an array and a PIL image hash alike
        near_duplicates.compute_phash(grey)[None], hashes[1:2])[0, 0] == 0


def test_find_near_duplicates_pairs_copies_and_skips_unreadable(faces, tmp_path, monkeypatch):
    copy = _reencoded(faces[2], tmp_path / "copy.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    cache_dir = tmp_path / "hashes"
    pairs = near_duplicates.find_near_duplicates(faces, [broken, copy], cache_dir=cache_dir)
    assert [(a, b) for a, b, _ in pairs] == [(str(faces[2]), str(copy))]
    hashes, readable = near_duplicates.load_phashes([broken, copy], cache_dir)
    assert readable.tolist() == [False, True] and not hashes[0].any()

    # Each image is hashed once: the per-image store answers, in any list or order.
    monkeypatch.setattr(near_duplicates, "_file_phash", lambda path: pytest.fail(path))
    again = near_duplicates.find_near_duplicates(faces, [broken, copy], cache_dir=cache_dir)
    assert again == pairs
