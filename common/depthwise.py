"""Depthwise convolutions whose weight gradient stays fast on a CPU.

oneDNN, torch's CPU convolution library, computes the weight gradient of a depthwise convolution
far slower than its forward pass when the kernel is larger than the feature map: the 5x5 kernels
of EfficientNet's last stage on its 4 x 4 maps at 112 px, 2 x 2 at 64 px
(`benchmarks/depthwise.py` times both per layer). There that gradient is a sum over the kernel's taps, one product of
the output gradient with a shifted view of the input per tap, and taps that only ever read the
padding are zero. `DepthwiseConv2d` computes it so on a CPU, for such maps only; the forward
pass, the input gradient, other maps and other devices keep torch's kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DepthwiseConv2d", "use_fast_depthwise", "tap_weight_gradient"]


def tap_weight_gradient(grad: Tensor, inputs: Tensor, kernel: tuple[int, int],
                        stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """The weight gradient (C, 1, kh, kw) of a depthwise convolution (dilation 1, zero
    padding) from its output gradient `grad` (N, C, Ho, Wo) and `inputs` (N, C, H, W)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    height, width = inputs.shape[-2:]
    out_h, out_w = grad.shape[-2:]
    padded = F.pad(inputs, (pw, pw, ph, ph))
    weight_grad = grad.new_zeros(inputs.shape[1], 1, kh, kw)
    for i in range(kh):
        if i + sh * (out_h - 1) < ph or i >= ph + height:  # this row of taps reads only padding
            continue
        for j in range(kw):
            if j + sw * (out_w - 1) < pw or j >= pw + width:
                continue
            window = padded[:, :, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
            weight_grad[:, 0, i, j] = (grad * window).sum((0, 2, 3))
    return weight_grad


class _TapGradientConv(torch.autograd.Function):
    """A bias-free depthwise convolution whose weight gradient is `tap_weight_gradient`."""

    @staticmethod
    def forward(ctx, inputs: Tensor, weight: Tensor, stride: tuple[int, int],
                padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(inputs, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(inputs, weight, None, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        inputs, weight = ctx.saved_tensors
        input_grad = weight_grad = None
        if ctx.needs_input_grad[0]:
            input_grad = torch.nn.grad.conv2d_input(inputs.shape, weight, grad, ctx.stride,
                                                    ctx.padding, 1, weight.shape[0])
        if ctx.needs_input_grad[1]:
            weight_grad = tap_weight_gradient(grad, inputs, tuple(weight.shape[-2:]), ctx.stride,
                                              ctx.padding)
        return input_grad, weight_grad, None, None


class DepthwiseConv2d(nn.Conv2d):
    """`nn.Conv2d` with ``groups == in_channels == out_channels``, zero padding and dilation 1;
    its weight gradient comes from `tap_weight_gradient` when it trains on a CPU on a map smaller
    than its kernel. Same parameters and state dict as the `nn.Conv2d` it replaces."""

    def forward(self, inputs: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        if (inputs.device.type == "cpu" and self.weight.requires_grad and torch.is_grad_enabled()
                and not torch.is_autocast_enabled("cpu")  # mixed dtypes: torch's own kernels
                and (inputs.shape[-2] < kh or inputs.shape[-1] < kw)):
            out = _TapGradientConv.apply(inputs, self.weight, self.stride, self.padding)
            return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)
        return super().forward(inputs)


def _is_plain_depthwise(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.groups > 1
            and module.groups == module.in_channels == module.out_channels
            and module.dilation == (1, 1) and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple))  # not "same" / "valid"


def use_fast_depthwise(network: nn.Module) -> int:
    """Make every plain depthwise `nn.Conv2d` of `network` a `DepthwiseConv2d`, in place (its
    parameters, hooks and state dict stay). Returns how many were changed."""
    changed = 0
    for module in network.modules():
        if _is_plain_depthwise(module):
            module.__class__ = DepthwiseConv2d
            changed += 1
    return changed
