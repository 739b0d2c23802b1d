"""Execute the numbered notebooks headlessly with papermill: `python -m common.run_all`, which
is what run_all.sh runs.

Each notebook writes into `runs/<timestamp>/<notebook stem>/` (figures, metrics.json); the
executed notebook and its HTML export sit beside those folders, and `summary.md` collects every
metrics.json. A failing notebook stops the run with a non-zero exit and one message naming the
notebook, the cell and the error; the partially executed notebook is kept for inspection.
Each notebook receives only the parameters its `parameters` cell declares (`common.parameters`).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
import zmq
from jupyter_client.manager import KernelManager
from traitlets.config import Config

from common import parameters as notebook_parameters
from common import workspace
from common.discovery import DataNotFoundError, resolve_data_dir
from common.parameters import NOTEBOOKS, ParameterError

__all__ = ["NOTEBOOKS", "NotebookFailed", "run_notebooks", "write_summary", "main"]

# Notebooks that also read generic `<identity>/*` folders (parameter data_format).
IDENTITY_FOLDER_NOTEBOOKS = ("02_task_b_arcface", "03_task_b_siamese")
KERNEL = "facecom"
MIN_FREE_BYTES = 500 * 2**20
# summary.md's columns, those no notebook of the run reports left out: each network's own
# figures, then the decisions its card applies (the copy switch; the pair face rule, one
# person on two photos apart)
SUMMARY_KEYS = ("data", "accuracy", "f1_macro", "recall_female", "roc_auc", "top1", "top5",
                "top1_hard", "switch_top1", "switch_top1_hard", "verification_roc_auc",
                "pair_accuracy", "pair_accuracy_face_rule",
                "pair_accuracy_face_rule_same_identity", "final_score_accuracy", "n_problems",
                "pretrained")


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the error."""


def _new_run_root(output: str) -> Path:
    if output:
        root = Path(output).expanduser().resolve()
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"{root} already exists and is not empty; a run never "
                                  "overwrites a previous one. Choose another --output.")
        return root
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    runs_dir = workspace.runs_dir()
    root, suffix = runs_dir / stamp, 1
    while root.exists():
        root, suffix = runs_dir / f"{stamp}-{suffix}", suffix + 1
    return root


def _check_free_space(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise OSError(f"Only {free / 2**20:.0f} MiB free in {path}; a run needs at least "
                      f"{MIN_FREE_BYTES / 2**20:.0f} MiB. Free space or pass --output elsewhere.")


def _describe_failure(error: Exception, notebook: str, executed: Path) -> str:
    cell = getattr(error, "exec_count", None)
    ename = getattr(error, "ename", type(error).__name__)
    evalue = getattr(error, "evalue", str(error))
    where = f"cell [{cell}]" if cell is not None else "a cell"
    return (f"Notebook {notebook} failed in {where}: {ename}: {evalue}\n"
            f"The partially executed notebook is kept at {executed}")


def _kernel_config() -> Config:
    """CurveZMQ encryption between papermill and the kernel where jupyter_client offers it
    (8.10+, for kernels that declare it): ipykernel otherwise warns, once per notebook, that it
    runs over TCP in plain text. Older clients (a Kaggle or Colab image's) get no setting."""
    if "transport_encryption" in KernelManager.class_trait_names() and zmq.has("curve"):
        return Config({"KernelManager": {"transport_encryption": "auto"}})
    return Config()


def _export_html(executed: Path) -> None:
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--log-level",
                    "ERROR", str(executed)], check=False, capture_output=True)


def run_notebooks(parameters: dict, run_root: Path, only: tuple[str, ...] = NOTEBOOKS,
                  kernel: str = KERNEL, progress: bool = True,
                  sections: dict[str, dict] | None = None) -> list[Path]:
    """Run the notebooks in order into `run_root`; raise NotebookFailed at the first failure.

    Args:
        parameters: shared values, each given to the notebooks that declare it.
        sections: ``{notebook: values}`` for one notebook only (`common.parameters.route`).

    Raises:
        ParameterError: before anything runs, for a name no notebook declares or a shared name
            that means different things in two notebooks.
    """
    import papermill as pm

    routed = notebook_parameters.route(parameters, sections or {}, only)
    run_root = Path(run_root)
    run_root.mkdir(parents=True, exist_ok=True)  # papermill writes into it, and will not create it
    executed_paths, kernel_config = [], _kernel_config()
    for name in only:
        source = notebook_parameters.notebook_path(name)
        executed = run_root / f"{name}.ipynb"
        params = {**routed[name], "output_dir": str(run_root / name)}
        print(f"\n=== {name} ===", flush=True)
        try:
            pm.execute_notebook(str(source), str(executed), parameters=params, kernel_name=kernel,
                                cwd=str(source.parent), progress_bar=progress, log_output=False,
                                config=kernel_config)
        except Exception as error:  # papermill raises its own types and kernel errors alike
            if executed.exists():
                _export_html(executed)
            raise NotebookFailed(_describe_failure(error, name, executed)) from error
        _export_html(executed)
        executed_paths.append(executed)
    return executed_paths


