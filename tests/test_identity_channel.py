"""The learned identity channel: SFace converted to torch, fine-tuned on the train identities,
saved beside the embedding and read back by `common.predict`'s route (issue 20)."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from common import (checkpoints, data, evaluation, experiment, face_descriptor, fallbacks,
                    fusion, identity_training, leaderboard, metrics, model_inputs, sface_net,
                    task_b)

pytestmark = [pytest.mark.skipif(not sface_net.is_available(),
                                 reason=f"SFace in torch needs: {sface_net.INSTALL}"),
              pytest.mark.long]  # conftest hands long files out first


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_root):
    """Notebook 02's identity step on the sample: SFace fine-tuned for 2 epochs."""
    tmp = tmp_path_factory.mktemp("identity")
    cfg = experiment.ExperimentConfig.resolve(
        task_b.ArcFaceSettings, data_dir=str(sample_root), output_dir=str(tmp / "run"),
        weights_dir=str(tmp / "weights"), quick=True, epochs=2, image_size=48, seed=0)
    task_data = task_b.prepare_data(cfg)
    return cfg, task_data, task_b.identity_channel(task_data, cfg, "sface", epochs=2,
                                                   glare_epochs=-1)


def _top1(frame, vectors, exclude_own_source: bool = False) -> float:
    return metrics.summarize_retrieval(evaluation.retrieval_table(
        frame, vectors, exclude_own_source=exclude_own_source))["top1"]


def test_sface_in_torch_matches_opencv(sample_root):
    paths = data.read_task_b(sample_root, "val")["path"].tolist()[:12]
    crops, _ = sface_net.face_crops(paths)
    torch_vectors = sface_net.describe(sface_net.SFaceIdentity(), crops)
    recogniser = face_descriptor.sface_models()[1]
    opencv = face_descriptor.normalise(np.stack([
        recogniser.feature(np.ascontiguousarray(crop[:, :, ::-1])).ravel() for crop in crops]))
    assert np.abs(torch_vectors - opencv).max() < 1e-4
    assert np.allclose(np.linalg.norm(torch_vectors, axis=1), 1.0, atol=1e-5)


def test_face_crops_of_files_equal_those_of_arrays(sample_root):
    paths = data.read_task_b(sample_root, "train")["path"].tolist()[:6]
    crops, found = sface_net.face_crops(paths)
    again, found_again = sface_net.face_crops([data.load_image(path) for path in paths])
    assert crops.shape == (6, sface_net.CROP_SIZE, sface_net.CROP_SIZE, 3)
    assert np.array_equal(crops, again) and np.array_equal(found, found_again)


def test_fine_tuning_recognises_unseen_identities_better_than_sface_as_shipped(trained):
    cfg, task_data, identity = trained
    assert identity.source == "SFace fine-tuned" and identity.fit.best_epoch >= 1
    # The evaluated identities were neither trained on nor used to pick the epoch.
    evaluated = task_data.splits.eval
    shipped = sface_net.describe(sface_net.SFaceIdentity(),
                                 sface_net.face_crops(evaluated["path"].tolist())[0])
    before = _top1(evaluated, shipped, exclude_own_source=True)
    after = _top1(evaluated, identity.vectors["eval"], exclude_own_source=True)
    assert after >= before + 0.03, (before, after)


