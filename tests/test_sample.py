"""Tests for common/sample.py: FACECOM layout, determinism, regeneration, and learnability."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.feature import hog
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from common import sample
from common.distortions import DISTORTIONS

TINY = {"train": 2, "val": 2}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return sample.create_sample(tmp_path_factory.mktemp("sample") / "sample", seed=0)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.jpg"))}


def _identities(root: Path, split: str) -> list[Path]:
    return sorted(p for p in (root / "Task_B" / split).iterdir() if p.is_dir())


def test_layout_matches_facecom(root):
    assert sorted(p.name for p in root.iterdir()) == ["Task_A", "Task_B", sample.STAMP_NAME]
    for split, n_ids in sample.N_IDENTITIES.items():
        folders = _identities(root, split)
        assert len(folders) == n_ids
        counts = []
        for folder in folders:
            clean = sorted(folder.glob("*.jpg"))
            counts.append(len(clean))
            assert all(p.stem.startswith(folder.name + "_") and len(p.stem) == len(folder.name)
                       + 5 for p in clean)
            expected = {f"{p.stem}_{name}.jpg" for p in clean for name in DISTORTIONS}
            assert {p.name for p in (folder / "distortion").iterdir()} == expected
        assert set(counts) <= {1, 2, 3} and 1 in counts and 3 in counts
    image = cv2.imread(str(next((root / "Task_B" / "val").rglob("*_foggy.jpg"))))
    assert image.shape == (sample.IMAGE_SIZE, sample.IMAGE_SIZE, 3)


def test_task_a_is_byte_copy_of_task_b_clean(root):
    for split in sample.N_IDENTITIES:
        task_a = {p.name: p.read_bytes() for p in (root / "Task_A" / split).glob("*/*.jpg")}
        task_b = {p.name: p.read_bytes() for p in (root / "Task_B" / split).glob("*/*.jpg")}
        assert task_a == task_b


def test_splits_identity_disjoint_and_gender_ratio(root):
    names = {split: {p.name for p in _identities(root, split)} for split in sample.N_IDENTITIES}
    assert not names["train"] & names["val"]
    assert len(names["train"]) >= 48 and len(names["val"]) >= 40
    for split in sample.N_IDENTITIES:
        male = list((root / "Task_A" / split / "male").glob("*.jpg"))
        female = list((root / "Task_A" / split / "female").glob("*.jpg"))
        assert 3.0 <= len(male) / len(female) <= 5.0
        people = {g: {p.stem[:-5] for p in files} for g, files in
                  (("male", male), ("female", female))}
        assert not people["male"] & people["female"]  # one gender per identity
        assert len(people["male"]) == 4 * len(people["female"])


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = _digest(sample.create_sample(tmp_path / "a", seed=0, identities=TINY))
    again = _digest(sample.create_sample(tmp_path / "b", seed=0, identities=TINY))
    other = _digest(sample.create_sample(tmp_path / "c", seed=1, identities=TINY))
    assert first == again
    shared = set(first) & set(other)
    assert shared and all(first[k] != other[k] for k in shared)


def test_ensure_sample_regenerates_only_on_stamp_change(tmp_path, monkeypatch):
    monkeypatch.setattr(sample, "N_IDENTITIES", TINY)
    root = sample.ensure_sample(tmp_path / "s", seed=0)
    stamp = json.loads((root / sample.STAMP_NAME).read_text())
    assert stamp["version"] == sample.SAMPLE_VERSION and stamp["seed"] == 0
    marker = root / "Task_B" / "marker.txt"
    marker.write_text("kept while the stamp matches")
    assert sample.ensure_sample(root, seed=0) == root and marker.exists()
    stamp["version"] = -1
    (root / sample.STAMP_NAME).write_text(json.dumps(stamp))
    sample.ensure_sample(root, seed=0)
    assert not marker.exists()
    assert json.loads((root / sample.STAMP_NAME).read_text())["version"] == sample.SAMPLE_VERSION
    sample.ensure_sample(root, seed=2)  # another seed is another sample
    assert json.loads((root / sample.STAMP_NAME).read_text())["seed"] == 2


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("not a sample")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        sample.create_sample(tmp_path, identities=TINY)
    assert (tmp_path / "precious.txt").exists()


def _hog(path: Path) -> np.ndarray:
    gray = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (64, 64),
                      interpolation=cv2.INTER_AREA)
    return hog(gray, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2))


def test_gender_is_learnable(root):
    """HOG + logistic regression, trained on Task A train, must beat chance (0.5) by 0.2."""
    data = {}
    for split in ("train", "val"):
        files = [(p, label) for label, g in enumerate(("male", "female"))
                 for p in sorted((root / "Task_A" / split / g).glob("*.jpg"))]
        data[split] = (np.array([_hog(p) for p, _ in files]), np.array([y for _, y in files]))
    model = LogisticRegression(C=0.1, class_weight="balanced", max_iter=3000).fit(*data["train"])
    features, labels = data["val"]
    assert balanced_accuracy_score(labels, model.predict(features)) >= 0.70  # seed 0: 0.79


def _pixels(path: Path) -> np.ndarray:
    vec = cv2.resize(cv2.imread(str(path)), (32, 32), interpolation=cv2.INTER_AREA)
    vec = vec.astype(np.float32).ravel()
    vec -= vec.mean()
    return vec / np.linalg.norm(vec)


def test_identity_retrieval_is_learnable(root):
    """Raw-pixel cosine NN of distorted val images against val clean images beats chance."""
    clean = sorted((root / "Task_B" / "val").glob("*/*.jpg"))
    gallery = np.stack([_pixels(p) for p in clean])
    owner = np.array([p.parent.name for p in clean])
    multi = np.array([(owner == o).sum() > 1 for o in owner])
    chance = 1.0 / len(set(owner))
    for name in DISTORTIONS:
        queries = np.stack([_pixels(p.parent / "distortion" / f"{p.stem}_{name}.jpg")
                            for p in clean])
        scores = queries @ gallery.T
        top1 = (owner[scores.argmax(1)] == owner).mean()
        assert top1 >= 0.9, name  # FACECOM protocol: the source image is in the gallery
        np.fill_diagonal(scores, -np.inf)  # harder: find another photo of the same person
        other = (owner[scores.argmax(1)] == owner)[multi].mean()
        assert other >= 5 * chance, (name, other, chance)  # seed 0: ~0.35 = 16x chance
