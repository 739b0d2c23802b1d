"""The whole-image network fine-tuned for identity through glare (`common.glare_identity`)."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from common import (checkpoints, evaluation, experiment, fallbacks, fusion, glare_identity,
                    identity_training, model_inputs, models, sface_net, task_a, task_b,
                    whole_image)
from common.whole_image_tuning import TuneSettings


def _people(count: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """`count` people, two photos each, every photo clean and under glare. A person is the colour
    and stripe period of the band at the top of the image (the "hair"); each photo has its own
    noise background and band height, and glare whitens a disc over the middle: only the band
    tells who it is, and the network must learn to read it."""
    rng = np.random.default_rng(seed)
    size = whole_image.SIZE
    yy, xx = np.mgrid[:size, :size]
    glare = ((yy - size * 0.6) ** 2 + (xx - size / 2) ** 2) < (size * 0.32) ** 2
    images, rows = [], []
    for person in range(count):
        colour, period = rng.integers(0, 256, size=3), rng.uniform(8, 40)
        for photo in range(2):
            image = rng.integers(0, 256, size=(size, size, 3)).astype(np.uint8) // 2
            band = xx[: int(size * rng.uniform(0.2, 0.3))]
            stripes = (np.sin(2 * np.pi * band / period) > 0)[..., None]
            image[: len(band)] = np.where(stripes, colour, 255 - colour)
            path = f"p{person}/{photo}.jpg"
            for distortion, picture in (("clean", image),
                                        (glare_identity.GLARE, np.where(glare[..., None], 250,
                                                                        image))):
                images.append(picture.astype(np.uint8))
                rows.append({"path": path if distortion == "clean" else f"{path}:{distortion}",
                             "identity": f"p{person}", "distortion": distortion,
                             "source": path})
    return np.stack(images), pd.DataFrame(rows)


def test_whole_image_network_learns_people_through_glare_and_keeps_its_best_dev_epoch():
    """Fine-tuned on 12 people, the network recognises unseen people's glare copies against
    their other photo (own photo removed; chance 1 of 8) far better than its ImageNet weights
    do, and it leaves the network of its best dev epoch."""
    train, train_frame = _people(12, 0)
    dev, dev_frame = _people(6, 1)
    test, test_frame = _people(8, 2)
    network, _ = models.create_backbone(task_a.PROBE_CONTEXT, pretrained="required")
    frozen = identity_training.dev_top1_hard(test_frame)(
        whole_image.mirror_features(network, test, "cpu"))
    history = glare_identity.fine_tune(network, train, train_frame["identity"].to_numpy(), dev,
                                       dev_frame, TuneSettings(lr=3e-4, epochs=3, batch_size=8))
    top1 = identity_training.dev_top1_hard(test_frame)(
        whole_image.mirror_features(network, test, "cpu"))
    assert top1 >= 0.75 and top1 >= frozen + 0.2
    best = max(row["dev_glare_top1_hard"] for row in history)
    assert len(history) == 3 and identity_training.dev_top1_hard(dev_frame)(
        whole_image.mirror_features(network, dev, "cpu")) == best


def test_identity_tuning_refuses_what_it_cannot_learn_from():
    images, frame = _people(2, 0)
    network, _ = models.create_backbone(task_a.PROBE_CONTEXT, pretrained="required")
    with pytest.raises(ValueError, match="at least two train identities"):
        glare_identity.fine_tune(network, images, np.zeros(len(images)), images, frame)
    clean = frame["distortion"].eq("clean").to_numpy()
    with pytest.raises(ValueError, match="no clean photos or no sunny copies"):
        glare_identity.fine_tune(network, images, frame["identity"].to_numpy(), images[clean],
                                 frame[clean])


@pytest.fixture(scope="module")
def glare_channel(tmp_path_factory, sample_root):
    """Notebook 02's identity step on the sample: SFace and the glare network, one epoch each."""
    if not (sface_net.is_available() and whole_image.is_available(glare_identity.BACKBONE)):
        pytest.skip(f"the glare channel needs SFace ({sface_net.INSTALL}) and the "
                    f"{glare_identity.BACKBONE} ImageNet weights")
    tmp = tmp_path_factory.mktemp("glare")
    cfg = experiment.ExperimentConfig.resolve(
        task_b.ArcFaceSettings, data_dir=str(sample_root), output_dir=str(tmp / "run"),
        weights_dir=str(tmp / "weights"), quick=True, epochs=1, image_size=48, seed=0)
    task_data = task_b.prepare_data(cfg)
    return cfg, task_data, task_b.identity_channel(task_data, cfg, "sface", epochs=1)


