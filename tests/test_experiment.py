"""common.experiment and the Task A/B recipes on top of it: seeded runs repeat exactly, a recipe
interrupted anywhere (in `evaluate`, in the replay, by SIGTERM) resumes to the uninterrupted
result bit for bit, and train never meets evaluated data."""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common import (cache, config, metrics, models, parameters, task_a, task_b, train,
                    transforms)
from common.experiment import ExperimentConfig, TaskSettings, make_loader
from common.resume import ResumeMismatchError
from common.train import TrainingInterrupted
from conftest import Interrupt, sigterm_when_started

pytestmark = pytest.mark.long  # conftest hands long files out first

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _resolve(section: type[TaskSettings], folder: Path, data_dir: Path,
             **overrides) -> ExperimentConfig:
    """The tiny CPU configuration of a notebook (its settings `section`), writing under `folder`.

    Resolving also seeds every generator, so it must come first in each run, as in a notebook.
    """
    params = {"data_dir": str(data_dir), "output_dir": str(folder / "run"),
              "weights_dir": str(folder / "weights"), "quick": True, "epochs": 1,
              "image_size": 32, "seed": 0, "pretrained": False, "device": "cpu", **overrides}
    return ExperimentConfig.resolve(section, **params)


@dataclasses.dataclass
class Outcome:
    """Everything a recipe run produced that must repeat exactly."""

    cfg: ExperimentConfig
    net: torch.nn.Module
    task_data: object
    history: list[dict]
    state: dict[str, torch.Tensor]
    threshold: float | None = None
    eval_metrics: dict | None = None


@dataclasses.dataclass
class Plan:
    """Where a recipe run is interrupted: the `at`-th loss computation, `evaluate` call or
    loader batch (the replay of a resumed run counts too). `sleep` slows every step and
    `started` is touched at the second one, for a SIGTERM from outside."""

    loss: Interrupt | None = None
    evaluate: Interrupt | None = None
    batch: Interrupt | None = None
    sleep: float = 0.0
    started: Path | None = None
    losses: int = 0


def _interruptible_fit(plan: Plan):
    """`train.fit` with the recipe's callables wrapped to follow `plan`: monkeypatched into the
    recipe module, so the recipe runs exactly as in a notebook until the interruption."""

    def batches(loader):
        for batch in loader:
            plan.batch.tick()
            yield batch

    def fit(model, *, make_loader, compute_loss, evaluate, **kwargs):
        def loss(trained, batch):
            plan.losses += 1
            if plan.loss:
                plan.loss.tick()
            if plan.started and plan.losses == 2:
                plan.started.touch()
            time.sleep(plan.sleep)
            return compute_loss(trained, batch)

        def dev_metrics(trained):
            if plan.evaluate:
                plan.evaluate.tick()
            return evaluate(trained)

        # Only when asked: a plain generator instead of the DataLoader changes how tqdm draws
        # the shuffling order, so it would change the run.
        loaders = (lambda epoch: batches(make_loader(epoch))) if plan.batch else make_loader
        return train.fit(model, make_loader=loaders, compute_loss=loss, evaluate=dev_metrics,
                         **kwargs)

    return fit


def _train_task_a(folder: Path, data_dir: Path, **overrides) -> Outcome:
    """The notebook-01 recipe: prepare, build, train, then evaluate on dev and eval."""
    cfg = _resolve(task_a.Settings, folder, data_dir, **{"recipe": "parameters", **overrides})
    task_data = task_a.prepare_data(cfg)
    net = task_a.create_classifier(cfg)
    criterion = task_a.create_loss("focal", task_data.splits.train["label"].to_numpy(),
                                   "weighted_sampler")
    result = task_a.train_classifier(net, task_data, cfg, criterion, "task_a_test")
    threshold, _, eval_metrics, _ = task_a.evaluate_model(net, task_data, cfg)
    return Outcome(cfg, net, task_data, result.history, net.state_dict(), threshold,
                   eval_metrics)


def _train_task_b(folder: Path, data_dir: Path, **overrides) -> Outcome:
    """The notebook-02 ArcFace recipe with the `embedding` model kind."""
    cfg = _resolve(task_b.ArcFaceSettings, folder, data_dir, **overrides)
    task_data = task_b.prepare_data(cfg)
    embedder = task_b.create_embedder("embedding", cfg)
    net = task_b.EmbeddingClassifier(embedder, len(task_data.identity_index),
                                     embedder.embedding_dim)
    result = task_b.train_arcface(net, task_data, cfg, "task_b_test")
    return Outcome(cfg, net, task_data, result.history, net.state_dict())


