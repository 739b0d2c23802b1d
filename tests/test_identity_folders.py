"""Identity-folder data sets: the reader's table, both split modes, single-image identities,
generated distorted views that never touch the input folder, and notebook 02 end to end on a
VGGFace2-style copy of the embedded sample followed by `predict.compare` on its checkpoint."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from common import (cache, data, discovery, evaluation, experiment, identity_folders, predict,
                    task_b)
from common import splits as splits_module
from common.image_decode import ImageReadError
from common.views import read_image_bytes
from common.distortions import DISTORTIONS
from common.run_all import run_notebooks
from conftest import bomb_png


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def faces_root(tmp_path_factory, sample_root) -> Path:
    """The sample's Task B clean images (train + val) re-laid out as <root>/<identity>/*.jpg."""
    root = tmp_path_factory.mktemp("faces") / "faces"
    for split in ("train", "val"):
        for identity in sorted((sample_root / "Task_B" / split).iterdir()):
            (root / identity.name).mkdir(parents=True)
            for image in identity.glob("*.jpg"):
                shutil.copy2(image, root / identity.name / image.name)
    return root


@pytest.fixture(scope="module")
def counts(faces_root) -> pd.Series:
    """Clean images per identity, counted from the folder itself."""
    return pd.Series({d.name: len(list(d.glob("*.jpg"))) for d in faces_root.iterdir()})


@pytest.fixture(scope="module")
def views_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("views")


@pytest.fixture(scope="module")
def by_identity(faces_root, views_dir) -> tuple[pd.DataFrame, dict, dict]:
    """The identity split, with listings of the input folder before and after reading."""
    before = _listing(faces_root)
    table = identity_folders.read_identity_folders(faces_root, cache_dir=views_dir)
    return table, before, _listing(faces_root)


def test_table_has_read_task_b_shape_and_views(by_identity, counts, views_dir, sample_root):
    table, before, after = by_identity
    facecom = data.read_task_b(sample_root, "val")
    assert list(table.columns) == list(facecom.columns)
    assert after == before  # nothing written into, or touched in, the user's folder
    clean = table[table["distortion"] == "clean"]
    assert len(clean) == counts.sum() and (clean["source"] == clean["path"]).all()
    views = table[table["distortion"] != "clean"]
    assert len(views) == 7 * len(clean)
    per_source = views.groupby("source")["distortion"].agg(sorted)
    assert set(per_source.index) == set(clean["path"])
    assert all(names == sorted(DISTORTIONS) for names in per_source)
    assert all(views_dir in Path(p).parents for p in views["path"])
    assert not list(views_dir.rglob("*.jpg"))  # listing renders nothing: views come when read
    # A view keeps its source's identity and split.
    merged = views.merge(clean, left_on="source", right_on="path", suffixes=("", "_clean"))
    assert (merged["identity"] == merged["identity_clean"]).all()
    assert (merged["split"] == merged["split_clean"]).all()


def test_identity_split_is_disjoint_and_keeps_single_images_for_training(by_identity, counts):
    table, _, _ = by_identity
    train, holdout = table[table["split"] == "train"], table[table["split"] == "holdout"]
    assert set(table["split"]) == {"train", "holdout"}
    assert not set(train["identity"]) & set(holdout["identity"])
    multi = counts[counts >= 2]
    # round(15 % of the identities that have two or more photos)
    assert holdout["identity"].nunique() == int(np.floor(len(multi) * 0.15 + 0.5))
    assert set(holdout["identity"]) <= set(multi.index)
    summary = identity_folders.summarize(table[table["distortion"] == "clean"])
    assert summary.loc["train", "single_image_identities"] == (counts == 1).sum() > 0
    assert summary.loc["holdout", "single_image_identities"] == 0
    assert summary["clean"].sum() == counts.sum()
    # The evaluation protocol runs on it: 7 queries per held-out clean image, one per distortion.
    embeddings = np.random.default_rng(0).normal(size=(len(holdout), 8))
    result = evaluation.retrieval_table(holdout.reset_index(drop=True), embeddings)
    assert len(result) == 7 * summary.loc["holdout", "clean"]
    assert set(result["distortion"]) == set(DISTORTIONS)