def test_fine_tuning_is_seeded_without_touching_the_callers_random_state():
    crops = np.random.default_rng(0).integers(
        0, 256, (8, sface_net.CROP_SIZE, sface_net.CROP_SIZE, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 2)
    settings = identity_training.TuneSettings(epochs=1, batch_size=4)

    def tuned_tail(caller_seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The tail's weights, and what the caller draws next from the stream it had seeded."""
        model = sface_net.SFaceIdentity()
        dev = sface_net.frozen_features(model, crops[:4])
        later_is_better = itertools.count()  # each epoch scores higher: epoch 1 is kept
        torch.manual_seed(caller_seed)
        identity_training.fine_tune(model, crops, labels, dev,
                                    lambda vectors: float(next(later_is_better)), settings,
                                    seed=3, progress=False)
        return [value.clone() for value in model.tail.state_dict().values()], torch.rand(4)

    first, after_tuning = tuned_tail(caller_seed=123)
    torch.manual_seed(123)
    assert torch.equal(after_tuning, torch.rand(4))  # the caller's stream went on untouched
    second, _ = tuned_tail(caller_seed=7)
    shipped = sface_net.SFaceIdentity().tail.state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # its own seed decides
    assert not all(torch.equal(a, b) for a, b in zip(first, shipped))


def test_saved_channel_gives_predict_the_notebooks_vectors(trained, tmp_path, sample_root):
    cfg, task_data, identity = trained
    cfg = dataclasses.replace(cfg, weights_dir=tmp_path)
    name = "task_b_embedding_test"
    weights = task_b.save_identity(identity, cfg, name, task_data.splits,
                                   "fingerprint")["identity_weights"]
    assert weights.startswith(f"{name}_identity-") and (tmp_path / weights).is_file()
    embedder = task_b.create_embedder("embedding", dataclasses.replace(
        cfg, backbone="resnet10t", pretrained=False), 32)
    from types import SimpleNamespace
    report = SimpleNamespace(verification={"threshold": 0.5}, dev={"top1": 1.0, "f1_macro": 1.0})
    card = task_b.model_card(dataclasses.replace(cfg, backbone="resnet10t"), embedder,
                             "embedding", report, task_data.splits, "fingerprint",
                             copy_switch=None, identity_weights=weights)
    checkpoint = checkpoints.save_model(embedder, tmp_path, name, card)
    card = checkpoints.load_model_card(checkpoint)
    assert card.identity_path == tmp_path / weights
    some = slice(0, 48)  # enough rows to compare vectors; the leaderboard below scores all
    paths = task_data.splits.eval["path"].tolist()[some]
    # save_identity kept the channel's vectors of the evaluated images per checkpoint and by
    # content: the card's route reads them without loading or running the network.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sface_net, "describe", lambda *args, **kwargs: pytest.fail("described"))
        patch.setattr(checkpoints, "load_model", lambda *args, **kwargs: pytest.fail("loaded"))
        inputs = model_inputs.prepare_inputs(card, paths, with_identity=True)
        assert np.array_equal(inputs.identity, identity.network_vectors["eval"][some])
        with pytest.raises(pytest.fail.Exception):  # not an array of the same pixels
            model_inputs.prepare_inputs(card, [data.load_image(paths[0])], with_identity=True)
    # Images it did not keep (train) are described by the saved checkpoint.
    unseen = task_data.splits.train["path"].tolist()[:4]
    described = model_inputs.prepare_inputs(card, unseen, with_identity=True).identity
    expected = sface_net.describe(identity.model, sface_net.face_crops(unseen)[0])
    assert np.allclose(described, expected, atol=1e-5)
    channels = task_b.switch_channels(embedder, card, inputs)
    assert channels["identity"] is inputs.identity
    # The notebook's channel: the network with its dev-chosen share of dlib's descriptor where
    # dlib found the face; a card whose switch names a share gets the same through predict.
    descriptors, found = face_descriptor.cached_descriptors(
        task_data.splits.eval["path"].tolist(), task_b.IDENTITY_DESCRIPTOR)
    share = identity.descriptor_share
    mixed = fusion.fuse(identity.network_vectors["eval"], face_descriptor.normalise(descriptors),
                        share, present=found)
    assert np.array_equal(identity.vectors["eval"], mixed)
    assert 0 < (found == False).sum() < len(found)  # noqa: E712  (both kinds of row occur)
    switched = dataclasses.replace(card, copy_switch=dataclasses.asdict(fusion.CopySwitch(
        0.1, descriptor_share=0.5, descriptor_front_end=task_b.IDENTITY_DESCRIPTOR)))
    through_predict = task_b.switch_channels(
        embedder, switched, model_inputs.prepare_inputs(switched, paths, with_identity=True))
    np.testing.assert_allclose(through_predict["face"], fusion.fuse(
        identity.network_vectors["eval"][some], face_descriptor.normalise(descriptors[some]),
        0.5, present=found[some]), atol=1e-6)
    # a pair face rule reads the network without the descriptor (no copy share here)
    np.testing.assert_array_equal(through_predict["pair_faces"],
                                  identity.network_vectors["eval"][some])
    # Predict reads the notebook's face-found flags (YuNet's, on SFace's crops) whatever the
    # switch: a pair face rule keeps a cosine of its own for faceless pairs. A switch without a
    # faceless share mixes nothing by them; one with a share mixes it into those rows the way
    # the notebook's report does.
    assert np.array_equal(through_predict["found"], identity.found["eval"][some])
    np.testing.assert_allclose(through_predict["identity"], through_predict["face"], atol=1e-6)
    assert identity.found["eval"].any() and not identity.found["eval"].all()
    faceless = dataclasses.replace(switched, copy_switch={**switched.copy_switch,
                                                          "identity_share": 0.1,
                                                          "faceless_share": 0.8})
    channels = task_b.switch_channels(
        embedder, faceless, model_inputs.prepare_inputs(faceless, paths, with_identity=True))
    assert np.array_equal(channels["found"], identity.found["eval"][some])
    np.testing.assert_allclose(channels["identity"], fusion.switch_identity(
        channels["embedding"], through_predict["face"], 0.1, identity.found["eval"][some], 0.8),
        atol=1e-6)
    # Scored on its own (notebook 04's leaderboard, `predict` given its checkpoint), the
    # identity card goes the way of every card: its inputs are SFace's crops, its vectors the
    # network's own (without the switch's share of dlib's descriptor).
    model, own_card = checkpoints.load_model(tmp_path / weights)
    alone = task_b.embed_for_card(model, own_card, model_inputs.prepare_inputs(own_card, paths))
    assert np.allclose(alone, identity.network_vectors["eval"][some], atol=1e-4)
    limit = 400  # the first identities' images: the same rows either way
    board = leaderboard.evaluate_checkpoints([own_card], sample_root, image_limit=limit,
                                             with_baselines=False)
    scored, _ = leaderboard.evaluation_frame(sample_root, own_card, image_limit=limit)
    rows = task_data.splits.eval.reset_index(drop=True).reset_index().set_index("path")
    positions = rows.loc[scored["path"], "index"].to_numpy()
    assert 0 < len(positions) < len(task_data.splits.eval)
    assert board.rows[0]["top1"] == pytest.approx(
        _top1(scored, identity.network_vectors["eval"][positions]), abs=1e-9)
    # Notebook 03 inherits it through the card: same vectors, no second checkpoint here...
    inherited = task_b.identity_channel(task_data, cfg, "auto", inherit_from=checkpoint)
    assert inherited.fit is None and inherited.checkpoint == tmp_path / weights
    assert np.allclose(inherited.vectors["eval"], identity.vectors["eval"], atol=1e-5)
    assert inherited.glare is None  # notebook 02's card names no glare network
    assert task_b.save_identity(inherited, cfg, "siamese", task_data.splits,
                                "x") == {"identity_weights": weights}
    # ...and a copy with its own card in another weights folder.
    other = tmp_path / "other"
    copied = task_b.save_identity(inherited, dataclasses.replace(cfg, weights_dir=other),
                                  "siamese", task_data.splits, "x")["identity_weights"]
    assert (checkpoints.load_model_card(other / copied).train_identities
            == checkpoints.load_model_card(tmp_path / weights).train_identities)


def test_an_inherited_channel_that_saw_an_evaluated_identity_is_refused(trained, tmp_path):
    cfg, task_data, identity = trained
    cfg = dataclasses.replace(cfg, weights_dir=tmp_path)
    weights = task_b.save_identity(identity, cfg, "leaky", task_data.splits,
                                   "fingerprint")["identity_weights"]
    identity_card = checkpoints.load_model_card(tmp_path / weights)
    seen = task_data.splits.eval["identity"].iloc[0]
    dataclasses.replace(identity_card, train_identities=[*identity_card.train_identities, seen]
                        ).to_json((tmp_path / weights).with_suffix(".json"))
    embedding_card = checkpoints.ModelCard(
        task="task_b", kind="embedding", model_kwargs={}, image_size=48, mean=[0.5] * 3,
        std=[0.5] * 3, identity_weights=weights, weights_file="leaky.pt")
    embedding_card.to_json(tmp_path / "leaky.json")
    (tmp_path / "leaky.pt").write_bytes(b"")  # never read: the identity card is refused first
    with pytest.raises(ValueError, match=f"identities of the {task_data.splits.eval_name}"):
        task_b.identity_channel(task_data, cfg, "sface", inherit_from=tmp_path / "leaky.pt")


def test_auto_says_it_fell_back_to_the_descriptor(trained, monkeypatch):
    cfg, task_data, _ = trained
    splits = task_data.splits  # a few rows each: the face descriptor takes ~0.1 s an image
    task_data = dataclasses.replace(task_data, splits=dataclasses.replace(
        splits, dev=splits.dev.head(12), eval=splits.eval.head(12)))
    monkeypatch.setattr(sface_net, "is_available", lambda: False)
    with pytest.warns(fallbacks.FallbackWarning, match="not SFace fine-tuned here"):
        channel = task_b.identity_channel(task_data, cfg, "auto")
    assert any("not SFace fine-tuned here" in line for line in fallbacks.recorded())
    if face_descriptor.is_available():
        assert channel.source.startswith("face descriptor") and channel.model is None
        assert len(channel.vectors["eval"]) == len(task_data.splits.eval)
        assert np.allclose(np.linalg.norm(channel.vectors["eval"], axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="identity='sfce'"):
        task_b.identity_channel(task_data, cfg, "sfce")
