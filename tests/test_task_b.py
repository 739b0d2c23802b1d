"""common.task_b: the Siamese pair recipe (incl. hard negatives) and the FaceNet stage-2 path."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from common import cache, experiment, fallbacks, fusion, models, task_b
from conftest import gallery_frame, unit_rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_root):
    tmp = tmp_path_factory.mktemp("task_b")
    cfg = experiment.ExperimentConfig.resolve(
        task_b.SiameseSettings, data_dir=str(sample_root),
        output_dir=str(tmp / "run"), weights_dir=str(tmp / "weights"), quick=True, epochs=2,
        image_size=48, seed=0, dev_fraction=0.3)
    return cfg, task_b.prepare_data(cfg)


def test_siamese_pairs_with_hard_negatives_train_and_embed(setup):
    cfg, task_data = setup
    model = models.create_model("siamese", backbone_name="resnet10t", pretrained=False)
    result = task_b.train_pairs(model, task_data, cfg, "siamese_hard", epochs=2, lr=1e-3,
                                pairs_per_epoch=64, hard_negatives=True, monitor="pair_accuracy")
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["train_loss"])
    embeddings = task_b.embed_array(model, task_data.images["eval"], cfg.image_size,
                                    model.data_config["mean"], model.data_config["std"])
    assert embeddings.shape == (len(task_data.splits.eval), 128)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_backbone_for_and_embedders(setup):
    cfg, _ = setup
    assert task_b.backbone_for("facenet", "x") == "inception_resnet_v1"
    assert task_b.backbone_for("efficientfr", "x") == "efficientfr"
    assert task_b.backbone_for("embedding", "convnext_atto") == "convnext_atto"
    with pytest.raises(ValueError, match="embedding, facenet or efficientfr"):
        task_b.backbone_for("resnet", "x")
    cfg.pretrained = False
    embedder = task_b.create_embedder("efficientfr", cfg)
    assert embedder.embedding_dim == 512 and not embedder.weights_source.pretrained


def _photo_frame():
    rows = [("a.jpg", "ann", "clean", "a.jpg"), ("a_sunny.jpg", "ann", "sunny", "a.jpg"),
            ("a_noisy.jpg", "ann", "noisy", "a.jpg"), ("b.jpg", "ann", "clean", "b.jpg"),
            ("c_rainy.jpg", "cy", "rainy", "")]
    return pd.DataFrame(rows, columns=["path", "identity", "distortion", "source"])


def test_source_view_pairs_pair_each_clean_photo_with_its_own_copies():
    rows = task_b.TrainRows.of_table(_photo_frame())
    pairs = task_b.source_view_pairs(rows, pairs_per_source=4, seed=3)
    assert len(pairs) == 12  # 3 photos: a.jpg, b.jpg and the orphan c_rainy.jpg
    by_photo = {code: group for code, group in pairs.groupby("source")}
    # Codes follow the sorted photo keys: a.jpg, b.jpg, c_rainy.jpg.
    assert set(by_photo[0]["i"]) == {0} and set(by_photo[0]["j"]) <= {1, 2}
    assert set(by_photo[1]["i"]) == set(by_photo[1]["j"]) == {3}  # no copies: itself
    assert set(by_photo[2]["i"]) == set(by_photo[2]["j"]) == {4}  # unknown source: own photo
    pd.testing.assert_frame_equal(pairs, task_b.source_view_pairs(rows, 4, seed=3))


def _pairs_drawn_photo_by_photo(frame: pd.DataFrame, pairs_per_source: int, seed: int):
    """The pairs as first written: photos in sorted key order, anchor the first clean row (else
    the first row), `rng.choice` among the photo's other rows."""
    keys = frame["source"].where(frame["source"] != "", frame["path"]).to_numpy()
    rng = np.random.default_rng(seed)
    rows_i, rows_j, codes = [], [], []
    for code, key in enumerate(sorted(set(keys))):
        rows = np.flatnonzero(keys == key)
        clean = rows[(frame["distortion"].to_numpy()[rows] == "clean")]
        anchor = clean[0] if len(clean) else rows[0]
        others = rows[rows != anchor]
        second = (rng.choice(others, pairs_per_source) if len(others)
                  else [anchor] * pairs_per_source)
        rows_i += [anchor] * pairs_per_source
        rows_j += list(second)
        codes += [code] * pairs_per_source
    return rows_i, rows_j, codes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_source_view_pairs_draw_as_photo_by_photo(seed):
    """Shuffled rows, photos with 1 to 9 rows, some without a clean row or a known source:
    the vectorised draws equal drawing photo by photo from the same generator."""
    rng = np.random.default_rng(seed)
    rows = []
    for photo in range(300):
        copies = int(rng.integers(0, 9))
        if rng.random() < 0.1:  # an orphan distorted image: its own photo
            rows.append((f"orphan{photo}_foggy.jpg", "foggy", ""))
            continue
        if rng.random() < 0.9:
            rows.append((f"p{photo}.jpg", "clean", f"p{photo}.jpg"))
        rows += [(f"p{photo}_{k}.jpg", "blur", f"p{photo}.jpg") for k in range(copies)]
    frame = pd.DataFrame(rows, columns=["path", "distortion", "source"]).assign(identity="x")
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    for per_source in (1, 3):
        pairs = task_b.source_view_pairs(task_b.TrainRows.of_table(frame), per_source, seed=seed)
        expected_i, expected_j, codes = _pairs_drawn_photo_by_photo(frame, per_source, seed)
        assert pairs["i"].tolist() == expected_i and pairs["j"].tolist() == expected_j
        assert pairs["source"].tolist() == codes


