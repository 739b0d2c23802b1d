"""Plumbing shared by the training notebooks: resolved config, seeded loaders, optimiser/scheduler
and the resume fingerprint (splits and their leakage guards are `common.splits`).

Task-specific code (task_a.py, task_b.py) builds on these so the notebooks stay a page of calls.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common import (cache, config, data, discovery, evaluation, parameters, runs,
                    workspace)
from common.splits import Splits

__all__ = ["TaskSettings", "ExperimentConfig", "make_loader", "create_optimizer",
           "create_scheduler", "training_files", "resume_fingerprint"]

# Quick mode (CI, tests) is a smoke run. At 64 px a step costs a third of 112 px's; Task A's
# default (the probe) reads face descriptors at any size, and the Task B networks still learn
# the sample's identities (tests/test_notebooks.py).
QUICK = {"epochs": 2, "image_size": 64, "batch_size": 32, "num_workers": 0}
# Settings that change where a run reads and writes, or how fast, but no number it computes:
# left out of the resume fingerprint so a moved data folder or a new run folder can resume.
_LOCATION_SETTINGS = ("notebook", "data_dir", "run_dir", "output_dir", "weights_dir", "work_root",
                      "device", "resume", "image_cache", "run_name")
# Shared parameters that are 0 or "" to mean "the profile's value".
_PROFILE_DEFAULTS = ("backbone", "epochs", "image_size", "batch_size")


@dataclass(frozen=True)
class TaskSettings:
    """A notebook's own parameters (its task section), typed; the base of each task's section.

    Subclasses name their notebook and its per-profile default backbones and epochs as class
    arguments (``class Settings(TaskSettings, notebook=..., backbones=..., epochs=...)``) and list
    its task parameters as fields without defaults: the notebook's parameters cell is the only
    place a default is written. `overlay` returns a named recipe's values, applied over the
    cell's defaults but under anything the user set.
    """

    notebook: ClassVar[str] = ""
    backbones: ClassVar[dict[str, str]] = {}  # profile name -> default backbone
    epochs: ClassVar[dict[str, int]] = {}     # profile name -> default epochs

    def __init_subclass__(cls, notebook: str = "", backbones: dict[str, str] | None = None,
                          epochs: dict[str, int] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.notebook = notebook or cls.notebook
        cls.backbones = backbones or cls.backbones
        cls.epochs = epochs or cls.epochs

    @classmethod
    def overlay(cls, values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(recipe name, the values it sets) for these parameter values; ("", {}) for none."""
        return "", {}