def _train_siamese(folder: Path, data_dir: Path, **overrides) -> Outcome:
    """The notebook-03 recipe with hard negatives: from epoch 2 on, the loader embeds the
    train images with the model of that epoch's start."""
    cfg = _resolve(task_b.SiameseSettings, folder, data_dir, **{"epochs": 2, **overrides})
    task_data = task_b.prepare_data(cfg)
    net = models.create_model("siamese", backbone_name="resnet10t", pretrained=False)
    result = task_b.train_pairs(net, task_data, cfg, "siamese_test", epochs=cfg.epochs,
                                lr=cfg.lr, pairs_per_epoch=128, hard_negatives=True)
    return Outcome(cfg, net, task_data, result.history, net.state_dict())


# Each recipe's module (whose `fit` is wrapped), its run, and settings that keep it short.
RECIPES = {"task_a": (task_a, _train_task_a, {}),
           "arcface": (task_b, _train_task_b, {"dev_fraction": 0.5}),
           "siamese": (task_b, _train_siamese, {})}


def run_recipe(name: str, folder: Path, data_dir: Path, plan: Plan, **overrides) -> Outcome:
    """Recipe `name` (a key of RECIPES) with its `fit` interrupted as `plan` says."""
    module, recipe, settings = RECIPES[name]
    real = module.fit
    module.fit = _interruptible_fit(plan)
    try:
        return recipe(folder, data_dir, **{**settings, **overrides})
    finally:
        module.fit = real


def _assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


@pytest.fixture(scope="module")
def references(tmp_path_factory, sample_root):
    """recipe name -> (its uninterrupted seed-0 run, loss computations per epoch), each run
    once on first use and shared by the determinism and resume tests."""
    cache = {}

    def reference(name: str) -> tuple[Outcome, int]:
        if name not in cache:
            plan = Plan()
            outcome = run_recipe(name, tmp_path_factory.mktemp(name), sample_root, plan)
            cache[name] = outcome, plan.losses // len(outcome.history)
        return cache[name]

    return reference


@pytest.fixture(scope="module")
def task_a_reference(references) -> Outcome:
    """The uninterrupted seed-0 Task A run."""
    return references("task_a")[0]


# --- determinism ---------------------------------------------------------------------------

def test_task_a_same_seed_repeats_history_weights_and_metrics(task_a_reference, tmp_path,
                                                                sample_root):
    again = _train_task_a(tmp_path, sample_root)
    assert again.history == task_a_reference.history
    _assert_same_weights(again.state, task_a_reference.state)
    assert again.threshold == task_a_reference.threshold
    assert again.eval_metrics == task_a_reference.eval_metrics


def test_task_a_other_seed_changes_history(task_a_reference, tmp_path, sample_root):
    other = _train_task_a(tmp_path, sample_root, seed=1)
    assert other.history != task_a_reference.history
    assert other.history[0]["train_loss"] != task_a_reference.history[0]["train_loss"]


def test_task_b_arcface_same_seed_repeats(references, tmp_path, sample_root):
    # RECIPES runs it with half the train identities in dev: half the steps, same code path.
    first = references("arcface")[0]
    second = _train_task_b(tmp_path, sample_root, **RECIPES["arcface"][2])
    assert first.history == second.history
    assert np.isfinite(first.history[0]["train_loss"])
    _assert_same_weights(first.state, second.state)


@pytest.fixture
def augmented_copies(sample_root) -> cache.ImageArrayDataset:
    """Sixteen copies of one face with a train transform that always distorts: any difference
    between two items is augmentation, nothing else."""
    path = sorted((sample_root / "Task_A" / "train" / "male").glob("*.jpg"))[0]
    images = np.repeat(cache.load_resized(path, 32)[None], 16, axis=0)
    transform = transforms.create_train_transform(32, IMAGENET_MEAN, IMAGENET_STD,
                                                  distortion_p=1.0)
    return cache.ImageArrayDataset(images, np.zeros(16, dtype=np.int64), transform)


def _batches(dataset, num_workers: int, epoch: int = 0) -> list[torch.Tensor]:
    loader = make_loader(dataset, 4, seed=0, epoch=epoch, num_workers=num_workers)
    return [images for images, _ in loader]


