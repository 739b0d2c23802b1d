"""Tests for common/faces.py: MTCNN detection, aligned crops, fallback rule and cache."""
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from common import faces
from conftest import bomb_png

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "facecom"
needs_real_data = pytest.mark.skipif(
    not REAL_DATA.exists(), reason="needs ../shared/data/facecom (real FACECOM train split)")

# Eileen Collins' face in skimage's astronaut image (512x512), checked by eye: x 180-268, y 61-172.
ASTRONAUT_FACE_CENTRE = (224.0, 116.0)


@pytest.fixture(scope="module")
def astronaut_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("astronaut") / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    return path


def _detect_on_crop(crop: np.ndarray):
    """Re-run MTCNN on an aligned crop: (box centre, eye landmarks) of the most central face."""
    boxes, probs, points = faces.create_detector(device="cpu", min_face_size=20).detect(
        crop, landmarks=True)
    assert boxes is not None, "no face in the aligned crop"
    best = faces._select_face(np.asarray(boxes), np.asarray(probs), crop.shape[1], crop.shape[0])
    box = boxes[best]
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), points[best][:2]


def test_astronaut_face_found_and_centred(astronaut_path, tmp_path):
    result = faces.align_faces([astronaut_path], image_size=160, cache_dir=tmp_path,
                               progress=False)
    assert result.found.tolist() == [True] and result.n_fallback == 0
    box = result.boxes[0]
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    assert centre == pytest.approx(ASTRONAUT_FACE_CENTRE, abs=12)
    assert result.sizes[0].tolist() == [512, 512]
    crop_centre, _ = _detect_on_crop(result.images[0])
    assert crop_centre == pytest.approx((80, 80), abs=10)


def test_tilted_face_is_levelled(astronaut_path, tmp_path):
    image = skimage.data.astronaut()
    centre = ASTRONAUT_FACE_CENTRE
    rotation = cv2.getRotationMatrix2D(centre, 20, 1.0)  # face tilted by 20 degrees
    path = tmp_path / "tilted.png"
    Image.fromarray(cv2.warpAffine(image, rotation, (512, 512))).save(path)
    result = faces.align_faces([path], image_size=160, cache_dir=tmp_path, progress=False)
    assert result.found[0]
    _, (left_eye, right_eye) = _detect_on_crop(result.images[0])
    tilt = np.degrees(np.arctan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))
    assert abs(tilt) < 5, f"eyes still tilted by {tilt:.1f} degrees after alignment"


def test_uniform_and_gradient_images_fall_back_to_centre_crop(tmp_path):
    # pixel value = column index, so the crop's columns reveal which source columns it took
    gradient = np.repeat(np.tile(np.arange(200, dtype=np.uint8), (200, 1))[..., None], 3, axis=2)
    Image.fromarray(gradient).save(tmp_path / "gradient.png")
    Image.new("RGB", (300, 200), (128, 128, 128)).save(tmp_path / "blank.png")
    result = faces.align_faces([tmp_path / "gradient.png", tmp_path / "blank.png"],
                               image_size=112, margin=0.2, cache_dir=tmp_path, progress=False)
    assert result.found.tolist() == [False, False] and result.n_fallback == 2
    assert np.isnan(result.boxes).all() and np.isnan(result.probs).all()
    # side = 200 * 0.5 * 1.2 = 120 px centred -> source columns 40..159
    assert result.images[0, 56, 0, 0] == 40 and result.images[0, 56, -1, 0] == 159
    assert (result.images[1] == 128).all()
    stats = faces.compute_alignment_stats(result)
    assert stats["detection_rate"] == 0.0 and stats["n_fallback"] == 2
    assert np.isnan(stats["mean_box_size_px"])


def test_off_centre_bystander_is_ignored(tmp_path):
    face = skimage.data.astronaut()[20:220, 130:330]  # 200x200 around the face
    canvas = np.full((600, 600, 3), 90, dtype=np.uint8)
    centred, corner = canvas.copy(), canvas.copy()
    centred[200:400, 200:400] = face  # face centre at 0.0 offset
    corner[0:200, 0:200] = face  # face centre 0.33 of the side off-centre (> 0.3)
    Image.fromarray(centred).save(tmp_path / "centred.png")
    Image.fromarray(corner).save(tmp_path / "corner.png")
    result = faces.align_faces([tmp_path / "centred.png", tmp_path / "corner.png"],
                               cache_dir=tmp_path, progress=False)
    assert result.found.tolist() == [True, False]


def test_shape_dtype_and_colour_modes(astronaut_path, tmp_path):
    rgb = Image.open(astronaut_path)
    paths = []
    for mode in ("L", "RGBA", "CMYK"):
        path = tmp_path / f"astronaut_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        rgb.convert(mode).save(path)
        paths.append(path)
    result = faces.align_faces(paths, image_size=40, cache_dir=tmp_path, progress=False)
    assert result.images.shape == (3, 40, 40, 3) and result.images.dtype == np.uint8
    assert result.boxes.shape == (3, 4) and result.found.dtype == bool
    assert result.found.all()
    # the >2x shrink path (area pre-resize) must agree with a 400 px crop area-resized to 40 px
    big = faces.align_faces(paths[1:2], image_size=400, cache_dir=tmp_path, progress=False)
    reference = cv2.resize(big.images[0], (40, 40), interpolation=cv2.INTER_AREA)
    assert np.abs(reference.astype(float) - result.images[1]).mean() < 4