@dataclass
class ExperimentConfig:
    """Every setting of a training notebook, resolved once, with where each value came from.

    Built by `ExperimentConfig.resolve(section, **params)`. Shared run settings are fields; the
    notebook's own parameters are the typed `task` section. `sources` names the winner of every
    value: the notebook's default, the user's parameter, a recipe, the hardware profile or quick
    mode; `summary()` shows them side by side.
    """

    notebook: str
    data_dir: Path
    run_dir: Path
    weights_dir: Path
    device: torch.device
    profile: config.Profile
    deterministic: bool
    gradient_accumulation: int
    num_processes: int
    backbone: str
    pretrained: bool | str
    weights: str
    epochs: int
    image_size: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    quick: bool
    resume: bool | str
    dev_fraction: float
    holdout_fraction: float
    num_workers: int
    patience: int | None
    allow_leakage: bool
    image_cache: str
    run_name: str
    task: TaskSettings
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def resolve(cls, section: type[TaskSettings], **params: Any) -> "ExperimentConfig":
        """Resolve a notebook's parameters, lowest to highest precedence: the notebook's
        parameters cell, the section's recipe overlay, the parameters the user set (`params`
        that differ from the cell); then the profile fills values left 0 or "" and quick mode
        caps sizes last.

        Args:
            section: the notebook's `TaskSettings` subclass (``task_a.Settings``, ...).
            params: the notebook's parameters (`parameters.collect`); omitted ones take the
                cell's defaults.

        Raises:
            ValueError: a name the notebook's parameters cell does not declare.
        """
        defaults = parameters.read_defaults(section.notebook)
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise ValueError(f"{section.notebook} has no parameter {unknown}; its parameters "
                             f"cell declares {sorted(defaults)}.")
        values = {**defaults, **params}
        sources = {name: "parameter" if name in params and params[name] != defaults[name]
                   else "notebook" for name in values}
        recipe, overlay = section.overlay(values)
        for name, value in overlay.items():
            if sources[name] == "notebook" and values[name] != value:
                values[name], sources[name] = value, f"recipe {recipe}"
        _check_section(section, values)

        workspace.set_work_root(values["work_root"])
        if values["run_name"]:  # refused before any work, not when the weights are saved
            runs.check_run_name(values["run_name"])
        device = config.resolve_device(values["device"])
        config.configure_threads(device)
        profile = config.resolve_profile(values["profile"], device)
        profile_values = {"backbone": section.backbones.get(profile.name, ""),
                          "epochs": section.epochs.get(profile.name, 0),
                          "image_size": profile.image_size, "batch_size": profile.batch_size}
        for name in _PROFILE_DEFAULTS:
            if not values[name]:
                values[name], sources[name] = profile_values[name], f"profile {profile.name}"
        sources["weight_decay"] = "fixed"
        num_processes = _num_processes(values["num_processes"], device, sources)
        cfg = cls(
            notebook=section.notebook,
            data_dir=discovery.resolve_data_dir(values["data_dir"],
                                                layout=values.get("data_format", "facecom")),
            run_dir=runs.create_run_dir(values["output_dir"], section.notebook),
            weights_dir=runs.resolve_weights_dir(values["weights_dir"]),
            device=device, profile=profile,
            deterministic=_deterministic(values["deterministic"], device, sources),
            gradient_accumulation=_gradient_accumulation(values["gradient_accumulation"]),
            num_processes=num_processes,
            backbone=values["backbone"],
            pretrained=values["pretrained"], weights=values["weights"],
            epochs=int(values["epochs"]), image_size=int(values["image_size"]),
            batch_size=int(values["batch_size"]), lr=float(values["lr"]), weight_decay=1e-4,
            seed=int(values["seed"]), quick=bool(values["quick"]),
            resume=_resume_mode(values["resume"]), dev_fraction=float(values["dev_fraction"]),
            holdout_fraction=float(values["holdout_fraction"]),
            num_workers=_num_workers(profile, num_processes, sources),
            patience=values["patience"],
            allow_leakage=bool(values["allow_leakage"]),
            image_cache=cache.check_image_cache(values["image_cache"]),
            run_name=values["run_name"],
            task=section(**{f.name: values[f.name] for f in fields(section)}),
            sources=sources,
        )
        if cfg.quick:
            for name, cap in QUICK.items():
                if getattr(cfg, name) > cap or name == "num_workers":
                    setattr(cfg, name, cap)
                    sources[name] = "quick mode"
        config.seed_everything(cfg.seed, cfg.deterministic)
        return cfg

    def to_dict(self) -> dict:
        """The resolved settings as JSON-able values (metrics.json, model cards, fingerprints);
        the task section's parameters sit beside the shared ones."""
        values = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("task", "sources")}
        values.update(profile=self.profile.name, device=str(self.device), **asdict(self.task))
        return runs.to_jsonable(values)

    def summary(self) -> pd.DataFrame:
        """Every setting with its value and the winner that set it (see `resolve`)."""
        values = self.to_dict()
        return pd.DataFrame({"value": [repr(value) for value in values.values()],
                             "set by": [self.sources.get(name, "resolved") for name in values]},
                            index=pd.Index(list(values), name="setting"))


def _check_section(section: type[TaskSettings], values: dict[str, Any]) -> None:
    """The section's fields must be exactly the notebook's parameters that are not shared run
    settings, so no parameter is read from anywhere else and none is silently ignored."""
    shared = {f.name for f in fields(ExperimentConfig)} | {"output_dir", "work_root"}
    declared = {f.name for f in fields(section)}
    task_names = set(values) - shared
    if declared != task_names:
        raise TypeError(f"{section.__name__} must declare exactly the task parameters of "
                        f"{section.notebook}: missing {sorted(task_names - declared)}, "
                        f"not in the notebook {sorted(declared - task_names)}.")


def _deterministic(value: Any, device: torch.device, sources: dict[str, str]) -> bool:
    """``"auto"``: deterministic kernels on CPU (same seed, same numbers), cuDNN autotuning on
    GPU, where deterministic kernels cost speed and bit-exact runs are not promised anyway."""
    if value == "auto":
        sources["deterministic"] = f"device {device.type}"
        return device.type == "cpu"
    if isinstance(value, bool):
        return value
    raise ValueError(f"deterministic={value!r}; choose 'auto', True or False.")


