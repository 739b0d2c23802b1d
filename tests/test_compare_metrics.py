"""benchmarks/compare_metrics.py: the refactor check lists exactly the numbers that differ."""
from __future__ import annotations

import json

from benchmarks import compare_metrics

RUN = {"top1": 1.0, "history": [{"epoch": 0, "loss": 25.5}, {"epoch": 1, "loss": 18.8}],
       "by_distortion": {"sunny": 0.79}, "pretrained": True,
       "provenance": {"git_commit": "abc", "wall_time_s": 12.0}, "checkpoint": "a.pt"}


def test_equal_runs_pass_and_provenance_is_ignored(tmp_path, capsys):
    other = {**RUN, "provenance": {"git_commit": "def", "wall_time_s": 99.0}, "checkpoint": "b.pt"}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, run in zip(paths, (RUN, other)):
        path.write_text(json.dumps(run))
    assert compare_metrics.main([str(p) for p in paths]) == 0
    # top1, two epochs and two losses, sunny: 6 numbers (the boolean is not one)
    assert "6 numbers compared; 0 differ" in capsys.readouterr().out


def test_a_changed_number_and_a_missing_key_are_listed():
    changed = json.loads(json.dumps(RUN))
    changed["history"][1]["loss"] = 18.8 + 1e-12
    del changed["by_distortion"]["sunny"]
    numbers, differ = compare_metrics.differences(RUN, changed)
    assert numbers == 6
    assert differ == [("by_distortion.sunny", 0.79, None),
                      ("history.1.loss", 18.8, changed["history"][1]["loss"])]