def test_workers_augment_differently_but_repeat_across_runs(augmented_copies):
    first = _batches(augmented_copies, num_workers=2)
    # Batches 0 and 1 come from workers 0 and 1; had the workers kept the parent's copy of the
    # albumentations generator they would have augmented the identical images identically.
    assert not torch.equal(first[0], first[1])
    for a, b in zip(first, _batches(augmented_copies, num_workers=2)):
        assert torch.equal(a, b)


def test_main_process_loader_repeats_per_epoch(augmented_copies):
    first = _batches(augmented_copies, num_workers=0)
    assert not torch.equal(first[0], first[1])
    for a, b in zip(first, _batches(augmented_copies, num_workers=0)):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], _batches(augmented_copies, num_workers=0, epoch=1)[0])


# --- resume at the recipe level ------------------------------------------------------------

@pytest.fixture(params=sorted(RECIPES))
def recipe_reference(request, references) -> tuple[str, Outcome, int]:
    """(recipe, its uninterrupted run, loss computations per epoch)."""
    outcome, steps = references(request.param)
    assert steps >= 4, "the sample must give several steps per epoch to interrupt mid-epoch"
    return request.param, outcome, steps


def _assert_same_run(resumed: Outcome, reference: Outcome) -> None:
    assert resumed.history == reference.history
    _assert_same_weights(resumed.state, reference.state)
    assert resumed.eval_metrics == reference.eval_metrics


def test_recipe_interrupted_in_the_replay_and_in_evaluate_resumes_to_the_same_run(
        recipe_reference, tmp_path, sample_root):
    name, reference, steps = recipe_reference
    last, done = len(reference.history), max(2, steps // 2)  # the middle of the last epoch
    with pytest.raises(TrainingInterrupted, match=f"after epoch {last}, step {done}"):
        run_recipe(name, tmp_path, sample_root, Plan(loss=Interrupt((last - 1) * steps + done + 1)))
    # A re-run writes a new run folder but finds the resume state in the shared weights folder;
    # stopped again while it replays the epoch's first `done` batches, it keeps the same point.
    shutil.copytree(tmp_path / "weights", tmp_path / "second" / "weights")
    with pytest.raises(TrainingInterrupted, match=f"after epoch {last}, step {done}"):
        run_recipe(name, tmp_path / "second", sample_root, Plan(batch=Interrupt(2)), resume=True)
    # Stopped in the evaluation of that epoch, its weights are fully trained: the state must say
    # so (not "step 0", which would train the epoch twice).
    with pytest.raises(TrainingInterrupted, match=f"after epoch {last}, step {steps}"):
        run_recipe(name, tmp_path / "second", sample_root, Plan(evaluate=Interrupt(1)),
                   resume=True)
    resumed = run_recipe(name, tmp_path / "second", sample_root, Plan(), resume=True)
    _assert_same_run(resumed, reference)


# A real SIGTERM from another process, for the recipe with the most state to get right (the
# Siamese one with hard negatives: its loader embeds with the epoch's starting weights). Every
# recipe resumes from a mid-epoch interruption above, and tests/test_train.py stops a training
# process by SIGTERM: this is where the two meet.
@pytest.mark.parametrize("recipe_reference", ["siamese"], indirect=True)
def test_recipe_stopped_by_sigterm_resumes_to_the_same_run(recipe_reference, tmp_path,
                                                           sample_root):
    name, reference, _ = recipe_reference
    started = tmp_path / "started"  # touched at step 2; slow steps leave seconds to signal
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              "from pathlib import Path; import test_experiment as t; "
              f"t.run_recipe({name!r}, Path({str(tmp_path)!r}), Path({str(sample_root)!r}), "
              f"t.Plan(sleep=1.0, started=Path({str(started)!r})))")
    sigterm_when_started(script, started, Path(__file__).parents[1])
    _assert_same_run(run_recipe(name, tmp_path, sample_root, Plan(), resume=True), reference)


def test_unsafe_run_name_is_refused_when_the_config_resolves(tmp_path, sample_root):
    with pytest.raises(ValueError, match=r"run_name '\.\./elsewhere' is not allowed"):
        _resolve(task_a.Settings, tmp_path, sample_root, run_name="../elsewhere")
    assert not (tmp_path / "run").exists()


def test_resume_after_a_parameter_change_names_it(tmp_path, sample_root):
    with pytest.raises(TrainingInterrupted):
        run_recipe("task_a", tmp_path, sample_root, Plan(loss=Interrupt(2)))
    with pytest.raises(ResumeMismatchError, match=r"config\.lr: saved 0\.001, now 0\.002"):
        run_recipe("task_a", tmp_path, sample_root, Plan(), resume=True, lr=0.002)