def write_summary(run_root: Path, failure: str = "") -> Path:
    """`summary.md`: one row per notebook with its headline metrics.

    After a failure it lists the notebooks that finished, under the failure's first line, so a
    partial summary cannot be mistaken for a complete run.
    """
    lines = ["# Run summary", "", f"Run folder: `{run_root}`", ""]
    if failure:
        lines += [f"**Run stopped:** {failure.splitlines()[0]}", ""]
    reports = {path.parent.name: json.loads(path.read_text())
               for path in sorted(run_root.glob("*/metrics.json"))}
    keys = [key for key in SUMMARY_KEYS if any(key in metrics for metrics in reports.values())]
    header = ["notebook", *keys]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for notebook, metrics in reports.items():
        cells = [notebook]
        for key in keys:
            value = metrics.get(key, "")
            cells.append(f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    path = run_root / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__)
    parser.add_argument("--data-dir", default="", help="FACECOM root; default: Kaggle input or the "
                        "embedded sample; 'kaggle' downloads with the kaggle package")
    parser.add_argument("--full", action="store_true", help="full recipe instead of quick mode")
    parser.add_argument("--epochs", type=int, help="override every notebook's epochs")
    parser.add_argument("--seed", type=int, help="override the seed")
    parser.add_argument("--device", help="auto | cpu | cuda")
    parser.add_argument("-f", "--params-file", help="YAML of notebook parameters: shared keys, "
                        "plus a section per notebook (01_task_a_gender: {model: dual_se})")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="a notebook parameter (YAML value); "
                        "NOTEBOOK.NAME for one notebook only")
    parser.add_argument("--only", nargs="+", choices=NOTEBOOKS, help="run only these notebooks")
    parser.add_argument("--output", default="", help="run folder (default runs/<timestamp>)")
    parser.add_argument("--weights-dir", default="", help="checkpoint folder (default weights/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of run_all.sh; returns the process exit code."""
    args = _parse_args(argv)
    try:
        parameters, sections = (notebook_parameters.load_yaml(args.params_file)
                                if args.params_file else ({}, {}))
        overrides, override_sections = notebook_parameters.split_overrides(args.param)
    except ParameterError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    for name, section in override_sections.items():
        sections[name] = {**sections.get(name, {}), **section}
    if overrides.get("work_root") or parameters.get("work_root"):
        workspace.set_work_root(overrides.get("work_root") or parameters["work_root"])
    layout = overrides.get("data_format", parameters.get("data_format", "facecom"))
    only = tuple(args.only or (NOTEBOOKS if layout == "facecom" else IDENTITY_FOLDER_NOTEBOOKS))
    if layout != "facecom" and set(only) - set(IDENTITY_FOLDER_NOTEBOOKS):
        print(f"ERROR: data_format={layout} is read by {IDENTITY_FOLDER_NOTEBOOKS} only; "
              "drop --only or list those notebooks.", file=sys.stderr)
        return 2
    try:  # `-p data_dir X` is checked here too, not only inside the first notebook
        data_dir = resolve_data_dir(args.data_dir or overrides.get("data_dir")
                                    or parameters.get("data_dir", ""), layout=layout)
    except (DataNotFoundError, ValueError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    parameters.update({"data_dir": str(data_dir), "quick": not args.full})
    for key in ("epochs", "seed", "device"):
        if getattr(args, key) is not None:
            parameters[key] = getattr(args, key)
    if args.weights_dir:
        parameters["weights_dir"] = str(Path(args.weights_dir).resolve())
    parameters.update({**overrides, "data_dir": str(data_dir)})
    try:
        notebook_parameters.route(parameters, sections, only)
    except ParameterError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    try:
        run_root = _new_run_root(args.output)
        _check_free_space(run_root)
        (run_root / "parameters.yaml").write_text(yaml.safe_dump({**parameters, **sections},
                                                                 sort_keys=True))
        print(f"Run folder: {run_root}\nData: {data_dir}\nParameters: {parameters}"
              + "".join(f"\n  {name}: {values}" for name, values in sections.items()),
              flush=True)
        run_notebooks(parameters, run_root, only, sections=sections)
    except NotebookFailed as error:
        # Keep everything written so far: the notebooks that finished still get their summary.
        summary = write_summary(run_root, failure=str(error))
        print(f"\nERROR: {error}\nSummary of the notebooks that finished: {summary}",
              file=sys.stderr)
        return 1
    except OSError as error:
        print(f"\nERROR: {error}", file=sys.stderr)
        return 1
    summary = write_summary(run_root)
    print(f"\nDone. Summary: {summary}\n" + summary.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