def test_image_split_puts_every_multi_image_identity_on_both_sides(faces_root, views_dir,
                                                                   counts):
    table = identity_folders.read_identity_folders(faces_root, "image", cache_dir=views_dir)
    train, val = table[table["split"] == "train"], table[table["split"] == "val"]
    multi = set(counts[counts >= 2].index)
    assert set(val["identity"]) == multi and multi <= set(train["identity"])
    assert set(train["identity"]) == set(counts.index)  # single-image people: train only
    assert not set(train["source"]) & set(val["source"])  # no photo on both sides
    # Identities here have 2 or 3 photos: max(1, round(0.15 n)) = 1 goes to val.
    assert (val[val["distortion"] == "clean"].groupby("identity").size() == 1).all()
    # Same seed, same split; the views are reused, not rewritten.
    again = identity_folders.read_identity_folders(faces_root, "image", cache_dir=views_dir)
    pd.testing.assert_frame_equal(again, table)


def test_closed_set_splits_enrol_train_photos(faces_root, views_dir, tmp_path):
    cfg = experiment.ExperimentConfig.resolve(
        task_b.ArcFaceSettings, data_dir=str(faces_root),
        data_format="identity_folders", split_by="image", output_dir=str(tmp_path / "run"),
        weights_dir=str(tmp_path / "weights"), quick=True)
    splits, photo_views = identity_folders.read_splits(cfg)
    train_photos = set(splits.train["source"])
    for frame in (splits.dev, splits.eval):
        queries = frame[frame["distortion"] != "clean"]
        assert set(queries["identity"]) <= set(splits.train["identity"])
        assert not set(queries["source"]) & train_photos  # queries are new photos
        # Every query keeps a gallery photo of its identity once its own photo is removed.
        hard = evaluation.retrieval_table(frame, np.eye(len(frame)), exclude_own_source=True)
        assert len(hard) == len(queries)


def test_views_are_seeded(faces_root, by_identity, tmp_path):
    table, _, _ = by_identity
    first = table[table["distortion"] == "foggy"]["path"].iloc[0]
    same = identity_folders.read_identity_folders(faces_root, cache_dir=tmp_path / "a")
    other = identity_folders.read_identity_folders(faces_root, seed=1, cache_dir=tmp_path / "b")
    row = table.index[table["path"] == first][0]
    assert read_image_bytes(same.loc[row, "path"]) == read_image_bytes(first)
    foggy = other[(other["distortion"] == "foggy") & (other["source"] == table.loc[row, "source"])]
    assert read_image_bytes(foggy["path"].iloc[0]) != read_image_bytes(first)


def test_pre_split_root_keeps_its_splits(sample_root, tmp_path):
    """The sample's Task_B is train/ + val/ identity folders; distortion/ sub-folders are not
    read (views are generated instead)."""
    root = discovery.resolve_data_dir("", layout="identity_folders")
    assert root == sample_root / "Task_B"
    table = identity_folders.read_identity_folders(root, cache_dir=tmp_path)
    assert set(table["split"]) == {"train", "val"}
    for split in ("train", "val"):
        n_clean = len(list((root / split).glob("*/*.jpg")))
        assert (table[table["split"] == split]["distortion"] == "clean").sum() == n_clean
    assert not table["path"].str.contains("/distortion/").any()


def test_unreadable_images_stay_listed_and_are_named_when_read(tmp_path, sample_root):
    """Listing reads no image, so a broken photo is listed; reading it, or rendering one of its
    views, raises an ImageReadError that names the photo and says why."""
    root = tmp_path / "faces"
    for identity in ("ann", "bob"):
        (root / identity).mkdir(parents=True)
        for n, image in enumerate(sorted((sample_root / "Task_B" / "val").glob("*/*.jpg"))[:2]):
            shutil.copy2(image, root / identity / f"{n}.jpg")
    (root / "bob" / "broken.jpg").write_bytes(b"")
    (root / "bob" / "bomb.png").write_bytes(bomb_png())
    (root / "ann" / ".DS_Store").write_bytes(b"\0")
    odd = os.fsdecode(os.fsencode(root / "ann") + b"/caf\xe9.jpg")
    shutil.copy2(root / "ann" / "0.jpg", odd)
    with pytest.warns(UserWarning, match="1 hidden files or folders skipped"):
        table = identity_folders.read_identity_folders(root, "image", cache_dir=tmp_path / "v")
    assert table.attrs["skipped"] == [str(root / "ann" / ".DS_Store")]
    assert odd in set(table["path"])  # a name that is not UTF-8 is read like any other
    assert len(table) == 7 * 8  # 7 photos, each clean + 7 views
    for name, reason in (("broken.jpg", "zero-byte file"), ("bomb.png", "decompression-bomb")):
        photo = str(root / "bob" / name)
        for path in table.loc[table["source"] == photo, "path"]:
            with pytest.raises(ImageReadError, match=reason) as info:
                cache.load_image(path)
            assert info.value.path == photo and "Replace or delete the file" in str(info.value)
    readable = table[~table["source"].str.contains("broken|bomb")]
    assert all(cache.load_image(path).ndim == 3 for path in readable["path"])


