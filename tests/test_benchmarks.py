"""Every benchmark script imports and parses its command line: the scripts are run by hand on
the real data, so a renamed function they import would otherwise surface only then."""
from __future__ import annotations

import importlib
import sys

import pytest

from common import workspace

SCRIPTS = sorted(path.stem for path in (workspace.project_root() / "benchmarks").glob("*.py")
                 if path.stem not in ("__init__", "real_data", "at_commit"))  # helpers


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_imports_and_answers_help(script, monkeypatch, capsys):
    module = importlib.import_module(f"benchmarks.{script}")
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{script}.py", "--help"])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code == 0
    assert "usage:" in capsys.readouterr().out
