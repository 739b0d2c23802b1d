"""Tests for common/cache.py: strict decoding and mode conversion, fingerprints, array cache,
ImageArrayDataset."""
from __future__ import annotations

import errno
import hashlib
import os
import pickle
import shutil
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image

from common import cache
from common.cache import ImageArrayDataset, load_image, load_image_array
from common.image_decode import ImageReadError, to_rgb
from conftest import bomb_png

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "facecom"
needs_real = pytest.mark.skipif(not REAL_DATA.exists(),
                                reason="needs ../shared/data/facecom (real FACECOM train split)")


def save(image: Image.Image, path: Path, fmt: str = "PNG", **kwargs) -> Path:
    image.save(path, fmt, **kwargs)
    return path


def noise_jpeg(path: Path, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return save(Image.fromarray(pixels), path, "JPEG", quality=90)


def _reference_square(path, size: int) -> np.ndarray:
    """An independent full decode, centre square crop and bilinear resize, to compare with."""
    full = Image.fromarray(load_image(path))
    side = min(full.size)
    left, top = (full.size[0] - side) // 2, (full.size[1] - side) // 2
    return np.asarray(full.crop((left, top, left + side, top + side)).resize(
        (size, size), Image.BILINEAR))

def test_mode_conversions(tmp_path: Path) -> None:
    grey = load_image(save(Image.new("L", (5, 4), 77), tmp_path / "l.png"))
    assert grey.shape == (4, 5, 3) and grey.dtype == np.uint8 and (grey == 77).all()
    clear = load_image(save(Image.new("LA", (3, 3), (10, 0)), tmp_path / "la.png"))
    assert (clear == 255).all()  # transparent -> white background
    half = load_image(save(Image.new("RGBA", (3, 3), (200, 0, 0, 128)), tmp_path / "rgba.png"))
    # 200 * 128/255 + 255 * 127/255 = 227.4 ; 0 * 128/255 + 255 * 127/255 = 127.0
    assert np.abs(half[0, 0].astype(int) - [227, 127, 127]).max() <= 1
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert (load_image(save(palette, tmp_path / "p.png")) == [10, 20, 30]).all()
    palette.info["transparency"] = 1
    assert (load_image(save(palette, tmp_path / "pt.png")) == 255).all()
    cmyk = load_image(save(Image.new("CMYK", (2, 2), (0, 255, 0, 0)), tmp_path / "c.tif", "TIFF"))
    assert (cmyk == [255, 0, 255]).all()  # no cyan/yellow/black, full magenta
    deep = np.array([[0, 32896, 65535]], dtype=np.uint16)  # 32896 * 255 / 65535 = 128
    sixteen = load_image(save(Image.fromarray(deep), tmp_path / "g16.png"))
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert sixteen[0, :, 0].tolist() == [0, 128, 255] and (sixteen[..., 0] == sixteen[..., 2]).all()


def test_sixteen_bit_grey_scales_to_eight_bits_for_every_decoder(tmp_path: Path) -> None:
    """A hand-made 16-bit PNG: full scale is white whatever else the image holds, half scale
    mid-grey; MTCNN's detection copy (`common.faces`) decodes it the same way."""
    from common import faces

    deep = np.array([[32768, 65535], [32768, 32768]], dtype=np.uint16)
    path = save(Image.fromarray(deep), tmp_path / "g16.png")
    with Image.open(path) as image:
        assert image.mode == "I;16"
        pixels = np.asarray(to_rgb(image))
    assert pixels[..., 0].tolist() == [[128, 255], [128, 128]]  # 32768 * 255 / 65535 = 127.5
    assert (pixels == pixels[..., :1]).all()  # grey: three equal channels
    np.testing.assert_array_equal(load_image(path), pixels)
    copy, size = faces._load_detection_copy(str(path), max_side=640)
    np.testing.assert_array_equal(copy, pixels)
    assert size == (2, 2)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = save(Image.new("RGB", (20, 10), (0, 0, 255)), tmp_path / "o.jpg", "JPEG",
                exif=exif.tobytes())
    assert load_image(path).shape == (20, 10, 3)


def test_unreadable_files_raise_with_reason(tmp_path: Path) -> None:
    good = noise_jpeg(tmp_path / "good.jpg").read_bytes()
    cases = {
        "zero.jpg": (b"", "zero-byte file"),
        "text.jpg": (b"just some text", "not an image (format not recognised)"),
        "cut.jpg": (good[: len(good) // 2], "truncated"),
        "padded.jpg": (good[: len(good) // 2] + bytes(len(good)),
                       "truncated (JPEG end marker missing)"),
    }
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageReadError) as info:
            load_image(tmp_path / name)
        assert info.value.reason == reason and info.value.path == str(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "validate_dataset" in str(info.value)
    with pytest.raises(ImageReadError, match="cannot open file"):
        load_image(tmp_path / "missing.jpg")


def test_fingerprint_stable_across_roots_and_order(tmp_path: Path) -> None:
    for root in ("a", "b"):
        folder = tmp_path / root / "Task_A" / "train" / "male"
        folder.mkdir(parents=True)
        for i in range(3):
            noise_jpeg(folder / f"{i}.jpg", seed=i)
    paths_a = sorted(str(p) for p in (tmp_path / "a").rglob("*.jpg"))
    paths_b = sorted(str(p) for p in (tmp_path / "b").rglob("*.jpg"))
    assert cache.compute_fingerprint(paths_a) == cache.compute_fingerprint(paths_b[::-1])
    assert cache.compute_fingerprint(paths_a) != cache.compute_fingerprint(paths_a[:2])
    with open(paths_a[0], "ab") as handle:
        handle.write(b"\0")
    assert cache.compute_fingerprint(paths_a) != cache.compute_fingerprint(paths_b)
    # Paths alone (the resume check before the first step): sizes do not enter, names do, and
    # no file is read, so a missing one is no error.
    assert (cache.compute_fingerprint(paths_a, sizes=False)
            == cache.compute_fingerprint(paths_b[::-1], sizes=False))
    assert (cache.compute_fingerprint(paths_a, sizes=False)
            != cache.compute_fingerprint(paths_a[:2], sizes=False))
    moved = [path.replace("0.jpg", "9.jpg") for path in paths_a]
    assert (cache.compute_fingerprint(moved, sizes=False)
            != cache.compute_fingerprint(paths_a, sizes=False))
    # As documented: SHA-1 over the sorted relative paths, from Task_A on, or else from the
    # common folder (here two identity folders of a VGGFace2-style root), with the sizes.
    def sha1(lines: list[str]) -> str:
        return hashlib.sha1("\n".join(sorted(lines)).encode()).hexdigest()

    sizes = [os.path.getsize(path) for path in paths_a]
    assert cache.compute_fingerprint(paths_a[::-1]) == sha1(
        [f"Task_A/train/male/{i}.jpg\t{size}" for i, size in enumerate(sizes)])
    people = [str(tmp_path / "faces" / name) for name in ("ann/1.jpg", "bob/x/2.jpg", "3.jpg")]
    assert cache.compute_fingerprint(people, sizes=False) == sha1(["ann/1.jpg", "bob/x/2.jpg",
                                                                   "3.jpg"])


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    # PNG so the expected values need no JPEG draft scaling (the real-data test covers that)
    rng = np.random.default_rng(0)
    paths = [save(Image.fromarray(rng.integers(0, 256, (30, 40 + 8 * i, 3), dtype=np.uint8)),
                  folder / f"{i}.png") for i in range(4)]
    # 60x20: blue | red 20x20 centre | blue -> a centre crop is all red
    banded = np.zeros((20, 60, 3), dtype=np.uint8)
    banded[:, :, 2] = 255
    banded[:, 20:40] = [255, 0, 0]
    paths.append(save(Image.fromarray(banded), folder / "banded.png"))
    return [str(p) for p in paths]


def test_load_image_array_resizes_centre_crops_and_caches(images: list[str], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cache_dir = tmp_path / "cache"
    array = load_image_array(images, 10, cache_dir=cache_dir, progress=False, workers=2)
    assert isinstance(array, np.memmap) and array.shape == (5, 10, 10, 3)
    assert array.dtype == np.uint8 and not array.flags.writeable
    for row, path in zip(array, images):
        assert np.array_equal(row, _reference_square(path, 10))
    assert (array[4, :, 1:-1] == [255, 0, 0]).all()  # interior of the crop is the red band
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(
        [Path(array.filename).name, "features"])  # the array and the per-image store

    def fail(path: str, image_size: int, fit: str) -> np.ndarray:
        raise AssertionError(f"decoded {path} although the cache should hit")

    monkeypatch.setattr(cache, "_decode_resized", fail)
    again = load_image_array(images, 10, cache_dir=cache_dir, progress=False)
    assert np.array_equal(again, array)
    with pytest.raises(AssertionError, match="decoded"):  # another size is another cache entry
        load_image_array(images, 12, cache_dir=cache_dir, progress=False)


def test_another_file_list_decodes_only_its_new_images(images: list[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A grown or reordered list is another array, filled from the per-image store: only the
    image it has not seen is decoded."""
    cache_dir = tmp_path / "cache"
    first = load_image_array(images, 8, cache_dir=cache_dir, progress=False)
    decoded = []
    original = cache._decode_resized

    def counting(path: str, image_size: int, fit: str) -> np.ndarray:
        decoded.append(path)
        return original(path, image_size, fit)

    monkeypatch.setattr(cache, "_decode_resized", counting)
    extra = str(noise_jpeg(Path(images[0]).parent / "new.jpg", seed=9))
    grown = load_image_array([*images, extra], 8, cache_dir=cache_dir, progress=False)
    assert grown.shape == (6, 8, 8, 3) and decoded == [extra]
    assert np.array_equal(grown[:5], first)
    reordered = load_image_array(images[::-1], 8, cache_dir=cache_dir, progress=False)
    assert np.array_equal(reordered, first[::-1]) and decoded == [extra]


def test_same_size_edit_in_place_and_another_root_miss_the_cache(tmp_path: Path) -> None:
    """An EXIF-style in-place edit keeps the byte size; the edited file must be decoded anew,
    and a second data root with the same relative paths must not share the first's entry."""
    pixels = np.random.default_rng(3).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    roots = [tmp_path / name / "Task_A" / "train" / "male" for name in ("first", "second")]
    for root, image in zip(roots, (pixels, pixels[::-1])):
        root.mkdir(parents=True)
        save(Image.fromarray(image), root / "a.ppm", "PPM")
    path = roots[0] / "a.ppm"
    cache_dir = tmp_path / "cache"
    before = np.array(load_image_array([path], 12, cache_dir=cache_dir, progress=False))
    other = load_image_array([roots[1] / "a.ppm"], 12, cache_dir=cache_dir, progress=False)
    assert not np.array_equal(other, before)  # same relative path, other root, other pixels
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    save(Image.fromarray(pixels[:, ::-1]), path, "PPM")  # mirrored: same header, same size
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))  # an edit a second later
    assert path.stat().st_size == size
    after = load_image_array([path], 12, cache_dir=cache_dir, progress=False)
    assert np.array_equal(after[0], _reference_square(path, 12))
    assert np.array_equal(after[0], before[0, :, ::-1])
    assert len(list(cache_dir.glob("*.npy"))) == 3


def test_file_list_key_sees_content_root_order_settings_and_odd_names(tmp_path: Path) -> None:
    """The key every cache shares (images, aligned faces, chips, descriptors, hashes)."""
    first, second = tmp_path / "one" / "a.jpg", tmp_path / "two" / "a.jpg"
    for path in (first, second):
        path.parent.mkdir()
        noise_jpeg(path)
    odd = Path(os.fsdecode(os.fsencode(tmp_path / "one") + b"/caf\xe9.jpg"))
    noise_jpeg(odd, seed=1)
    key = cache.file_list_key([first, odd], {"size": 8})
    assert key == cache.file_list_key([str(first), str(odd)], {"size": 8})  # stable
    assert key != cache.file_list_key([second, odd], {"size": 8})  # other root
    assert key != cache.file_list_key([odd, first], {"size": 8})  # rows follow the order
    assert key != cache.file_list_key([first, odd], {"size": 9})
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # same bytes, touched
    assert key != cache.file_list_key([first, odd], {"size": 8})


def test_decompression_bomb_is_an_image_read_error(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    with pytest.raises(ImageReadError, match="decompression-bomb limit") as info:
        load_image(path)
    assert info.value.path == str(path)


def test_bad_image_raises_and_leaves_no_cache(images: list[str], tmp_path: Path) -> None:
    bad = Path(images[0]).parent / "bad.jpg"
    bad.write_bytes(b"")
    cache_dir = tmp_path / "cache"
    with pytest.raises(ImageReadError) as info:
        load_image_array([*images, str(bad)], 8, cache_dir=cache_dir, progress=False)
    assert info.value.path == str(bad)
    # no partial or temporary array left behind (the per-image store keeps what it finished)
    assert [p.name for p in cache_dir.iterdir()] == ["features"]


def test_full_disk_is_reported_before_decoding(images: list[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "posix_fallocate"):
        pytest.skip("this platform has no posix_fallocate; the cache stays sparse")
    requested = []

    def full_disk(fd: int, offset: int, length: int) -> None:
        requested.append(length)
        raise OSError(errno.ENOSPC, "No space left on device")

    def never(path: str, image_size: int, fit: str) -> np.ndarray:
        raise AssertionError("decoded although the disk is full")

    monkeypatch.setattr(os, "posix_fallocate", full_disk)
    monkeypatch.setattr(cache, "_decode_resized", never)
    cache_dir = tmp_path / "cache"
    with pytest.raises(OSError, match="Not enough disk space") as info:
        load_image_array(images, 100, cache_dir=cache_dir, progress=False)
    assert info.value.errno == errno.ENOSPC and str(cache_dir) in str(info.value)
    assert requested and requested[0] >= 5 * 100 * 100 * 3  # the whole array, header aside
    assert [p.name for p in cache_dir.iterdir()] == ["features"]  # no array, nothing decoded


def test_dataset_without_and_with_transform(images: list[str], tmp_path: Path) -> None:
    array = load_image_array(images, 8, cache_dir=tmp_path / "cache", progress=False)
    plain = ImageArrayDataset(array, [0, 1, 0, 1, 1])
    tensor, label = plain[4]
    assert tensor.shape == (3, 8, 8) and tensor.dtype == torch.float32 and label == 1
    assert torch.equal(tensor[:, 3, 3], torch.tensor([1.0, 0.0, 0.0]))  # red centre in [0, 1]
    to_tensor = ImageArrayDataset(array, np.arange(5), A.Compose([ToTensorV2()]),
                                  extra=list("abcde"))
    image, label, extra = to_tensor[2]
    assert torch.equal(image, torch.from_numpy(np.array(array[2])).permute(2, 0, 1))
    assert (label, extra) == (2, "c")
    with pytest.raises(ValueError, match="one label per image"):
        ImageArrayDataset(array, [0, 1])


def test_dataset_pickles_memmap_by_file_name(images: list[str], tmp_path: Path) -> None:
    array = load_image_array(images, 32, cache_dir=tmp_path / "cache", progress=False)
    dataset = ImageArrayDataset(array, [0] * 5)
    payload = pickle.dumps(dataset)
    assert len(payload) < array.nbytes // 4  # the 15 KB of pixels are not in the pickle
    restored = pickle.loads(payload)
    assert torch.equal(restored[3][0], dataset[3][0])
    sliced = ImageArrayDataset(array[1:3], [0, 0])  # a slice must travel as data
    assert torch.equal(pickle.loads(pickle.dumps(sliced))[1][0], dataset[2][0])


@needs_real
def test_real_large_jpeg_draft_decode_close_to_full_decode(tmp_path: Path) -> None:
    frontal = sorted((REAL_DATA / "Task_B" / "train").glob("*_frontal/*.jpg"))[:4]
    assert frontal and max(Image.open(p).size[1] for p in frontal) >= 448
    array = load_image_array([str(p) for p in frontal], 112, cache_dir=tmp_path, progress=False)
    for row, path in zip(array, frontal):
        expected = _reference_square(path, 112).astype(float)
        assert np.abs(row.astype(float) - expected).mean() < 3.0
    shutil.rmtree(tmp_path)


def test_stretch_keeps_the_whole_image_and_crop_its_centre(tmp_path):
    # A 2:1 image: red left quarter, green middle half, blue right quarter.
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :20, 0], wide[:, 20:60, 1], wide[:, 60:, 2] = 255, 255, 255
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    stretched = cache.load_resized(path, 20, fit="stretch")
    cropped = cache.load_resized(path, 20, fit="crop")
    assert stretched[10, 1].tolist() == [255, 0, 0] and stretched[10, 18].tolist() == [0, 0, 255]
    assert (cropped[:, :, 1] == 255).all()  # only the green middle survives the crop
    np.testing.assert_array_equal(cache.resize_square(wide, 20, fit="stretch"), stretched)
    arrays = {fit: cache.load_image_array([str(path)], 20, cache_dir=tmp_path / "c", fit=fit,
                                          progress=False) for fit in cache.FITS}
    np.testing.assert_array_equal(arrays["stretch"][0], stretched)
    np.testing.assert_array_equal(arrays["crop"][0], cropped)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2  # one cache file per fit
    with pytest.raises(ValueError, match="stretch"):
        cache.load_resized(path, 20, fit="pad")


def test_npz_cache_round_trip_and_unreadable_files(tmp_path):
    target = tmp_path / "sub" / "c.npz"
    cache.write_npz(target, a=np.arange(3), b=np.ones((2, 2), bool))
    read = cache.read_npz(target, ("a", "b"))
    np.testing.assert_array_equal(read["a"], [0, 1, 2])
    assert read["b"].dtype == bool and read["b"].all()
    assert list(target.parent.iterdir()) == [target]  # no temporary file left behind
    assert cache.read_npz(target, ("a", "missing")) is None
    assert cache.read_npz(tmp_path / "absent.npz", ("a",)) is None
    target.write_bytes(b"truncated")
    assert cache.read_npz(target, ("a",)) is None


# --- streaming -----------------------------------------------------------------------------

def test_streamed_training_gives_the_cached_batches(sample_root, tmp_path):
    """The same seeded train loader over the cached memmap and over files decoded as read:
    identical first batches, augmentations included (two loader workers)."""
    from common import experiment, transforms

    paths = sorted(str(p) for p in (sample_root / "Task_B" / "train").rglob("*.jpg"))[:48]
    labels = np.arange(len(paths)) % 5
    cached = load_image_array(paths, 32, cache_dir=tmp_path, progress=False, fit="stretch")
    streamed = load_image_array(paths, 32, cache_dir=tmp_path / "unused", progress=False,
                                fit="stretch", image_cache="stream")
    assert isinstance(streamed, cache.ImageFiles) and not (tmp_path / "unused").exists()
    batches = []
    for images in (cached, streamed):
        dataset = ImageArrayDataset(images, labels, transforms.create_train_transform(
            32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
        loader = experiment.make_loader(dataset, 16, shuffle=True, seed=3, epoch=1,
                                        num_workers=2)
        batches.append(next(iter(loader)))
    torch.testing.assert_close(batches[0][0], batches[1][0], rtol=0, atol=0)
    assert torch.equal(batches[0][1], batches[1][1])
    # Rows, subsets and mirrored views decode to the cached pixels.
    np.testing.assert_array_equal(np.asarray(streamed), cached)
    mask = labels == 2
    np.testing.assert_array_equal(np.asarray(streamed[mask]), cached[mask])
    np.testing.assert_array_equal(streamed[:, :, ::-1][5], cached[5][:, ::-1])


def test_auto_streams_when_the_array_would_not_fit(tmp_path, monkeypatch):
    assert cache.choose_image_cache(1000, 112, tmp_path) == "memmap"  # 38 MB
    assert cache.choose_image_cache(10**6, 112, tmp_path) == "stream"  # 38 GB > 2 GiB
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: usage._replace(free=50 * 2**20))  # 50 MiB free
    assert cache.choose_image_cache(1000, 112, tmp_path) == "stream"
    assert cache.choose_image_cache(1000, 112, tmp_path, "memmap") == "memmap"
    with pytest.raises(ValueError, match="image_cache='disk'; choose one of"):
        cache.choose_image_cache(10, 8, tmp_path, "disk")