def test_second_call_is_a_cache_hit(astronaut_path, tmp_path, monkeypatch):
    first = faces.align_faces([astronaut_path], image_size=64, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("aligned_64px_*.sqlite"))) == 1  # the per-image store

    def no_detector(**kwargs):
        raise AssertionError("detector built on what should be a cache hit")

    monkeypatch.setattr(faces, "create_detector", no_detector)
    second = faces.align_faces([astronaut_path], image_size=64, cache_dir=tmp_path,
                               progress=False)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.boxes, second.boxes)
    with pytest.raises(AssertionError, match="cache hit"):  # other settings -> other key
        faces.align_faces([astronaut_path], image_size=64, margin=0.3, cache_dir=tmp_path,
                          progress=False)


def test_invalid_arguments_and_unreadable_file(tmp_path):
    with pytest.raises(ValueError, match="margin"):
        faces.align_faces([], margin=-0.1, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        faces.align_faces([tmp_path / "missing.jpg"], cache_dir=tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(faces.FaceReadError, match="broken.jpg"):
        faces.align_faces([tmp_path / "broken.jpg"], cache_dir=tmp_path, progress=False)
    (tmp_path / "bomb.png").write_bytes(bomb_png())  # not an OSError inside Pillow
    with pytest.raises(faces.FaceReadError, match="bomb.png.*decompression bomb"):
        faces.align_faces([tmp_path / "bomb.png"], cache_dir=tmp_path, progress=False)


def _real_clean_images(n_lfw: int, n_studio: int) -> list[Path]:
    clean = sorted(p for p in (REAL_DATA / "Task_B" / "train").glob("*/*.jpg"))
    lfw = [p for p in clean if "frontal" not in p.parent.name]
    studio = [p for p in clean if "frontal" in p.parent.name]
    return _evenly_spaced(lfw, n_lfw) + _evenly_spaced(studio, n_studio)


def _evenly_spaced(items: list, count: int) -> list:
    return [items[i] for i in np.linspace(0, len(items) - 1, count).astype(int)] if count else []


@needs_real_data
def test_real_clean_faces_found_and_centred(tmp_path):
    paths = _real_clean_images(8, 4)
    result = faces.align_faces(paths, image_size=112, cache_dir=tmp_path, progress=False)
    assert result.found.sum() >= 10, f"faces found in {result.found.sum()}/12 real images"
    for box, (width, height) in zip(result.boxes[result.found], result.sizes[result.found]):
        centre_x = (box[0] + box[2]) / 2
        assert abs(centre_x - width / 2) < 0.15 * width  # the subject is framed in the middle
        assert 0.15 * min(width, height) < box[2] - box[0] < 0.8 * min(width, height)
    for crop in result.images[result.found][:4]:
        crop_centre, _ = _detect_on_crop(crop)
        assert crop_centre == pytest.approx((56, 56), abs=10)
    stats = faces.compute_alignment_stats(result)
    assert stats["detection_rate"] == pytest.approx(result.found.mean())
    assert 0.2 < stats["mean_box_fraction"] < 0.7


@needs_real_data
def test_large_image_is_detected_on_a_downscaled_copy(tmp_path, monkeypatch):
    source = _real_clean_images(0, 1)[0]
    small = faces.align_faces([source], cache_dir=tmp_path / "a", progress=False)
    large_path = tmp_path / "large.jpg"
    with Image.open(source) as image:
        scale = 3000 / image.height
        image.resize((round(image.width * scale), 3000), Image.Resampling.BICUBIC).save(
            large_path, quality=92)

    seen_shapes = []
    original_create = faces.create_detector

    def spying_create(**kwargs):
        detector = original_create(**kwargs)
        detect = detector.detect

        def spy(images, landmarks=False):
            seen_shapes.append(images.shape)
            return detect(images, landmarks=landmarks)

        detector.detect = spy
        return detector

    monkeypatch.setattr(faces, "create_detector", spying_create)
    tracemalloc.start()
    large = faces.align_faces([large_path], cache_dir=tmp_path / "b", progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert max(seen_shapes[0][1:3]) <= faces.DETECT_MAX_SIDE
    # a full-size 3000 px RGB array alone would be ~14 MB; draft decoding keeps numpy far below
    assert peak < 10 * 2**20, f"numpy peak {peak / 2**20:.1f} MiB"
    assert large.found[0] and large.sizes[0, 1] == 3000
    np.testing.assert_allclose(large.boxes[0], small.boxes[0] * scale, atol=0.04 * 3000)
    assert np.abs(large.images[0].astype(float) - small.images[0]).mean() < 20
