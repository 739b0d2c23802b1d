"""Plumbing shared by the training notebooks: resolved config, seeded loaders, optimiser/scheduler
and the resume fingerprint (splits and their leakage guards are `common.splits`).

Task-specific code (task_a.py, task_b.py) builds on these so the notebooks stay a page of calls.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common import cache, config, data, discovery, runs, workspace
from common.splits import Splits

__all__ = ["ExperimentConfig", "make_loader", "create_optimizer", "create_scheduler",
           "training_files", "resume_fingerprint"]

# Quick mode (CI, tests): the sample is rendered at 112 px, and smaller inputs lose the cues.
QUICK = {"epochs": 2, "image_size": 112, "batch_size": 32, "num_workers": 0}
# Settings that say where a run reads and writes, or how it is resumed, not what it computes:
# left out of the resume fingerprint so a moved data folder or a new run folder can resume.
# Settings that change where a run reads and writes, or how fast, but no number it computes.
_LOCATION_SETTINGS = ("notebook", "data_dir", "run_dir", "output_dir", "weights_dir", "work_root",
                      "device", "resume", "image_cache")


@dataclass
class ExperimentConfig:
    """Every setting of a training notebook after defaults, profile and quick mode are applied.

    Built by `ExperimentConfig.resolve(...)` from the notebook's parameters; the raw parameters
    are kept in `params` for provenance.
    """

    notebook: str
    data_dir: Path
    run_dir: Path
    weights_dir: Path
    device: torch.device
    profile: config.Profile
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
    image_cache: str = "auto"
    params: dict = field(default_factory=dict)

    @classmethod
    def resolve(cls, notebook: str, backbone_defaults: dict[str, str],
                epoch_defaults: dict[str, int], **params: Any) -> "ExperimentConfig":
        """Apply the profile's defaults where a parameter is 0/"" and quick-mode caps last.

        Args:
            notebook: the notebook stem, used to name the run folder.
            backbone_defaults / epoch_defaults: per profile name ("cpu", "gpu").
            params: the notebook's parameters cell, as `**locals()` of it.
        """
        workspace.set_work_root(params.get("work_root", ""))
        if params.get("run_name"):  # refused before any work, not when the weights are saved
            runs.check_run_name(params["run_name"])
        device = config.resolve_device(params.get("device", "auto"))
        config.configure_threads(device)
        profile = config.resolve_profile(params.get("profile", "auto"))
        quick = bool(params.get("quick", False))
        cfg = cls(
            notebook=notebook,
            data_dir=discovery.resolve_data_dir(params.get("data_dir", ""),
                                                layout=params.get("data_format", "facecom")),
            run_dir=runs.create_run_dir(params.get("output_dir", ""), notebook),
            weights_dir=runs.resolve_weights_dir(params.get("weights_dir", "")),
            device=device,
            profile=profile,
            backbone=params.get("backbone") or backbone_defaults[profile.name],
            pretrained=params.get("pretrained", True),
            weights=params.get("weights", ""),
            epochs=int(params.get("epochs") or epoch_defaults[profile.name]),
            image_size=int(params.get("image_size") or profile.image_size),
            batch_size=int(params.get("batch_size") or profile.batch_size),
            lr=float(params.get("lr", 1e-3)),
            weight_decay=float(params.get("weight_decay", 1e-4)),
            seed=int(params.get("seed", 0)),
            quick=quick,
            resume=_resume_mode(params.get("resume", False)),
            dev_fraction=float(params.get("dev_fraction", 0.15)),
            holdout_fraction=float(params.get("holdout_fraction", 0.15)),
            num_workers=int(params.get("num_workers", profile.num_workers)),
            patience=params.get("patience", 3),
            allow_leakage=bool(params.get("allow_leakage", False)),
            image_cache=cache.check_image_cache(params.get("image_cache", "auto")),
            params=dict(params),
        )
        if quick:
            cfg.epochs = min(cfg.epochs, QUICK["epochs"])
            cfg.image_size = min(cfg.image_size, QUICK["image_size"])
            cfg.batch_size = min(cfg.batch_size, QUICK["batch_size"])
            cfg.num_workers = QUICK["num_workers"]
        config.seed_everything(cfg.seed)
        return cfg

    def summary(self) -> dict:
        """The resolved settings as JSON-able values (for metrics.json and model cards)."""
        values = asdict(self)
        values["profile"] = self.profile.name
        values["device"] = str(self.device)
        values.pop("params")
        return runs.to_jsonable(values)


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
    """What a training run is, for `train.fit` to refuse resuming another one: the resolved and
    raw settings (without where it reads and writes), the recipe's own arguments, and the
    fingerprints of the train and dev file lists."""
    settings = {key: value for key, value in cfg.summary().items()
                if key not in _LOCATION_SETTINGS}
    params = {key: value for key, value in cfg.params.items() if key not in _LOCATION_SETTINGS}
    return runs.to_jsonable({
        "config": settings, "parameters": params, "recipe": recipe,
        "data": {"train": data.compute_fingerprint(splits.train["path"].tolist()),
                 "dev": data.compute_fingerprint(splits.dev["path"].tolist())},
    })
