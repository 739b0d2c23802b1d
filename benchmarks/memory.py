"""Peak memory of a real training notebook run: how much RAM the default CPU recipe needs.

Runs `python -m common.run_all --data-dir <data> --full --only <notebook> -p epochs <n>` in a
subprocess (papermill kernel, DataLoader workers and all) into a temporary run and weights
folder, and reports
- the kernel's view: `getrusage(RUSAGE_CHILDREN).ru_maxrss`, the peak resident set of the
  largest single waited-for descendant (in practice the notebook kernel);
- the whole process tree: the largest sum of RSS over runner, kernel and loader workers,
  sampled every `--interval` seconds with psutil when it is installed (shared pages are
  counted once per process, so this is an upper bound).
Prints a markdown table and writes it to benchmarks/results/memory.md (or `--results`).

    python benchmarks/memory.py                                  # real train split, Task B, 1 epoch
    python benchmarks/memory.py ../shared/data/facecom --notebook 01_task_a_gender --epochs 1
    python benchmarks/memory.py data/sample --quick --results /tmp/memory.md   # dry run, ~1 min

It trains for real (minutes on a 2-core CPU), so do not run it beside another training run.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "facecom"
DEFAULT_RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "memory.md"
NOTEBOOKS = ("01_task_a_gender", "02_task_b_arcface", "03_task_b_siamese")
MIB = 2**20


def _tree_rss(process) -> int:
    """Summed RSS in bytes of `process` and its descendants (psutil), 0 once it has exited."""
    import psutil

    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def measure(command: list[str], interval: float, log_path: Path) -> dict:
    """Run `command`, sampling its process tree; returns peaks in MiB, wall time and exit code.

    The child's output goes to `log_path` (a papermill run prints a lot) so the table stays
    readable; the caller shows its tail on failure.
    """
    try:
        import psutil
    except ImportError:
        psutil = None
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT) + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    peak_tree = 0
    started = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
        watched = psutil.Process(child.pid) if psutil is not None else None
        while child.poll() is None:
            if watched is not None:
                peak_tree = max(peak_tree, _tree_rss(watched))
            time.sleep(interval)
    elapsed = time.perf_counter() - started
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return {"exit_code": child.returncode, "wall_time_s": elapsed,
            "peak_largest_process_mib": largest / MIB,
            "peak_tree_mib": peak_tree / MIB if watched is not None else None}


def _machine() -> str:
    try:
        import psutil

        ram = f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM"
    except ImportError:
        ram = "RAM unknown (psutil not installed)"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {ram}, load average {load} at the end"


def to_markdown(args: argparse.Namespace, command: list[str], result: dict, scratch: Path) -> str:
    """The result table plus what was measured, as written to the results file."""
    tree = result["peak_tree_mib"]
    lines = [
        f"# Peak memory of `{args.notebook}` ({'quick' if args.quick else 'full'} recipe)",
        "",
        f"Data: `{args.data_dir}`. Machine: {_machine()}.",
        "",
        "| notebook | epochs | wall time s | peak RSS, kernel MiB | peak RSS, process tree MiB |",
        "|---|---|---|---|---|",
        f"| {args.notebook} | {args.epochs} | {result['wall_time_s']:.0f} | "
        f"{result['peak_largest_process_mib']:.0f} | "
        f"{'n/a (no psutil)' if tree is None else f'{tree:.0f}'} |",
        "",
        "Kernel: `getrusage(RUSAGE_CHILDREN).ru_maxrss`, the largest single descendant. "
        "Process tree: summed RSS of runner, kernel and DataLoader workers sampled every "
        f"{args.interval} s (shared pages counted per process, so an upper bound).",
        "",
        "Command: `python " + " ".join(command[1:]).replace(str(PROJECT_ROOT) + "/", "")
        .replace(str(scratch), "<tmp>") + "`",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default=str(DEFAULT_DATA_DIR),
                        help="FACECOM root (default: ../shared/data/facecom)")
    parser.add_argument("--notebook", default="02_task_b_arcface", choices=NOTEBOOKS)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the measured run")
    parser.add_argument("--quick", action="store_true",
                        help="quick recipe (64 px) instead of --full: a dry run of this script")
    parser.add_argument("--interval", type=float, default=0.5, help="psutil sampling period, s")
    parser.add_argument("--results", default=str(DEFAULT_RESULTS), help="markdown file to write")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir).expanduser().resolve()
    if not (data_dir / "Task_B").is_dir() and not (data_dir / "Task_A").is_dir():
        parser.error(f"{data_dir} holds neither Task_A/ nor Task_B/; pass the FACECOM root.")
    with tempfile.TemporaryDirectory(prefix="facecom-memory-") as scratch:
        scratch = Path(scratch)
        command = [sys.executable, "-m", "common.run_all", "--data-dir", str(data_dir),
                   *([] if args.quick else ["--full"]), "--only", args.notebook,
                   "-p", "epochs", str(args.epochs), "--output", str(scratch / "run"),
                   "--weights-dir", str(scratch / "weights")]
        print("Running:", " ".join(command), flush=True)
        result = measure(command, args.interval, scratch / "runner.log")
        if result["exit_code"] != 0:
            tail = (scratch / "runner.log").read_text().splitlines()[-30:]
            print("\n".join(tail), file=sys.stderr)
            print(f"ERROR: the run exited with {result['exit_code']}; nothing written.",
                  file=sys.stderr)
            return result["exit_code"]
    table = to_markdown(args, command, result, scratch)
    print(table)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(table)
    print(f"Written to {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