def test_photo_teacher_centres_and_orders_by_photo(monkeypatch):
    raw = np.array([[3.0, 1.0], [1.0, 1.0], [2.0, 4.0]], dtype=np.float32)
    seen = []

    def fake(paths, progress=True):
        seen.append(list(paths))
        return raw, np.ones(len(paths), dtype=bool)

    monkeypatch.setattr(task_b.face_descriptor, "cached_descriptors", fake)
    teacher = task_b.photo_teacher(_photo_frame(), "dlib", progress=False)
    assert seen == [["a.jpg", "b.jpg", "c_rainy.jpg"]]
    # Mean (2, 2): centred rows (1, -1), (-1, -1), (0, 2), then unit length.
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(teacher, [[r, -r], [-r, -r], [0, 1]], atol=1e-6)
    assert task_b.photo_teacher(_photo_frame(), "") is None
    with pytest.raises(ValueError, match="'dlib'"):
        task_b.photo_teacher(_photo_frame(), "vggface")

    def unavailable(paths, progress=True):
        raise task_b.PriorUnavailableError("dlib not installed: pip install dlib-bin")

    monkeypatch.setattr(task_b.face_descriptor, "cached_descriptors", unavailable)
    with pytest.warns(UserWarning, match="without a teacher: dlib not installed"):
        assert task_b.photo_teacher(_photo_frame(), "dlib") is None


def test_a_fine_tuned_identity_channel_takes_dlibs_descriptor_where_it_helps_on_dev(
        monkeypatch):
    """The network tells photos apart but not people; dlib's descriptor knows the people where
    it found the face (clean and noisy rows) and describes the glare-white sunny rows alike. The
    share is the smallest that recognises the noisy copies on dev with their own photo removed,
    and the sunny rows keep the network alone."""
    frame = gallery_frame()
    photo = frame["source"].where(frame["source"] != "", frame["path"])
    photo_code = pd.factorize(photo)[0]
    rng = np.random.default_rng(0)
    network = unit_rows(np.eye(6)[photo_code] + 0.05 * rng.normal(size=(len(frame), 6)))
    person = unit_rows(np.eye(3)[pd.factorize(frame["identity"])[0]]
                       + 0.05 * rng.normal(size=(len(frame), 3)))
    found = (frame["distortion"] != "sunny").to_numpy()
    described = np.where(found[:, None], person, [[1.0, 0.0, 0.0]]) * 3.0  # raw: not unit

    def descriptors(paths, front_end, progress=True):
        assert front_end == task_b.IDENTITY_DESCRIPTOR and list(paths) == frame["path"].tolist()
        return described.astype(np.float32), found

    monkeypatch.setattr(task_b.face_descriptor, "optional_descriptors", descriptors)
    frames = {"dev": frame, "eval": frame}
    channel = task_b._with_descriptor(
        task_b.IdentityChannel("net", {"dev": network, "eval": network},
                               {"dev": found, "eval": found}), frames)
    assert channel.network_vectors["eval"] is network
    assert channel.descriptor_share == fusion.DESCRIPTOR_WEIGHTS[1]
    table = channel.descriptor_table.set_index("descriptor_share")["top1_hard"]
    assert table.loc[0.0] < 0.5 and table.iloc[1:].min() == table.max()
    w, vectors = channel.descriptor_share, channel.vectors["eval"]
    cosines = vectors @ vectors.T
    by_hand = (1 - w) * network @ network.T + w * person @ person.T
    both = np.outer(found, found)
    np.testing.assert_allclose(cosines[both], by_hand[both], atol=1e-5)
    one = np.outer(found, ~found)  # a sunny row against a found one: the network alone
    np.testing.assert_allclose(cosines[one], (np.sqrt(1 - w) * network @ network.T)[one],
                               atol=1e-5)
    # Without dlib the channel is the network alone, and says nothing it did not do.
    monkeypatch.setattr(task_b.face_descriptor, "optional_descriptors",
                        lambda paths, front_end, progress=True: None)
    alone = task_b._with_descriptor(
        task_b.IdentityChannel("net", {"dev": network, "eval": network},
                               {"dev": found, "eval": found}), frames)
    assert alone.descriptor_share == 0.0 and alone.vectors["eval"] is network


