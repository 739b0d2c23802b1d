"""Tests for common/models.py and common/efficientfr.py: shapes, normalisation, fusion, freezing."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from common import models
from common.efficientfr import create_efficientfr


@pytest.fixture(autouse=True)
def _no_random_init_warning():
    """pretrained=False everywhere, so any weights warning here is a bug."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        yield


def _unit_norms(embeddings: torch.Tensor) -> list[float]:
    return embeddings.detach().norm(dim=1).tolist()


def test_efficientfr_shapes_and_size():
    model = create_efficientfr().eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, 112, 112))
        out = model(torch.randn(2, 3, 112, 112))
    assert features.shape == (2, 512, 7, 7)
    assert out.shape == (2, 512)
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 3_000_000


def test_create_backbone_attaches_provenance_and_data_config():
    backbone, num_features = models.create_backbone("efficientfr", pretrained=False)
    assert num_features == 512
    assert backbone.data_config["input_size"] == (3, 112, 112)
    assert backbone.data_config["mean"] == (0.5, 0.5, 0.5)
    assert backbone.weights_source.kind == "random" and backbone.pretrained is False

    timm_backbone, timm_features = models.create_backbone("resnet10t", pretrained=False)
    assert timm_features == 512
    assert timm_backbone.data_config["std"] == (0.229, 0.224, 0.225)
    with torch.no_grad():
        assert timm_backbone.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 512)


def test_facenet_backbone_uses_fixed_standardisation():
    backbone, num_features = models.create_backbone("inception_resnet_v1", pretrained=False)
    assert num_features == 512
    # (x - 127.5) / 128 on [0, 255] pixels == (x/255 - 0.5) / (128/255).
    assert backbone.data_config["mean"] == (0.5, 0.5, 0.5)
    assert backbone.data_config["std"] == pytest.approx((128 / 255,) * 3)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="inception_resnet_v1"):
        models.create_backbone("not_a_net", pretrained=False)
    with pytest.raises(ValueError, match="dual_se"):
        models.create_model("transformer_xl")


def test_gender_classifier_logits():
    model = models.create_model("gender", backbone_name="efficientfr", pretrained=False).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, 3, 64, 64))
    assert logits.shape == (3, 2)
    assert model.data_config["input_size"] == (3, 112, 112)
    assert not model.weights_source.pretrained


def test_dual_stream_se_uses_both_streams():
    torch.manual_seed(0)
    model = models.DualStreamSE("resnet10t", pretrained=False).eval()
    assert model.se.gate[0].in_features == 2 * 512 and model.se.gate[0].out_features == 64
    assert model.classifier.in_features == 1024
    raw, aligned = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(raw, aligned)
        other_aligned = model(raw, torch.randn(2, 3, 64, 64))
        other_raw = model(torch.randn(2, 3, 64, 64), aligned)
    assert logits.shape == (2, 2)
    assert not torch.allclose(logits, other_aligned)
    assert not torch.allclose(logits, other_raw)
    assert model.backbone is not model.aligned_backbone


def test_squeeze_excitation_gates_in_unit_interval():
    se = models.SqueezeExcitation(8, reduction=4)
    features = torch.ones(2, 8)
    out = se(features)
    assert out.shape == (2, 8)
    assert torch.all((out > 0) & (out < 1))  # ones times sigmoid gates


def test_embedding_net_l2_normalised():
    model = models.EmbeddingNet("efficientfr", embedding_dim=64, pretrained=False)
    embeddings = model(torch.randn(4, 3, 64, 64))  # train mode: BatchNorm1d over the batch
    assert embeddings.shape == (4, 64)
    assert _unit_norms(embeddings) == pytest.approx([1.0] * 4, abs=1e-5)


def test_input_standardization_removes_brightness_and_contrast():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 16, 16)
    washed_out = 0.3 * image + 0.6  # glare: brighter, flatter
    layer = models.InputStandardization(spread=0.5)
    out = layer(torch.cat([image, washed_out]))
    assert torch.allclose(out[0], out[1], atol=1e-5)
    assert out[0].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert out[0].std().item() == pytest.approx(0.5, rel=1e-5)
    assert torch.isfinite(layer(torch.ones(1, 3, 4, 4))).all()  # a flat image stays finite