def test_resume_data_fingerprint_names_photos_and_copies(sample_root):
    """A Task B table's data fingerprint: the same for its rows in another order or under another
    root; another when a photo or a distorted copy is missing."""
    from common import data
    from common.experiment import _data_fingerprint

    table = data.read_task_b(sample_root, "train")
    moved = table.assign(**{column: table[column].str.replace(str(sample_root), "/elsewhere",
                                                              regex=False)
                            for column in ("path", "source")})
    same = _data_fingerprint(table)
    assert _data_fingerprint(table.sample(frac=1, random_state=0)) == same
    assert _data_fingerprint(moved) == same
    clean = table.index[table["distortion"] == "clean"]
    without_photo = table[~table["source"].isin({table.loc[clean[0], "path"]})]
    assert _data_fingerprint(without_photo)["photos"] != same["photos"]
    copy = table.index[table["distortion"] == "foggy"][0]
    assert _data_fingerprint(table.drop(copy)) != same
    assert same["rows"]["clean"] == len(clean)

# --- dev-only selection ---------------------------------------------------------------------

def _dev_clean(outcome: Outcome) -> tuple[np.ndarray, np.ndarray]:
    """Labels and P(female) of the dev split's clean rows."""
    splits, images = outcome.task_data.splits, outcome.task_data.images
    clean = (splits.dev["distortion"] == "clean").to_numpy()
    probs = task_a.predict_probs(outcome.net, images["dev"][clean], outcome.cfg.image_size)
    return splits.dev["label"].to_numpy()[clean], probs


def test_threshold_and_selection_use_dev_only(task_a_reference):
    labels, probs = _dev_clean(task_a_reference)
    threshold = metrics.choose_threshold(labels, probs)
    assert task_a_reference.threshold == threshold
    # The selection metric in the history is the dev metric of the selected (here: only) epoch.
    dev_f1 = metrics.compute_classification_metrics(labels, probs, threshold,
                                                    class_names=task_a.CLASS_NAMES)["f1_macro"]
    assert task_a_reference.history[0]["dev_f1_macro"] == pytest.approx(dev_f1, abs=1e-12)
    # Scrambling the evaluated split's labels and images cannot move the threshold.
    data = task_a_reference.task_data
    scrambled_eval = data.splits.eval.assign(label=1 - data.splits.eval["label"])
    scrambled = dataclasses.replace(
        data, splits=dataclasses.replace(data.splits, eval=scrambled_eval),
        images={**data.images, "eval": data.images["eval"][::-1].copy()})
    moved, _, _, _ = task_a.evaluate_model(task_a_reference.net, scrambled, task_a_reference.cfg)
    assert moved == threshold


@pytest.mark.parametrize("section", [task_a.Settings, task_b.ArcFaceSettings,
                                     task_b.SiameseSettings])
def test_each_section_declares_exactly_its_notebooks_task_parameters(section, tmp_path,
                                                                     sample_root):
    cfg = _resolve(section, tmp_path, sample_root)
    shared = {f.name for f in dataclasses.fields(ExperimentConfig)}
    assert set(dataclasses.asdict(cfg.task)) == (set(parameters.read_defaults(section.notebook))
                                                 - shared - {"output_dir", "work_root"})

    missing = dataclasses.make_dataclass(
        "Missing", [(f.name, f.type) for f in dataclasses.fields(section)[1:]],
        bases=(TaskSettings,), frozen=True,
        namespace={"notebook": section.notebook, "backbones": section.backbones,
                   "epochs": section.epochs})
    with pytest.raises(TypeError, match=f"must declare exactly the task parameters of "
                                        f"{section.notebook}: missing"):
        _resolve(missing, tmp_path, sample_root)


def test_a_model_kind_with_its_own_backbone_wins_over_the_profile(tmp_path, sample_root):
    cfg = _resolve(task_b.ArcFaceSettings, tmp_path, sample_root, model="efficientfr")
    assert (cfg.backbone, cfg.sources["backbone"]) == ("efficientfr", "recipe model efficientfr")
    with pytest.raises(ValueError, match="brings its own backbone 'efficientfr'; leave backbone"):
        _resolve(task_b.ArcFaceSettings, tmp_path, sample_root, model="efficientfr",
                 backbone="resnet10t")