def test_arcface_with_source_and_teacher_terms_trains(setup):
    cfg, task_data = setup
    embedder = models.EmbeddingNet("resnet10t", 64, pretrained=False, standardize_input=True)
    net = task_b.EmbeddingClassifier(embedder, len(task_data.identity_index), 64,
                                     source_weight=1.0, teacher_weight=1.0)
    with pytest.raises(ValueError, match="teacher embeddings"):
        task_b.train_arcface(net, task_data, cfg, "paired_no_teacher")
    n_photos = task_data.splits.train["source"].nunique()
    teacher = np.random.default_rng(0).normal(size=(n_photos, 16)).astype(np.float32)
    result = task_b.train_arcface(net, task_data, cfg, "paired", teacher=teacher)
    assert len(result.history) == 2
    assert all(np.isfinite(row["train_loss"]) for row in result.history)


def test_frozen_blocks_keep_their_pretrained_weights_while_the_rest_trains(setup, tmp_path):
    """Notebook 02's `frozen_blocks`: ResNet's stem (conv1, bn1) and first stage (layer1) stay
    bit-identical through ArcFace training; every later stage and the head move. A backbone
    without pretrained weights freezes nothing, and says so."""
    cfg, task_data = setup
    cfg = dataclasses.replace(cfg, backbone="resnet10t", pretrained=False)
    with pytest.warns(fallbacks.FallbackWarning, match="frozen_blocks=2 not applied.*RANDOM INIT"):
        scratch = task_b.create_embedder("embedding", cfg, 32, frozen_blocks=2)
    assert all(p.requires_grad for p in scratch.parameters())
    weights = tmp_path / "resnet10t.pth"  # "pretrained" weights: a file, as a user passes them
    torch.save(scratch.backbone.state_dict(), weights)
    cfg = dataclasses.replace(cfg, weights=str(weights))
    embedder = task_b.create_embedder("embedding", cfg, 32, frozen_blocks=2)
    assert embedder.weights_source.pretrained
    before = {name: value.clone() for name, value in embedder.state_dict().items()}
    net = task_b.EmbeddingClassifier(embedder, len(task_data.identity_index), 32)
    task_b.train_arcface(net, task_data, cfg, "frozen_blocks")
    after = embedder.state_dict()
    weights = [name for name, _ in embedder.named_parameters()]
    held = [n for n in weights if n.split(".")[1] in ("conv1", "bn1", "layer1")]
    assert held and all(torch.equal(before[n], after[n]) for n in held)
    for part in ("backbone.layer2", "backbone.layer3", "backbone.layer4", "projection"):
        moved = [n for n in weights if n.startswith(part) and not torch.equal(before[n], after[n])]
        assert moved, f"nothing in {part} trained"


def test_siamese_encoder_starts_from_a_task_b_checkpoint(setup, tmp_path):
    from common import checkpoints
    from common.checkpoints import ModelCard

    cfg, _ = setup
    cfg = dataclasses.replace(cfg, weights_dir=tmp_path, backbone="resnet10t", pretrained=False)
    model, note = task_b.create_siamese(cfg, "auto", standardize_input=False)
    assert "RANDOM INIT" in note and not model.standardize_input  # nothing to start from yet

    trained = models.EmbeddingNet("resnet10t", 32, pretrained=False, standardize_input=True)
    trained.backbone.data_config = {**trained.backbone.data_config, "std": (0.5, 0.5, 0.5)}
    trained.standardize.spread.fill_(0.5)
    card = ModelCard(task="task_b", kind="embedding", model="embedding", backbone="resnet10t",
                     model_kwargs={"backbone_name": "resnet10t", "embedding_dim": 32,
                                   "standardize_input": True},
                     image_size=48, mean=[0.5] * 3, std=[0.5] * 3, dev_metrics={"top1": 0.5})
    checkpoints.save_model(trained, tmp_path, "task_b_embedding_resnet10t", card)
    model, note = task_b.create_siamese(cfg, "auto", standardize_input=False)
    assert "initialised from" in note and model.standardize_input
    for key, value in trained.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    assert float(model.standardize.spread) == 0.5
    assert model.data_config["std"] == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="backbone 'resnet10t'"):
        task_b.create_siamese(dataclasses.replace(cfg, backbone="efficientfr"),
                              str(tmp_path / "task_b_embedding_resnet10t.pt"))