def _whole_number(name: str, value: Any, minimum: int, meaning: str) -> int:
    """`value` itself when it is an int (not a bool) of at least `minimum`, else a ValueError
    naming the parameter and what it takes."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}; use {meaning}.")
    return value


def _num_processes(value: Any, device: torch.device, sources: dict[str, str]) -> int:
    """Training processes (`train.fit`): 0 is one per visible GPU on CUDA, one on CPU."""
    if _whole_number("num_processes", value, 0,
                     "0 (one per visible GPU) or a whole number of processes") == 0:
        sources["num_processes"] = f"device {device.type}"
        return max(1, torch.cuda.device_count()) if device.type == "cuda" else 1
    return value


def _num_workers(profile: config.Profile, num_processes: int, sources: dict[str, str]) -> int:
    """The profile's loader workers per training process, at most the CPUs this process may use
    shared among the processes: more only queue for a CPU (a Colab session has 2; Kaggle's two
    GPUs share 4), and torch warns of it every epoch."""
    cpus = config.cpu_count()
    fair = max(1, cpus // num_processes)
    sources["num_workers"] = f"profile {profile.name}"
    if profile.num_workers <= fair:
        return profile.num_workers
    sources["num_workers"] += (f", at most {fair}: {cpus} CPU{'s' if cpus > 1 else ''} for "
                               f"{num_processes} process{'es' if num_processes > 1 else ''}")
    return fair


def _gradient_accumulation(value: Any) -> int:
    return _whole_number("gradient_accumulation", value, 1, "a whole number of batches >= 1")


def _resume_mode(value: Any) -> bool | str:
    if value == "force":
        return "force"
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"resume={value!r}; choose False, True or 'force' (continue a resume "
                     "state written with other settings or data).")


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                epoch: int = 0, num_workers: int = 0, sampler: Sampler | None = None,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader whose order and augmentations depend only on (seed, epoch): resumable.

    Worker processes re-seed the dataset's albumentations pipelines in `config.seed_worker`;
    without workers nothing would, and the pipelines would keep drawing from fresh OS entropy
    (transforms are built with seed=None), so they are re-seeded here from (seed, epoch).
    """
    generator = config.make_generator(seed * 1000 + epoch)
    if num_workers == 0:
        for transform in config.seedable_transforms(dataset):
            transform.set_random_seed((seed * 1000 + epoch) % 2**32)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=num_workers, drop_last=drop_last,
                      generator=generator, worker_init_fn=config.seed_worker,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def create_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                     backbone_lr_scale: float = 0.1) -> torch.optim.Optimizer:
    """AdamW; pretrained backbone parameters learn `backbone_lr_scale` times slower than heads."""
    backbone, head = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (backbone if "backbone" in name else head).append(param)
    groups = [{"params": head, "lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_scale})
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def create_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int,
                     steps_per_epoch: int) -> tuple[Any, str]:
    """`cosine` (per step, with one epoch of linear warm-up) or `plateau` (per epoch, on dev).

    Returns the scheduler and the interval `fit` must step it at.
    """
    if name == "cosine":
        total = max(1, epochs * steps_per_epoch)
        warmup = min(steps_per_epoch, total // 4)
        lambdas = [
            lambda step: min(1.0, (step + 1) / max(1, warmup)) * 0.5 * (
                1 + np.cos(np.pi * min(1.0, step / total)))
        ] * len(optimizer.param_groups)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas), "step"
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                          patience=1), "epoch"
    raise ValueError(f"Unknown schedule {name!r}; choose 'cosine' or 'plateau'.")


def training_files(cfg: ExperimentConfig, name: str) -> tuple[Path, Path]:
    """The resume state and best-epoch weights of run `name`: `weights/<name>.resume.pt` and
    `weights/<name>.best_state.pt`. Named by the run, not stamped, so a re-run finds them.

    Raises:
        ValueError: `name` is not a safe file name (`runs.check_run_name`).
    """
    runs.check_run_name(name)
    return cfg.weights_dir / f"{name}.resume.pt", cfg.weights_dir / f"{name}.best_state.pt"


def resume_fingerprint(cfg: ExperimentConfig, splits: Splits, **recipe: Any) -> dict:
    """What a training run is, for `train.fit` to refuse resuming another one: the resolved
    settings with the task section (without where it reads and writes), the recipe's own
    arguments, and the train and dev data (`_data_fingerprint`: relative paths, computed before
    the first step, so no file is touched; the model card's fingerprint, taken after training,
    covers every file with its size)."""
    settings = {key: value for key, value in cfg.to_dict().items()
                if key not in _LOCATION_SETTINGS}
    return runs.to_jsonable({
        "config": settings, "recipe": recipe,
        "data": {split: _data_fingerprint(frame)
                 for split, frame in (("train", splits.train), ("dev", splits.dev))},
    })


def _data_fingerprint(frame: pd.DataFrame) -> str | dict:
    """The file list's fingerprint; for a Task B table, the fingerprint of its photos and the
    number of rows per distortion: a distorted image is named by its photo and distortion, and
    hashing the photos alone (an eighth of the rows) keeps this quick on millions of them."""
    if "source" not in frame.columns:
        return data.compute_fingerprint(frame["path"].tolist(), sizes=False)
    photos = pd.unique(evaluation.photo_keys(frame))
    return {"photos": data.compute_fingerprint(list(photos), sizes=False),
            "rows": frame["distortion"].value_counts().sort_index().to_dict()}