def test_layout_errors_name_the_fix(faces_root, tmp_path):
    with pytest.raises(ValueError, match="inside the data folder"):
        identity_folders.read_identity_folders(faces_root, cache_dir=faces_root / "views")
    with pytest.raises(ValueError, match="split_by"):
        identity_folders.read_identity_folders(faces_root, "person")
    with pytest.raises(discovery.DataNotFoundError, match="FACECOM layout"):
        discovery.resolve_data_dir(faces_root)  # the default layout is still FACECOM
    assert discovery.resolve_data_dir(faces_root, layout="identity_folders") == faces_root
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"")
    with pytest.raises(discovery.DataNotFoundError, match="identity folders"):
        discovery.resolve_data_dir(tmp_path / "flat", layout="identity_folders")
    mixed = tmp_path / "mixed"
    (mixed / "train" / "ann").mkdir(parents=True)
    (mixed / "bob").mkdir()
    with pytest.raises(data.DatasetLayoutError, match="mixes split folders"):
        identity_folders.read_identity_folders(mixed)


def test_any_format_pillow_reads_is_accepted(tmp_path, sample_root):
    """An AT&T / ORL-style copy (identity folders of .pgm, one .ppm, one .tif) is read like
    JPEGs; a folder with no image names the extensions it found and the accepted ones."""
    root = tmp_path / "orl"
    photos = sorted((sample_root / "Task_B" / "val").glob("*/*.jpg"))[:6]
    names = {}
    for n, photo in enumerate(photos):
        identity, ext = f"s{n // 2 + 1}", (".pgm", ".pgm", ".ppm", ".pgm", ".tif", ".pgm")[n]
        (root / identity).mkdir(parents=True, exist_ok=True)
        image = Image.open(photo)
        (image.convert("L") if ext == ".pgm" else image).save(root / identity / f"{n}{ext}")
        names[str(root / identity / f"{n}{ext}")] = identity
    assert discovery.resolve_data_dir(root, layout="identity_folders") == root
    table = identity_folders.read_identity_folders(root, "image", cache_dir=tmp_path / "v")
    clean = table[table["distortion"] == "clean"]
    assert dict(zip(clean["path"], clean["identity"])) == names
    assert len(table) == 6 * 8
    assert all(cache.load_image(path).shape[2] == 3 for path in table["path"])  # views render

    notes = tmp_path / "notes"
    (notes / "ann").mkdir(parents=True)
    for name in ("a.xyz", "b.xyz", "readme"):
        (notes / "ann" / name).write_text("not an image")
    with pytest.raises(discovery.DataNotFoundError) as info:
        discovery.resolve_data_dir(notes, layout="identity_folders")
    message = str(info.value)
    assert "Found: .xyz x2, (no extension) x1" in message
    assert all(ext in message for ext in (".jpg", ".pgm", ".ppm", ".tif", ".webp"))