def test_choose_copy_weight_picks_the_best_dev_top1(setup):
    cfg, task_data = setup
    embedder = models.EmbeddingNet("resnet10t", 32, pretrained=False).eval()
    table = task_b.choose_copy_weight(embedder, task_data, cfg, "auto")
    assert table["copy_weight"].tolist() == list(fusion.COPY_WEIGHTS)
    best = table.loc[table["dev_top1"].idxmax(), "copy_weight"]
    assert embedder.copy_weight == best
    # An untrained embedding is near chance; the copy detector alone matches the sample's
    # synthetic distortions far better, so some copy weight wins by a clear margin.
    assert best > 0 and table["dev_top1"].max() >= table["dev_top1"].iloc[0] + 0.1
    assert task_b.choose_copy_weight(embedder, task_data, cfg, 0.25).empty
    assert embedder.copy_weight == 0.25


def test_choose_copy_weight_for_a_switch_keeps_its_best_mean(setup):
    """With a switch's identity channel the weight is chosen by the switch fitted on dev. The
    face channel here knows every person but sees no face on a sunny copy (one direction of its
    own), so sunny copies are the copy channel's to find: the untrained embedding alone cannot,
    the copy detector can."""
    cfg, task_data = setup
    dev = task_data.splits.dev
    people = sorted(dev["identity"].unique())
    face = unit_rows([np.eye(len(people) + 1)[-1 if row.distortion == "sunny"
                                              else people.index(row.identity)]
                      for row in dev.itertuples()])
    identity = task_b.IdentityChannel("one direction per person", {"dev": face},
                                      {"dev": dev["distortion"].ne("sunny").to_numpy()})
    embedder = models.EmbeddingNet("resnet10t", 32, pretrained=False).eval()
    table = task_b.choose_copy_weight(embedder, task_data, cfg, "auto", identity=identity)
    rows = table.set_index("copy_weight")
    assert embedder.copy_weight == rows["dev_switch_mean_top1"].idxmax() > 0
    best = rows.loc[embedder.copy_weight]
    assert best["dev_switch_mean_top1"] == (best["dev_top1"] + best["dev_top1_hard"]) / 2
    assert best["dev_top1"] >= rows.loc[0.0, "dev_top1"] + 0.1


@pytest.mark.parametrize("model", ["facenet", "siamese", "embedding"])
def test_model_card_rebuilds_the_same_embedding(setup, model):
    from types import SimpleNamespace

    cfg, task_data = setup
    cfg = dataclasses.replace(cfg, backbone="resnet10t", pretrained=False)
    if model == "facenet":
        embedder = models.create_model("facenet", pretrained=False, standardize_input=True)
    elif model == "siamese":
        embedder = models.create_model("siamese", backbone_name="resnet10t", pretrained=False,
                                       standardize_input=True)
    else:
        embedder = task_b.create_embedder("embedding", cfg, 32, standardize_input=True,
                                          head="spatial")
    embedder.copy_weight = 0.3  # as choose_copy_weight sets it after training
    report = SimpleNamespace(verification={"threshold": 0.5}, dev={"top1": 1.0, "f1_macro": 1.0})
    card = task_b.model_card(cfg, embedder, model, report, task_data.splits, "test")
    splits = task_data.splits
    assert card.train_identities == sorted(set(splits.train["identity"])
                                           | set(splits.dev["identity"]))
    assert not set(card.train_identities) & set(splits.eval["identity"])
    rebuilt = models.create_model(card.kind, **{**card.model_kwargs, "pretrained": False})
    rebuilt.load_state_dict(embedder.state_dict())
    side = 160 if model == "facenet" else 64  # InceptionResnetV1 needs its own input size
    images = torch.randn(2, 3, side, side)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(images), embedder.eval()(images), atol=1e-5)


def test_streamed_images_embed_like_cached_ones(setup, tmp_path):
    """image_cache="stream": every split decodes as read, and the embeddings (mirror TTA
    included) are those of the cached arrays."""
    cfg, task_data = setup
    streamed_cfg = experiment.ExperimentConfig.resolve(
        task_b.SiameseSettings, data_dir=str(cfg.data_dir),
        output_dir=str(tmp_path / "run"), weights_dir=str(tmp_path / "weights"), quick=True,
        epochs=2, image_size=48, seed=0, dev_fraction=0.3, image_cache="stream")
    streamed = task_b.prepare_data(streamed_cfg)
    assert all(isinstance(images, cache.ImageFiles) for images in streamed.images.values())
    model = models.create_model("siamese", backbone_name="resnet10t", pretrained=False).eval()
    mean, std = model.data_config["mean"], model.data_config["std"]
    for split in ("dev", "eval"):
        np.testing.assert_array_equal(
            task_b.embed_array(model, streamed.images[split], 48, mean, std, flip_tta=True),
            task_b.embed_array(model, task_data.images[split], 48, mean, std, flip_tta=True))