def test_profile_determinism_and_processes_follow_the_device(tmp_path, sample_root):
    # `-p device cpu` on a GPU machine gets the CPU profile.
    assert config.resolve_profile("auto", torch.device("cuda")).name == "gpu"
    assert config.resolve_profile("auto", torch.device("cpu")).name == "cpu"
    cfg = _resolve(task_a.Settings, tmp_path / "auto", sample_root)
    assert cfg.to_dict()["deterministic"] is True and cfg.sources["deterministic"] == "device cpu"
    assert torch.are_deterministic_algorithms_enabled()
    # deterministic kernels, but new tensors are not NaN-filled first (that only costs time)
    assert not torch.isnan(torch.empty(1 << 16)).all()
    try:
        fast = _resolve(task_a.Settings, tmp_path / "fast", sample_root, deterministic=False)
        assert fast.to_dict()["deterministic"] is False
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        config.seed_everything(0)
    with pytest.raises(ValueError, match="gradient_accumulation=0"):
        _resolve(task_a.Settings, tmp_path / "zero", sample_root, gradient_accumulation=0)
    # num_processes 0: one process per visible GPU, one on CPU.
    assert cfg.num_processes == 1 and cfg.sources["num_processes"] == "device cpu"
    two = _resolve(task_b.SiameseSettings, tmp_path / "two", sample_root, num_processes=2)
    assert two.num_processes == 2 and two.sources["num_processes"] == "parameter"
    with pytest.raises(ValueError, match="num_processes=-1"):
        _resolve(task_a.Settings, tmp_path / "negative", sample_root, num_processes=-1)


def test_loader_workers_are_the_profiles_at_most_the_cpus_each_process_gets(tmp_path, sample_root,
                                                                          monkeypatch):
    def workers(cpus: int, **overrides) -> tuple[int, str]:
        monkeypatch.setattr(config, "cpu_count", lambda: cpus)
        cfg = _resolve(task_b.ArcFaceSettings, tmp_path / f"{cpus}-{len(overrides)}", sample_root,
                       **{"quick": False, **overrides})
        return cfg.num_workers, cfg.sources["num_workers"]

    # the profiles' own counts where the CPUs allow them (2 on the CPU profile, 4 on the GPU one)
    assert workers(2) == (2, "profile cpu")
    assert workers(4, profile="gpu") == (4, "profile gpu")
    # a Colab session (2 CPUs, one GPU) and Kaggle's (4 CPUs, two GPUs: two processes)
    assert workers(2, profile="gpu") == (2, "profile gpu, at most 2: 2 CPUs for 1 process")
    assert workers(4, profile="gpu", num_processes=2)[0] == 2
    assert workers(1) == (1, "profile cpu, at most 1: 1 CPU for 1 process")
    assert workers(1, quick=True)[0] == 0  # quick mode loads in the main process


def test_each_notebook_takes_its_own_profile_epochs_and_the_parameter_wins(tmp_path, sample_root):
    # On CPU notebook 02 trains ArcFace for fewer epochs than notebook 03 trains pairs (its
    # 30-minute budget, docs/results.md); quick mode and an explicit `epochs` override both.
    def epochs(section, **overrides) -> tuple[int, str]:
        cfg = _resolve(section, tmp_path / f"{section.notebook}-{len(overrides)}", sample_root,
                       **{"quick": False, "epochs": 0, **overrides})
        return cfg.epochs, cfg.sources["epochs"]

    assert epochs(task_b.ArcFaceSettings) == (3, "profile cpu")
    assert epochs(task_b.SiameseSettings) == (6, "profile cpu")
    assert epochs(task_b.ArcFaceSettings, profile="gpu") == (30, "profile gpu")
    assert epochs(task_b.ArcFaceSettings, epochs=6)[0] == 6
    assert epochs(task_b.ArcFaceSettings, quick=True)[0] == 2


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_siamese_encoder_can_start_from_the_arcface_one_on_either_profile(profile, tmp_path,
                                                                           sample_root):
    # init_from=auto only loads notebook 02's checkpoint when the backbones match.
    arcface = _resolve(task_b.ArcFaceSettings, tmp_path / "02", sample_root, profile=profile)
    siamese = _resolve(task_b.SiameseSettings, tmp_path / "03", sample_root, profile=profile)
    assert siamese.backbone == arcface.backbone
    assert siamese.sources["backbone"] == arcface.sources["backbone"] == f"profile {profile}"