@pytest.mark.notebooks
def test_notebook_02_trains_on_identity_folders_and_compare_separates_people(faces_root,
                                                                            tmp_path, counts):
    run_root = tmp_path / "run"
    run_root.mkdir()
    # The rendered views are new files to every per-image cache. The face descriptor as the
    # identity channel describes only dev and the holdout; fine-tuning SFace would crop and
    # run every train view too (tests/test_identity_channel.py and notebook 02's test do).
    parameters = {"data_dir": str(faces_root), "data_format": "identity_folders", "quick": True,
                  "epochs": 1, "seed": 0, "weights_dir": str(tmp_path / "weights"),
                  "identity": "descriptor", "descriptor_weight": 0}
    run_notebooks(parameters, run_root, ("02_task_b_arcface",), progress=False)
    metrics = json.loads((run_root / "02_task_b_arcface" / "metrics.json").read_text())
    card = json.loads(Path(metrics["checkpoint"]).with_suffix(".json").read_text())
    held_out = card["holdout_identities"]
    assert metrics["evaluated_split"] == "holdout" and len(held_out) >= 10
    # Chance top-1 is 1 / len(held_out); one quick epoch must do at least 3x better.
    assert metrics["top1"] >= 3 / len(held_out)
    assert len(metrics["top1_by_distortion"]) == 7
    # Different photos of one held-out person vs photos of two held-out people.
    photos = {identity: sorted((faces_root / identity).glob("*.jpg")) for identity in held_out}
    same = [predict.compare(a, b, metrics["checkpoint"])["similarity"]
            for images in photos.values() for a, b in zip(images, images[1:])]
    different = [predict.compare(photos[x][0], photos[y][0], metrics["checkpoint"])["similarity"]
                 for x, y in zip(held_out, held_out[1:] + held_out[:1])]
    assert np.mean(same) - np.mean(different) >= 0.1


def test_training_reads_every_view_of_the_train_photos_without_their_rows(
        faces_root, tmp_path, monkeypatch):
    """Train keeps one row per photo; training reads the photo and its seven views by index, the
    same images (path, identity, distortion, photo) as the train rows of the full table; the
    content checks see photos only; dev and the evaluated split hold the views as rows."""
    checked: list[str] = []
    start_checks = splits_module._start_checks

    def recording(pairs, *args):
        checked.extend(path for pair in pairs for path in pair.train + pair.evaluated)
        return start_checks(pairs, *args)

    monkeypatch.setattr(splits_module, "_start_checks", recording)
    settings = dict(data_dir=str(faces_root), data_format="identity_folders", image_size=32,
                    output_dir=str(tmp_path / "run"), work_root=str(tmp_path / "work"),
                    quick=True, seed=0)
    cfg = experiment.ExperimentConfig.resolve(task_b.ArcFaceSettings, image_cache="stream",
                                              **settings)
    task_data = task_b.prepare_data(cfg)
    train = task_data.splits.train
    assert (train["distortion"] == "clean").all() and train["path"].is_unique
    assert checked and all(Path(path).is_relative_to(faces_root) for path in checked)
    for frame in (task_data.splits.dev, task_data.splits.eval):
        assert (frame["distortion"] != "clean").sum() == 7 * (frame["distortion"] == "clean").sum()

    table = identity_folders.read_identity_folders(faces_root, cache_dir=tmp_path / "views")
    expected = table[table["identity"].isin(set(train["identity"]))]
    rows, images = task_data.train, task_data.images["train"]
    assert len(rows) == len(images) == len(expected) == 8 * len(train)
    photos = sorted(set(train["path"]))
    views_root = str(Path(images.paths[1]).parents[1])  # <views folder>/<identity>/<view>
    got = {(path.replace(views_root, "<views>"), identity, distortion, photos[photo])
           for path, identity, distortion, photo in zip(
               images.paths, rows.identity, rows.distortion, rows.photo)}
    views_table = str(Path(expected[expected["distortion"] != "clean"]["path"].iloc[0]
                           ).parents[1])
    want = {(path.replace(views_table, "<views>"), identity, distortion, source)
            for path, _, identity, distortion, source in expected.itertuples(index=False,
                                                                            name=None)}
    assert got == want
    assert rows.labels.tolist() == [task_data.identity_index[name] for name in rows.identity]

    # Streamed and decoded-cache training read the same pixels for every train image.
    cached = task_b.prepare_data(experiment.ExperimentConfig.resolve(
        task_b.ArcFaceSettings, image_cache="memmap", **settings)).images["train"]
    for index in (0, 1, 7, len(images) - 1):
        np.testing.assert_array_equal(images[index], cached[index])