def test_embedding_net_standardized_input_is_invariant_to_global_contrast():
    model = models.EmbeddingNet("efficientfr", embedding_dim=32, pretrained=False,
                                standardize_input=True).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(images), model(2.0 * images + 1.0), atol=1e-5)
    assert models.EmbeddingNet("efficientfr", pretrained=False).standardize_input is False


def test_spatial_head_keeps_layout_and_any_input_size():
    model = models.EmbeddingNet("resnet10t", embedding_dim=32, pretrained=False,
                                head="spatial").eval()
    images = torch.randn(1, 3, 96, 96)
    swapped = torch.cat([images[..., 48:], images[..., :48]], dim=3)  # left and right halves
    with torch.no_grad():
        out, out_swapped = model(images), model(swapped)
        assert model(torch.randn(2, 3, 160, 160)).shape == (2, 32)
    assert _unit_norms(out) == pytest.approx([1.0], abs=1e-5)
    # Pooled features barely see the swap; the spatial head does.
    pooled = models.EmbeddingNet("resnet10t", embedding_dim=32, pretrained=False).eval()
    with torch.no_grad():
        pooled_change = (pooled(images) - pooled(swapped)).norm().item()
    assert (out - out_swapped).norm().item() > 5 * pooled_change
    with pytest.raises(ValueError, match="'pooled' or 'spatial'"):
        models.EmbeddingNet("resnet10t", pretrained=False, head="flat")


def test_standardization_spread_travels_with_the_weights():
    trained = models.InputStandardization(spread=0.5)
    rebuilt = models.InputStandardization(spread=1.11)  # e.g. rebuilt with another mean/std
    rebuilt.load_state_dict(trained.state_dict())
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(rebuilt(images), trained(images))


def test_facenet_is_unprojected_inception_resnet_v1():
    model = models.create_model("facenet", pretrained=False).eval()
    assert isinstance(model.projection, torch.nn.Identity)
    with torch.no_grad():
        a, b = model.forward_pair(torch.randn(2, 3, 160, 160), torch.randn(2, 3, 160, 160))
    assert a.shape == b.shape == (2, 512)
    assert _unit_norms(a) == pytest.approx([1.0] * 2, abs=1e-5)
    with pytest.raises(ValueError, match="project=True"):
        models.EmbeddingNet("efficientfr", embedding_dim=128, pretrained=False, project=False)


def test_siamese_shared_weights_and_norms():
    model = models.create_model("siamese", backbone_name="efficientfr", pretrained=False).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        a, b = model.forward_pair(x, x)
    assert a.shape == (3, 128)
    assert torch.allclose(a, b)
    assert _unit_norms(a) == pytest.approx([1.0] * 3, abs=1e-5)


def test_freeze_backbone_counts_and_flags():
    model = models.GenderClassifier("efficientfr", pretrained=False)
    backbone = dict(model.backbone.named_parameters())
    stem = {n for n in backbone if n.startswith("stem.")}
    stem_numel = sum(backbone[n].numel() for n in stem)
    assert 0 < stem_numel < sum(p.numel() for p in backbone.values())

    assert models.freeze_backbone(model, frozen_blocks=1) == stem_numel  # EfficientFR's stem
    assert {n for n, p in backbone.items() if not p.requires_grad} == stem
    assert all(p.requires_grad for p in model.classifier.parameters())

    models.freeze_backbone(model, frozen_blocks=2)
    held = {n for n, p in backbone.items() if not p.requires_grad}
    assert held == stem | {n for n in backbone if n.startswith("stages.0.")}

    assert models.freeze_backbone(model, frozen_blocks=0) == 0
    assert all(p.requires_grad for p in backbone.values())
    assert models.freeze_backbone(model, frozen_blocks=100) == sum(p.numel() for p in backbone.values())
    assert all(p.requires_grad for p in model.classifier.parameters())
    with pytest.raises(ValueError, match="frozen_blocks=-1"):
        models.freeze_backbone(model, frozen_blocks=-1)


