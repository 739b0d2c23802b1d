"""Tests for common/data.py: readers, gender join, identity splits, layout errors, validation."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import data
from common.distortions import DISTORTIONS
from conftest import bomb_png

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "facecom"
needs_real = pytest.mark.skipif(not REAL_DATA.exists(),
                                reason="needs ../shared/data/facecom (real FACECOM train split)")


def jpeg_bytes(seed: int, size: int = 24) -> bytes:
    """A small noise JPEG; different seeds give different bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class Builder:
    """Writes FACECOM-layout files with unique content under a root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seed = 0

    def write(self, rel: str, content: bytes | None = None) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            self.seed += 1
            content = jpeg_bytes(self.seed)
        path.write_bytes(content)
        return str(path)

    def identity(self, split: str, identity: str, stems: tuple[str, ...], gender: str | None,
                 distortions: tuple[str, ...] = DISTORTIONS) -> None:
        """Clean images (+ distorted copies), mirrored into Task_A when ``gender`` is given."""
        for stem in stems:
            clean = self.write(f"Task_B/{split}/{identity}/{stem}.jpg")
            if gender is not None:
                self.write(f"Task_A/{split}/{gender}/{stem}.jpg", Path(clean).read_bytes())
            for distortion in distortions:
                self.write(f"Task_B/{split}/{identity}/distortion/{stem}_{distortion}.jpg")


@pytest.fixture
def facecom(tmp_path: Path) -> Path:
    """Train split: alice (F, 2 images), bob (M, 1), 001_frontal (M, 1), plus one Task A-only
    image; every clean image has all 7 distortions except alice_0002 (blurred, foggy)."""
    root = tmp_path / "facecom"
    build = Builder(root)
    build.identity("train", "alice", ("alice_0001",), "female")
    build.identity("train", "alice", ("alice_0002",), "female", ("blurred", "foggy"))
    build.identity("train", "bob", ("bob_0001",), "male")
    build.identity("train", "001_frontal", ("001_frontal",), "male")
    build.write("Task_A/train/female/zoe_0001.jpg")
    return root


def test_read_task_a_columns_labels_and_identity(facecom: Path) -> None:
    table = data.read_task_a(facecom, "train")
    assert list(table.columns) == ["path", "split", "gender", "label", "identity"]
    rows = {Path(p).name: r for p, r in zip(table["path"], table.itertuples())}
    assert len(table) == 5
    assert (rows["alice_0002.jpg"].gender, rows["alice_0002.jpg"].label) == ("female", 1)
    assert (rows["bob_0001.jpg"].gender, rows["bob_0001.jpg"].label) == ("male", 0)
    assert rows["alice_0002.jpg"].identity == "alice"
    assert rows["001_frontal.jpg"].identity == "001_frontal"
    assert rows["zoe_0001.jpg"].identity == "zoe_0001"  # no Task B match: file stem
    assert all(Path(p).is_absolute() and isinstance(p, str) for p in table["path"])
    assert set(table["split"]) == {"train"}


def test_read_task_b_distortions_and_sources(facecom: Path) -> None:
    table = data.read_task_b(facecom, "train")
    assert list(table.columns) == ["path", "split", "identity", "distortion", "source"]
    assert len(table) == 4 + 7 + 2 + 7 + 7
    clean = table[table["distortion"] == "clean"]
    assert (clean["source"] == clean["path"]).all() and len(clean) == 4
    bob = table[(table["identity"] == "bob") & (table["distortion"] != "clean")]
    assert sorted(bob["distortion"]) == sorted(DISTORTIONS)
    by_name = dict(zip(table["path"].map(lambda p: Path(p).name), table["source"]))
    root_b = facecom / "Task_B" / "train"
    assert by_name["001_frontal_rainy.jpg"] == str(root_b / "001_frontal" / "001_frontal.jpg")
    assert by_name["alice_0002_foggy.jpg"] == str(root_b / "alice" / "alice_0002.jpg")
    assert by_name["alice_0001_foggy.jpg"] == str(root_b / "alice" / "alice_0001.jpg")


def test_join_gender_inherits_by_identity(facecom: Path) -> None:
    build = Builder(facecom)
    build.seed = 100
    build.identity("train", "nobody", ("nobody_0001",), None, ("noisy",))
    joined = data.join_gender(data.read_task_b(facecom, "train"),
                              data.read_task_a(facecom, "train"))
    genders = joined.groupby("identity")["gender"].agg(lambda s: set(s))
    assert genders["alice"] == {"female"}
    assert genders["bob"] == {"male"} and genders["001_frontal"] == {"male"}
    assert genders["nobody"] == {None}
    assert len(joined) == len(data.read_task_b(facecom, "train"))


def test_layout_errors_name_path_layout_and_fix(tmp_path: Path, facecom: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DatasetLayoutError) as info:
        data.read_task_b(missing, "train")
    message = str(info.value)
    assert str(missing) in message and "Task_B/<split>/<identity>" in message
    assert "--data-dir" in message
    assert isinstance(info.value, ValueError)
    (tmp_path / "photos").mkdir()
    with pytest.raises(data.DatasetLayoutError, match="no Task_A/ or Task_B/"):
        data.validate_dataset(tmp_path / "photos")
    with pytest.raises(data.DatasetLayoutError,
                       match=r"split folder missing \(present: \['train'\]"):
        data.read_task_a(facecom, "val")
    (facecom / "Task_A" / "test").mkdir()
    with pytest.raises(data.DatasetLayoutError, match="neither male/ nor female/"):
        data.read_task_a(facecom, "test")


def test_validation_clean_dataset_is_ok(facecom: Path) -> None:
    report = data.validate_dataset(facecom, progress=False)
    assert report.ok and report.problems.empty and report.notes.empty and not report.excluded
    counts = {(t, s, i): v for t, s, i, v in report.counts.itertuples(index=False)}
    assert counts[("Task_A", "train", "male")] == 2
    assert counts[("Task_A", "train", "female")] == 3
    assert counts[("Task_B", "train", "identities")] == 3
    assert counts[("Task_B", "train", "clean")] == 4
    assert counts[("Task_B", "train", "distorted")] == 23
    assert counts[("Task_B", "train", "distorted:foggy")] == 4
    assert counts[("Task_B", "train", "distorted:rainy")] == 3
    assert counts[("Task_B", "train", "clean_per_identity_max")] == 2
    assert any("Task_B/val is absent" in w for w in report.warnings)
    assert any("Task_A/train differs from the official" in w and "male 2 (official 1532)" in w
               for w in report.warnings)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_validation_reports_each_broken_file(facecom: Path) -> None:
    build = Builder(facecom)
    build.seed = 200
    b_train = facecom / "Task_B" / "train"
    good = jpeg_bytes(999, size=64)
    expected = {
        build.write("Task_B/train/bob/bob_0002.jpg", b"\xff\xd8" + bytes(range(256)) * 2):
            "not an image (format not recognised)",
        build.write("Task_A/train/male/empty.jpg", b""): "zero-byte file",
        build.write("Task_B/train/bob/bob_0003.jpg", good[: len(good) // 2]): "truncated",
        build.write("Task_B/train/bob/bob_0004.jpg", good[: len(good) // 2] + bytes(len(good))):
            "truncated (JPEG end marker missing)",
        build.write("Task_B/train/bob/notes.txt", b"hello"):
            "not an image file (extension .txt is not one Pillow reads, see "
            "data.IMAGE_EXTENSIONS)",
        str(b_train / "ghost"): "empty identity folder (no images)",
        build.write("Task_B/train/bob/distortion/bob_0009_foggy.jpg"):
            "distorted image without a clean source (no clean image with the stem before the "
            "suffix in its identity folder)",
        str(facecom / "Task_B" / "val" / "bob"):
            "identity also in another split (identity leakage)",
    }
    (b_train / "ghost" / "distortion").mkdir(parents=True)
    build.write("Task_B/val/bob/bob_0005.jpg")
    leaked = build.write("Task_B/val/erin/erin_0001.jpg",
                         (b_train / "alice" / "alice_0001.jpg").read_bytes())
    rgb = np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG")
    converted = {
        build.write("Task_A/train/male/cmyk_0001.jpg", cmyk.getvalue()): "converted from CMYK",
        build.write("Task_B/train/alice/alice_0003.png",
                    png_bytes(Image.fromarray(rgb).convert("RGBA"))): "converted from RGBA",
        build.write("Task_B/train/alice/alice_0004.png",
                    png_bytes(Image.fromarray(rgb[..., 0].astype(np.uint16) * 200))):
            "converted from I;16",
    }

    report = data.validate_dataset(facecom, progress=False)

    problems = dict(zip(report.problems["path"], report.problems["reason"]))
    same = problems.pop(leaked)
    train_copies = {str(b_train / "alice" / "alice_0001.jpg"),
                    str(facecom / "Task_A/train/female/alice_0001.jpg")}
    assert any(same == f"same bytes as {p} (train split)" for p in train_copies), same
    assert problems == expected
    assert dict(zip(report.notes["path"], report.notes["note"])) == converted
    decode_failures = {p for p, r in expected.items()
                       if r.startswith(("not an image", "zero-byte", "truncated"))}
    assert report.excluded == decode_failures
    assert not report.ok
    table = data.read_task_b(facecom, "train")
    kept = report.filter(table, verbose=False)
    assert len(table) - len(kept) == 3  # bob_0002, bob_0003, bob_0004 (.txt is not read)
    markdown = report.to_markdown()
    assert "### Problems" in markdown and "zero-byte file" in markdown
    assert "converted from CMYK" in markdown


def test_validation_follows_links_and_reports_every_bad_input(facecom: Path,
                                                              tmp_path: Path) -> None:
    """Each bad input gets one row and nothing crashes: a linked identity folder is walked (its
    zero-byte file caught), broken links and loops are reported, a decompression bomb and a
    non-UTF-8 name are excluded, hidden files are listed as skipped; a PGM is an image."""
    build = Builder(facecom)
    build.seed = 300
    b_train = facecom / "Task_B" / "train"
    elsewhere = tmp_path / "elsewhere" / "carol"
    elsewhere.mkdir(parents=True)
    (elsewhere / "carol_0001.jpg").write_bytes(jpeg_bytes(301))
    (elsewhere / "carol_0002.jpg").write_bytes(b"")
    (b_train / "carol").symlink_to(elsewhere, target_is_directory=True)
    (b_train / "bob" / "bob_0007.jpg").symlink_to(tmp_path / "missing.jpg")
    (b_train / "bob" / "distortion" / "loop").symlink_to(b_train / "bob")
    bomb = build.write("Task_B/train/bob/bob_0008.png", bomb_png())
    odd_name = os.fsdecode(str(b_train / "bob").encode() + b"/b\xe9b_0006.jpg")
    Path(odd_name).write_bytes(jpeg_bytes(302))
    hidden = [build.write("Task_B/train/bob/.DS_Store", b"\0\1"),
              build.write("Task_A/train/male/.ipynb_checkpoints/x.jpg")]
    grey = io.BytesIO()
    Image.new("L", (20, 24), 90).save(grey, "PPM")
    pgm = build.write("Task_B/train/dave/dave_0001.pgm", grey.getvalue())
    files_before = {p: p.read_bytes() for p in facecom.rglob("*") if p.is_file()}

    report = data.validate_dataset(facecom, progress=False)

    problems = dict(zip(report.problems["path"], report.problems["reason"]))
    zero_byte = str(b_train / "carol" / "carol_0002.jpg")
    assert problems.pop(zero_byte) == "zero-byte file"
    assert problems.pop(str(b_train / "bob" / "bob_0007.jpg")).startswith(
        f"broken symbolic link to {tmp_path / 'missing.jpg'}")
    assert problems.pop(str(b_train / "bob" / "distortion" / "loop")).startswith(
        "symbolic link loop")
    assert "decompression-bomb limit" in problems.pop(bomb)
    printed = str(b_train / "bob") + "/b\\xe9b_0006.jpg"
    assert problems.pop(printed).startswith("file name is not valid UTF-8")
    assert problems == {}
    assert report.excluded == {zero_byte, bomb, odd_name}
    notes = dict(zip(report.notes["path"], report.notes["note"]))
    assert notes == {str(b_train / "carol"): f"symbolic link to {elsewhere} (followed)",
                     pgm: "converted from L"}
    skipped = dict(zip(report.skipped["path"], report.skipped["reason"]))
    assert skipped == {hidden[0]: "hidden file (name starts with '.'), skipped",
                       str(Path(hidden[1]).parent):
                           "hidden folder (name starts with '.'), skipped"}
    n_visible = len([p for p in files_before if not any(part.startswith(".") for part in
                                                         p.relative_to(facecom).parts)])
    assert report.n_files == n_visible + 2  # rglob does not enter the linked carol/ (2 files)
    table = report.filter(data.read_task_b(facecom, "train"), verbose=False)
    assert {"carol", "dave"} <= set(table["identity"])
    assert zero_byte not in set(table["path"]) and pgm in set(table["path"])
    markdown = report.to_markdown()
    markdown.encode("utf-8")  # printable: no surrogate escapes left
    assert "### Skipped" in markdown and "b\\xe9b_0006.jpg" in markdown
    assert {p: p.read_bytes() for p in facecom.rglob("*") if p.is_file()} == files_before


def _smaller_jpeg(path: Path) -> bytes:
    """The photo saved again at 3/4 size and JPEG quality 70: other bytes, same picture."""
    photo = Image.open(path)
    copy = io.BytesIO()
    photo.resize((photo.width * 3 // 4, photo.height * 3 // 4)).save(copy, "JPEG", quality=70)
    return copy.getvalue()


def test_validation_reports_a_reencoded_copy_in_another_split(facecom: Path,
                                                               sample_root: Path) -> None:
    """A train photo saved again smaller and at another JPEG quality under a val identity:
    other bytes, same picture, reported against the train image it copies."""
    build = Builder(facecom)
    face = sorted((sample_root / "Task_B" / "train").glob("*/*.jpg"))[0]
    source = build.write("Task_B/train/bob/bob_0002.jpg", face.read_bytes())
    leaked = build.write("Task_B/val/erin/erin_0001.jpg", _smaller_jpeg(face))

    report = data.validate_dataset(facecom, progress=False)

    problems = dict(zip(report.problems["path"], report.problems["reason"]))
    assert problems.pop(leaked).startswith(f"near duplicate of {source} (")
    assert problems == {}  # no other image of the copy is anyone's near duplicate
    assert leaked not in report.excluded


def test_validation_reports_a_photo_repeated_under_another_identity(facecom: Path,
                                                                    sample_root: Path) -> None:
    """Within one split too: a byte copy and a re-encoded copy of bob's photo filed as two
    other people would land on both sides of any identity split made later."""
    build = Builder(facecom)
    face = sorted((sample_root / "Task_B" / "train").glob("*/*.jpg"))[0]
    source = build.write("Task_B/train/bob/bob_0002.jpg", face.read_bytes())
    same = build.write("Task_B/train/yan/yan_0001.jpg", face.read_bytes())
    reencoded = build.write("Task_B/train/zed/zed_0001.jpg", _smaller_jpeg(face))

    report = data.validate_dataset(facecom, progress=False)

    problems = dict(zip(report.problems["path"], report.problems["reason"]))
    tail = ", another identity (bob) of the same split: an identity split would put the photo"
    assert problems.pop(same) == f"same bytes as {source}{tail} on both sides"
    reason = problems.pop(reencoded)
    assert reason.startswith(f"near duplicate of {source} (") and tail in reason
    assert problems == {}  # no other photo of the copy repeats another identity's


def test_validation_recognises_older_val_release(tmp_path: Path) -> None:
    build = Builder(tmp_path)
    build.identity("train", "bob", ("bob_0001",), "male", ())
    content = jpeg_bytes(7)
    for gender, n in (("male", 303), ("female", 79)):
        for i in range(n):
            build.write(f"Task_A/val/{gender}/{gender}_{i:04d}.jpg", content)
    report = data.validate_dataset(tmp_path, progress=False)
    older = [w for w in report.warnings if w.startswith("Task_A/val differs")]
    assert len(older) == 1 and "earlier release" in older[0]
    assert "male 303 (official 317), female 79 (official 105)" in older[0]


@needs_real
def test_real_readers_match_official_counts() -> None:
    task_a = data.read_task_a(REAL_DATA, "train")
    task_b = data.read_task_b(REAL_DATA, "train")
    assert task_a["gender"].value_counts().to_dict() == {"male": 1532, "female": 394}
    assert task_b["identity"].nunique() == 877
    assert (task_b["distortion"] == "clean").sum() == 1926
    distorted = task_b[task_b["distortion"] != "clean"]
    assert len(distorted) == 13482 and set(distorted["distortion"]) == set(DISTORTIONS)
    assert (distorted["source"] != "").all()
    assert set(task_a["identity"]) == set(task_b["identity"])
    joined = data.join_gender(task_b, task_a)
    assert joined["gender"].notna().all()
    assert joined["identity"].nunique() == 877


@needs_real
def test_real_train_split_validates_clean() -> None:
    # Its speed is not a test's business (a loaded CI machine is not a benchmark).
    report = data.validate_dataset(REAL_DATA, progress=False)
    assert report.problems.empty, report.problems.head().to_string()
    assert not report.excluded
    assert not [w for w in report.warnings if "train differs" in w]


def test_task_a_identity_falls_back_to_stem_without_task_b(facecom: Path) -> None:
    shutil.rmtree(facecom / "Task_B")
    table = data.read_task_a(facecom, "train")
    assert sorted(table["identity"]) == ["001_frontal", "alice_0001", "alice_0002", "bob_0001",
                                         "zoe_0001"]
    report = data.validate_dataset(facecom, progress=False)
    assert report.ok and any("Task_B/train is absent" in w for w in report.warnings)
