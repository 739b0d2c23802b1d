"""Depthwise convolutions with the tap-sum weight gradient: the same outputs and gradients as
torch's own convolution, computed by torch's autograd on an `nn.Conv2d` with the same weights."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from common import depthwise, models


def _pair(channels: int, kernel: int, stride: int, bias: bool) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    reference = nn.Conv2d(channels, channels, kernel, stride, kernel // 2, groups=channels,
                          bias=bias).double()
    fast = copy.deepcopy(reference)
    assert depthwise.use_fast_depthwise(fast) == 1
    return reference, fast


# maps smaller than the kernel (the tap path; at 2 x 2 with a 5 x 5 kernel whole rows of taps
# read only padding), a stride, and a map as large as the kernel (torch's path)
@pytest.mark.parametrize("size,kernel,stride,bias", [
    (4, 5, 1, False), (2, 5, 1, True), (4, 5, 2, False), (3, 7, 1, False), (1, 3, 1, False),
    (5, 5, 1, False), (7, 3, 2, True)])
def test_outputs_and_gradients_equal_torchs_convolution(size, kernel, stride, bias):
    reference, fast = _pair(6, kernel, stride, bias)
    inputs = torch.randn(3, 6, size, size, dtype=torch.float64)
    upstream = torch.randn_like(reference(inputs))
    grads = []
    for conv in (reference, fast):
        x = inputs.clone().requires_grad_()
        out = conv(x)
        out.backward(upstream)
        grads.append((out.detach(), x.grad, conv.weight.grad,
                      conv.bias.grad if bias else torch.zeros(1)))
    for expected, got in zip(*grads):
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert grads[0][2].abs().sum() > 0  # a gradient that is there to compare


def test_autocast_keeps_torchs_kernels_and_trains():
    _, fast = _pair(6, 5, 1, False)
    fast.float()
    inputs = torch.randn(2, 6, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(inputs)
    assert out.dtype == torch.bfloat16 and out.grad_fn.name().startswith("Convolution")
    out.float().sum().backward()
    assert fast.weight.grad is not None and inputs.grad is not None


def test_tap_gradient_passes_gradcheck():
    weight = torch.randn(4, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    inputs = torch.randn(2, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w: depthwise._TapGradientConv.apply(x, w, (1, 1), (2, 2)), (inputs, weight))


def test_only_plain_depthwise_convolutions_change_and_the_state_dict_stays():
    network = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8),             # depthwise: changes
        nn.Conv2d(8, 16, 1),                                  # pointwise
        nn.Conv2d(16, 16, 3, padding=1, groups=4),            # grouped, not depthwise
        nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16),  # dilated
        nn.Conv2d(16, 16, 3, padding="same", groups=16),      # string padding
        nn.Conv2d(16, 16, 3, padding=1, groups=16, padding_mode="reflect"))
    keys = list(network.state_dict())
    assert depthwise.use_fast_depthwise(network) == 1
    assert [type(m) is depthwise.DepthwiseConv2d for m in network] == [True] + [False] * 5
    assert list(network.state_dict()) == keys


def test_backbones_train_through_the_tap_gradient_to_torchs_gradients():
    backbone, features = models.create_backbone("efficientnet_lite0", pretrained=False)
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    expected = sum(m.groups > 1 and m.groups == m.in_channels for m in convs)
    assert expected > 0 and sum(type(m) is depthwise.DepthwiseConv2d for m in convs) == expected
    reference = copy.deepcopy(backbone)
    for module in reference.modules():
        if type(module) is depthwise.DepthwiseConv2d:
            module.__class__ = nn.Conv2d
    images = torch.randn(2, 3, 64, 64)  # the last stages' maps: 4 x 4 and 2 x 2
    grads = []
    for network in (reference, backbone):
        network.train()
        network(images).square().sum().backward()
        grads.append([p.grad for p in network.parameters()])
    for expected_grad, got in zip(*grads):
        assert torch.allclose(got, expected_grad, rtol=1e-3, atol=1e-4)