@pytest.mark.long
def test_glare_channel_reaches_predict_and_notebook_03_as_notebook_02_scored_it(glare_channel,
                                                                                 tmp_path):
    """The glare network trained in notebook 02's step is saved beside the card, and the
    card's route (`model_inputs.prepare_inputs`, `task_b.switch_channels`: what `predict` and
    notebook 04 read) and notebook 03's inherited channel give the features and the identity
    channel the notebook scored: in the gallery and the faceless queries only."""
    cfg, task_data, identity = glare_channel
    cfg = dataclasses.replace(cfg, weights_dir=tmp_path)
    evaluated = task_data.splits.eval
    gallery = evaluation.gallery_rows(evaluated)
    carries = fusion.carries_whole(identity.found["eval"], gallery)
    assert identity.glare is not None and len(identity.glare_history) == 1
    assert 0 < (~identity.found["eval"] & ~gallery).sum()  # faceless queries occur
    described = np.linalg.norm(identity.whole["eval"], axis=1)
    np.testing.assert_allclose(described[carries], 1.0, atol=1e-5)
    assert not described[~carries].any()
    identity.whole_share = 0.3  # as `copy_or_identity` sets it when dev prefers the network
    switch = fusion.CopySwitch(0.1, descriptor_share=identity.descriptor_share,
                               descriptor_front_end=task_b.IDENTITY_DESCRIPTOR, whole_share=0.3)
    name = "task_b_embedding_test"
    files = task_b.save_identity(identity, cfg, name, task_data.splits, "fingerprint")
    assert files["glare_weights"].startswith(f"{name}_glare-")
    glare_card = checkpoints.load_model_card(tmp_path / files["glare_weights"])
    assert glare_card.kind == models.WHOLE_IMAGE_KIND and glare_card.image_size == whole_image.SIZE
    assert -1 <= glare_card.similarity_threshold <= 1  # notebook 04 scores it alone
    embedder = task_b.create_embedder("embedding", dataclasses.replace(
        cfg, backbone="resnet10t", pretrained=False), 32)
    report = SimpleNamespace(verification={"threshold": 0.5}, dev={"top1": 1.0, "f1_macro": 1.0})
    card = task_b.model_card(dataclasses.replace(cfg, backbone="resnet10t"), embedder,
                             "embedding", report, task_data.splits, "fingerprint",
                             copy_switch=switch, **files)
    card = checkpoints.load_model_card(checkpoints.save_model(embedder, tmp_path, name, card))
    assert card.glare_path == tmp_path / files["glare_weights"]
    paths = evaluated["path"].tolist()
    inputs = model_inputs.prepare_inputs(card, paths, with_identity=True, gallery=gallery)
    np.testing.assert_allclose(inputs.whole, identity.whole["eval"], atol=1e-5)
    channels = task_b.switch_channels(embedder, card, inputs)
    np.testing.assert_allclose(channels["face"], fusion.fuse(
        identity.vectors["eval"], identity.whole["eval"], 0.3, carries), atol=1e-5)
    # queries alone (`predict.search`): only those without a found face read the network
    queries = model_inputs.prepare_inputs(card, paths, with_identity=True, gallery=False)
    np.testing.assert_array_equal(np.linalg.norm(queries.whole, axis=1) > 0,
                                  ~identity.found["eval"])
    # notebook 03 inherits it from the card: the same features, no second checkpoint here
    inherited = task_b.identity_channel(task_data, cfg, "auto", inherit_from=card.weights_path)
    assert inherited.glare_checkpoint == tmp_path / files["glare_weights"]
    assert not inherited.glare_history
    np.testing.assert_allclose(inherited.whole["eval"], identity.whole["eval"], atol=1e-5)
    inherited.whole_share = 0.3
    assert task_b.save_identity(inherited, cfg, "siamese", task_data.splits, "x") == files


def test_without_its_weights_or_glare_copies_the_channel_says_it_has_no_glare_network(
        sample_root, tmp_path, monkeypatch):
    """No glare network is trained, and the run records why, when the ImageNet weights are not
    installed or the splits hold no glare copies to learn from; ``glare_epochs=-1`` asks for
    none."""
    cfg = experiment.ExperimentConfig.resolve(
        task_b.ArcFaceSettings, data_dir=str(sample_root), output_dir=str(tmp_path / "run"),
        weights_dir=str(tmp_path / "weights"), quick=True, epochs=1, image_size=48, seed=0)
    splits = task_b.prepare_data(cfg).splits

    def channel() -> task_b.IdentityChannel:
        return task_b.IdentityChannel("test", {}, {split: np.ones(len(frame), bool) for split,
                                                   frame in (("dev", splits.dev),
                                                             ("eval", splits.eval))})

    def trained(*args, **kwargs):
        raise AssertionError("trained a glare network")

    monkeypatch.setattr(glare_identity, "train_network", trained)
    assert task_b.with_glare(channel(), splits, cfg, epochs=-1).glare is None
    monkeypatch.setattr(whole_image, "is_available", lambda backbone: False)
    with pytest.warns(fallbacks.FallbackWarning, match="no glare network, whose ImageNet"):
        assert task_b.with_glare(channel(), splits, cfg).glare is None
    monkeypatch.undo()
    monkeypatch.setattr(glare_identity, "train_network", trained)
    no_glare = dataclasses.replace(splits, dev=splits.dev[
        splits.dev["distortion"] != glare_identity.GLARE])
    with pytest.warns(fallbacks.FallbackWarning, match="no clean photos with sunny copies"):
        assert task_b.with_glare(channel(), no_glare, cfg).whole is None