def test_freeze_backbone_on_dual_stream_and_plain_module():
    model = models.DualStreamSE("efficientfr", pretrained=False)
    models.freeze_backbone(model, frozen_blocks=100)
    assert not any(p.requires_grad for p in model.aligned_backbone.parameters())
    assert all(p.requires_grad for p in model.se.parameters())
    with pytest.raises(ValueError, match="Linear"):
        models.freeze_backbone(torch.nn.Linear(2, 2), frozen_blocks=1)


def test_explicit_weights_shared_between_models(tmp_path):
    torch.manual_seed(0)
    first = models.GenderClassifier("efficientfr", pretrained=False)
    torch.save(first.backbone.state_dict(), tmp_path / "efficientfr.pth")
    second = models.EmbeddingNet("efficientfr", pretrained=False,
                                 weights=tmp_path / "efficientfr.pth")
    assert second.weights_source.kind == "file"
    assert torch.equal(first.backbone.fc.weight, second.backbone.fc.weight)


@pytest.mark.parametrize("local_contrast, width", [(False, 2 * 32 * 31), (True, 2 * 31 * 31)])
def test_copy_descriptor_ignores_brightness_and_contrast(local_contrast, width):
    torch.manual_seed(0)
    raw = torch.rand(1, 3, 64, 64)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    normalise = lambda x: (x - 0.5) / 0.5  # noqa: E731
    glare = 0.4 * raw + 0.55  # brighter and flatter, as "sunny"
    a, b, other = (models.copy_descriptor(normalise(image), mean, std,
                                          local_contrast=local_contrast)
                   for image in (raw, glare, torch.rand(1, 3, 64, 64)))
    assert a.shape == (1, width)
    assert a.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert (a * b).sum().item() == pytest.approx(1.0, abs=1e-4)
    assert abs((a * other).sum().item()) < 0.2


def test_local_contrast_keeps_the_layout_a_glare_patch_faded():
    """A patch of the image keeps 5 % of its contrast at its centre, fading smoothly to none
    lost (glare's washed-out region): the plain gradients weigh that patch by what is left,
    local contrast by direction, so the faded copy stays at least twice as close."""
    torch.manual_seed(0)
    texture = lambda: F.interpolate(torch.rand(1, 1, 16, 16), size=64,  # noqa: E731
                                    mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    photo, stranger = texture(), texture()
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    kept = 1 - 0.95 * torch.exp(-((x - 20) ** 2 + (y - 24) ** 2) / (2 * 14.0 ** 2))
    faded = 0.5 + (photo - 0.5) * kept
    distance = {}
    for local_contrast in (False, True):
        a, b, c = (models.copy_descriptor((image - 0.5) / 0.5, (0.5,) * 3, (0.5,) * 3,
                                          local_contrast=local_contrast)
                   for image in (photo, faded, stranger))
        distance[local_contrast] = 1 - (a * b).sum().item()
        assert abs((a * c).sum().item()) < 0.2
    assert distance[True] < distance[False] / 2


def test_embedding_with_layout_is_a_weighted_unit_concatenation():
    model = models.EmbeddingNet("resnet10t", embedding_dim=16, pretrained=False).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        learned = model(images)
        model.copy_weight = 0.3
        fused = model(images)
    copies = models.copy_descriptor(images, model.data_config["mean"], model.data_config["std"])
    assert fused.shape == (3, 16 + copies.shape[1])
    assert _unit_norms(fused) == pytest.approx([1.0] * 3, abs=1e-5)
    cos = fused @ fused.T
    expected = 0.7 * (learned @ learned.T) + 0.3 * (copies @ copies.T)
    assert torch.allclose(cos, expected, atol=1e-5)
    with pytest.raises(ValueError, match="copy_weight"):
        models.EmbeddingNet("resnet10t", pretrained=False, copy_weight=1.0)


def test_siamese_fuses_the_copy_descriptor_too():
    model = models.SiameseNet("resnet10t", pretrained=False, embedding_dim=8,
                              copy_weight=0.5).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused, learned = model(images), model.embed_learned(images)
    assert fused.shape == (2, 8 + 2 * 31 * 31) and learned.shape == (2, 8)
    assert torch.allclose(fused[:, :8], learned * 0.5 ** 0.5, atol=1e-6)
    assert _unit_norms(fused) == pytest.approx([1.0] * 2, abs=1e-5)
