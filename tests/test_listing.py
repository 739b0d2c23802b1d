"""common/listing.py: which files every reader reads, and what it reports instead of reading."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from common import listing


def test_image_extensions_are_what_pillow_opens():
    Image.init()
    opened = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    identified_only = {ext for ext, fmt in Image.registered_extensions().items()
                       if fmt in ("BUFR", "GRIB", "HDF5", "MPEG", "WMF")}
    assert set(listing.IMAGE_EXTENSIONS) == opened - identified_only
    assert ".h5" not in listing.IMAGE_EXTENSIONS and ".mpg" not in listing.IMAGE_EXTENSIONS
    assert {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".tif", ".tiff", ".webp", ".bmp"} <= opened
    assert listing.is_image_name("FACE.PGM") and not listing.is_image_name("notes.txt")
    assert not listing.is_image_name(".hidden.jpg")


def test_walk_follows_links_and_reports_the_rest(tmp_path: Path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (root / "a" / "1.jpg").write_bytes(b"x")
    (outside / "2.jpg").write_bytes(b"y")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "a" / "again").symlink_to(root, target_is_directory=True)  # a loop
    (root / "a" / "dead.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (root / "a" / ".DS_Store").write_bytes(b"")

    walk = listing.walk_files(root)

    assert walk.files == [str(root / "a" / "1.jpg"), str(root / "linked" / "2.jpg")]
    assert walk.links == [(str(root / "linked"), str(outside))]
    assert walk.skipped == [(str(root / ".git"), "hidden folder (name starts with '.'), skipped"),
                            (str(root / "a" / ".DS_Store"),
                             "hidden file (name starts with '.'), skipped")]
    broken = dict(walk.broken)
    assert broken[str(root / "a" / "again")] == f"symbolic link loop to {root} (not followed)"
    assert broken[str(root / "a" / "dead.jpg")].startswith(
        f"broken symbolic link to {tmp_path / 'nowhere.jpg'}")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        listing.walk_files(root / "a" / "1.jpg")


def test_names_that_are_not_utf8_are_printable():
    name = os.fsdecode(b"/data/caf\xe9.jpg")
    assert not listing.is_valid_name(name) and listing.is_valid_name("/data/café.jpg")
    assert listing.printable(name) == "/data/caf\\xe9.jpg"
    assert listing.printable("/data/café.jpg") == "/data/café.jpg"


def test_count_extensions_stops_at_the_depth_asked(tmp_path: Path):
    for rel in ("a/x.TXT", "a/y.txt", "a/z", "a/b/c/d/deep.gif", ".hidden/w.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert listing.count_extensions(tmp_path) == {".txt": 2, "": 1}
    assert listing.count_extensions(tmp_path, max_depth=4)[".gif"] == 1
