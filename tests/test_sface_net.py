"""`sface_net.MaskDropout`, the dropout of SFace's fine-tuned tail: torch's dropout law, drawn
another way."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from common import sface_net


def test_mask_dropout_keeps_each_value_with_probability_one_minus_p_scaled_up():
    torch.manual_seed(0)
    p, n = 0.4, 200_000
    values = torch.full((n,), 2.0, requires_grad=True)
    dropped = sface_net.MaskDropout(p).train()(values)
    kept = dropped != 0
    # binomial(n, 1 - p): 5 standard deviations either side
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    assert torch.allclose(dropped[kept], torch.tensor(2.0 / (1 - p)))
    dropped.sum().backward()
    assert torch.allclose(values.grad, kept.float() / (1 - p))


def test_mask_dropout_draws_the_same_mask_from_the_same_seed_and_none_in_eval():
    layer, values = sface_net.MaskDropout(0.4), torch.randn(64, 32)
    torch.manual_seed(3)
    first = layer.train()(values)
    torch.manual_seed(3)
    assert torch.equal(first, layer(values))
    assert layer.eval()(values) is values
    assert sface_net.MaskDropout(0.0).train()(values) is values


@pytest.mark.skipif(not sface_net.is_available(),
                    reason=f"SFace in torch needs: {sface_net.INSTALL}")
def test_converted_sface_drops_with_mask_dropout_at_its_graph_rate():
    model = sface_net.SFaceIdentity()
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(type(m) is sface_net.MaskDropout for m in dropouts)
    assert all(m.p == pytest.approx(0.4) for m in dropouts)  # SFace's ONNX ratio
