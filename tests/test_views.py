"""Distorted views rendered on first read: by DataLoader workers exactly as by the threads that
fill the decoded-image cache, rendered once, rendered anew when their photo changes, and an
unreadable photo named by the error."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common import cache, experiment, identity_folders, transforms, views
from common.distortions import DISTORTIONS
from common.image_decode import ImageReadError


@pytest.fixture()
def faces_root(tmp_path, sample_root) -> Path:
    """Six identities of up to two photos each, copied from the sample into identity folders."""
    root = tmp_path / "faces"
    identities = sorted((sample_root / "Task_B" / "train").iterdir())[:6]
    for identity in identities:
        (root / identity.name).mkdir(parents=True)
        for photo in sorted(identity.glob("*.jpg"))[:2]:
            shutil.copy2(photo, root / identity.name / photo.name)
    return root


def _view_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix().split("/", 1)[1]: p.read_bytes()
            for p in sorted(folder.rglob("*.jpg"))}


def test_loader_workers_render_the_views_the_cache_renders(faces_root, tmp_path):
    """Streamed (views rendered by two loader workers as they read them) and cached (views
    rendered by `views.ensure` threads, then decoded into the memmap): the same seeded first
    batch, augmentations included, and byte-identical view files."""
    batches, folders = [], {}
    for image_cache in ("stream", "memmap"):
        folder = tmp_path / f"views_{image_cache}"
        table = identity_folders.read_identity_folders(faces_root, cache_dir=folder)
        assert not list(folder.rglob("*.jpg"))
        images = cache.load_image_array(table["path"].tolist(), 32, cache_dir=tmp_path / "c",
                                        progress=False, fit="stretch", image_cache=image_cache)
        dataset = cache.ImageArrayDataset(images, np.arange(len(table)) % 5,
                                          transforms.create_train_transform(
                                              32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
        loader = experiment.make_loader(dataset, len(table), shuffle=True, seed=3, epoch=1,
                                        num_workers=2)
        batches.append(next(iter(loader)))
        folders[image_cache] = folder
    torch.testing.assert_close(batches[0][0], batches[1][0], rtol=0, atol=0)
    assert torch.equal(batches[0][1], batches[1][1])
    streamed, cached = (_view_files(folders[name]) for name in ("stream", "memmap"))
    assert len(cached) == (table["distortion"] != "clean").sum() and streamed == cached


def test_a_view_is_rendered_once_and_again_when_its_photo_changes(faces_root, tmp_path):
    table = identity_folders.read_identity_folders(faces_root, cache_dir=tmp_path / "v")
    view = table[table["distortion"] == "sunny"].iloc[0]
    first = views.read_image_bytes(view["path"])
    inode = os.stat(view["path"]).st_ino
    assert views.read_image_bytes(view["path"]) == first
    assert os.stat(view["path"]).st_ino == inode  # read again, not rendered again

    # Another photo under the same name, with an older time (as `cp -p` of an old file gives).
    other = table[(table["distortion"] == "clean") & (table["identity"] != view["identity"])]
    shutil.copyfile(other["path"].iloc[0], view["source"])
    os.utime(view["source"], ns=(10**18, 10**18))
    renewed = views.read_image_bytes(view["path"])
    assert renewed != first
    fresh = identity_folders.read_identity_folders(faces_root, cache_dir=tmp_path / "fresh")
    same_view = fresh.loc[fresh["source"].eq(view["source"])
                          & fresh["distortion"].eq("sunny"), "path"].iloc[0]
    assert views.read_image_bytes(same_view) == renewed  # as if it had never been rendered


def test_unreadable_or_missing_photo_is_named(faces_root, tmp_path):
    table = identity_folders.read_identity_folders(faces_root, cache_dir=tmp_path / "v")
    photos = table.loc[table["distortion"] == "clean", "path"]
    broken, gone = photos.iloc[0], photos.iloc[1]
    Path(broken).write_bytes(Path(broken).read_bytes()[:200])
    os.unlink(gone)
    for photo, reason in ((broken, "truncated"), (gone, "cannot open the photo")):
        view = table.loc[(table["source"] == photo) & (table["distortion"] == "foggy"), "path"]
        with pytest.raises(ImageReadError, match=reason) as info:
            cache.load_resized(view.iloc[0], 32)
        assert info.value.path == photo
        assert not Path(view.iloc[0]).exists()  # nothing half-written left behind
    # Files that are not views, even inside a views folder, are read as they are.
    stamp = next((tmp_path / "v").glob(f"*/{views.STAMP}"))
    assert views.read_image_bytes(stamp) == stamp.read_bytes()
    assert views.read_image_bytes(photos.iloc[2]) == Path(photos.iloc[2]).read_bytes()


def test_view_paths_index_like_the_list_they_stand_for():
    photo_views = views.PhotoViews("/data", "/cache/v1")
    photos = ["/data/ann/1.jpg", "/data/bo/2.png"]
    paths = photo_views.paths(photos)
    listed = [path for photo in photos for path in
              [photo] + [f"/cache/v1/{photo[6:]}_{name}.jpg" for name in DISTORTIONS]]
    assert len(paths) == len(listed) == 16
    assert [paths[i] for i in range(16)] == listed and list(paths) == listed
    assert paths[-1] == listed[-1] and paths[np.int64(9)] == listed[9]
    assert paths[3:12:2] == listed[3:12:2]
    with pytest.raises(IndexError):
        paths[16]
