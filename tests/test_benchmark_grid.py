"""benchmarks/_grid.py (Ray grid, one result folder per run, restart skips finished runs) and
benchmarks/_aggregate.py (per-run safety metrics, rliable IQM and intervals)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _aggregate
import _grid
import _report


@pytest.fixture(autouse=True)
def _fewer_bootstrap_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_aggregate, "BOOTSTRAP_REPS", 300)  # the benchmark uses 5000


def _settings(payload: dict) -> dict:
    return {"x": payload["x"]}


def test_grid_runs_on_ray_writes_one_folder_per_run_and_skips_finished_runs(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    jobs = [(f"run-{x}", {"x": x}) for x in range(3)]

    def square(payload: dict) -> dict:
        return {"y": payload["x"] ** 2}

    seen: list[str] = []
    results = _grid.run_grid(jobs, square, tmp_path, _settings, parallel=2,
                             on_result=lambda name, *_: seen.append(name))
    assert results == {"run-0": {"y": 0}, "run-1": {"y": 1}, "run-2": {"y": 4}}
    assert sorted(seen) == ["run-0", "run-1", "run-2"]
    stored = json.loads((tmp_path / "runs" / "run-2" / "result.json").read_text())
    assert stored == {"name": "run-2", "settings": {"x": 2}, "result": {"y": 4}}
    assert not list(tmp_path.glob("runs/*/.result-*"))  # no temp files left behind

    # A restart after a "kill": finished runs are read back, only the missing one runs again.
    (tmp_path / "runs" / "run-1" / "result.json").unlink()
    (tmp_path / "runs" / "run-1" / ".result-abc.tmp").write_text("{half")  # a killed write

    def cube(payload: dict) -> dict:
        return {"y": payload["x"] ** 3}

    seen.clear()
    again = _grid.run_grid(jobs, cube, tmp_path, _settings, parallel=1,
                           on_result=lambda name, *_: seen.append(name))
    assert seen == ["run-1"]
    assert again == {"run-0": {"y": 0}, "run-1": {"y": 1}, "run-2": {"y": 4}}


def test_grid_with_everything_finished_needs_no_ray_and_refuses_other_settings(
        tmp_path: Path) -> None:
    _grid.write_result(tmp_path, "a", {"x": 1}, {"y": 1})

    def never(payload: dict) -> dict:
        raise AssertionError("a finished run ran again")

    assert _grid.run_grid([("a", {"x": 1})], never, tmp_path, _settings) == {"a": {"y": 1}}
    with pytest.raises(RuntimeError, match=r"other settings \(differs in \['x'\]\).*--out"):
        _grid.run_grid([("a", {"x": 2})], never, tmp_path, _settings)
    (tmp_path / "runs" / "a" / "result.json").write_text("{trunc")
    with pytest.raises(RuntimeError, match="unreadable"):
        _grid.run_grid([("a", {"x": 1})], never, tmp_path, _settings)
    with pytest.raises(ValueError, match="unique"):
        _grid.run_grid([("b", {"x": 1}), ("b", {"x": 2})], never, tmp_path, _settings)
    with pytest.raises(ValueError, match="plain folder"):
        _grid.result_path(tmp_path, "../escape")


def _curve(rates: list[float], every: int = 200, gate_from: int | None = None) -> list[list]:
    """A curve with the given violation rate (per env step) in each interval of ``every``."""
    cum, points = 0.0, []
    for i, rate in enumerate(rates, start=1):
        cum += rate * every
        points.append([i * every, cum, float(gate_from is not None and i >= gate_from), 0.0])
    return points


def test_rate_after_gate_and_steps_to_safe() -> None:
    curve = _curve([0.1] * 10 + [0.0] * 40, gate_from=11)  # 20 violations per interval, then 0
    assert _aggregate.rate_after_gate(curve) == pytest.approx(0.0)
    assert math.isnan(_aggregate.rate_after_gate(_curve([0.1] * 5)))  # the gate never opened
    leaky = _curve([0.1] * 10 + [0.01] * 40, gate_from=11)
    assert _aggregate.rate_after_gate(leaky) == pytest.approx(10.0)  # per 1000 env steps
    # Rolling window 2000 env steps = 10 intervals: the rate is <= 0.005 from the point whose
    # window holds no violating interval any more (step 4000) on.
    assert _aggregate.steps_to_safe(curve, 0.005, 2000) == (4000.0, True)
    assert _aggregate.steps_to_safe(leaky, 0.005, 2000) == (10_000.0, False)  # censored
    relapse = _curve([0.0] * 20 + [0.1] + [0.0] * 29)
    assert _aggregate.steps_to_safe(relapse, 0.005, 2000) == (6200.0, True)


def test_iqm_intervals_ratios_table_and_paired_comparison() -> None:
    iqm, lo, hi, n = _aggregate.iqm_with_ci([1.0, 2.0, 3.0, 4.0, 100.0, math.nan])
    assert n == 5
    assert iqm == pytest.approx(3.0)  # the middle three of five: an outlier does not move it
    assert lo <= iqm <= hi

    def run(violations: float, ret: float, seed: int) -> dict:
        return {"mode": "m", "seed": seed, "cum_violations": violations, "eval_return": ret,
                "eval_cost": 0.0, "train_wall_s": 1.0, "curve": _curve([0.0] * 20, gate_from=1),
                "episodes": [[500, ret], [1000, ret]]}

    groups = {"none": [run(1000 + s, 20.0, s) for s in range(5)],
              "shield": [run(100 + s, 18.0, s) for s in range(5)],
              "lagrangian": [run(500 + s, 2.0, s) for s in range(5)]}
    rows = _aggregate.summarise_groups(groups)
    shield = next(r for r in rows if r["group"] == "shield")
    assert shield["cum_violations_vs_none"] == pytest.approx(102 / 1002)
    assert shield["eval_return_vs_none"] == pytest.approx(0.9)
    table = "\n".join(_aggregate.markdown_table(rows))
    assert "| shield | 5 | 102 [" in table and "90 %" in table
    paired = "\n".join(_aggregate.paired_lines(groups, "lagrangian"))
    assert "| shield | 1.00 [1.00, 1.00] (better) |" in paired
    assert "| none | 0.00 [0.00, 0.00] (worse) |" in paired


def test_plots_write_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    groups = {m: [{"curve": _curve(list(rng.uniform(0, 0.05, 20)), gate_from=5),
                   "episodes": [[500 * (k + 1), float(rng.uniform(0, 20))] for k in range(8)],
                   "cum_violations": 10.0, "eval_return": 1.0, "eval_cost": 0.0,
                   "train_wall_s": 1.0} for _ in range(3)] for m in ("none", "shield")}
    _aggregate.plot_curves(groups, tmp_path / "curves.png", "t")
    _aggregate.plot_tradeoff(_aggregate.summarise_groups(groups), tmp_path / "tradeoff.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000


def test_write_csv_keeps_settings_added_after_the_first_rows(tmp_path):
    """A grid resumed after a setting was added holds rows with and without it."""
    import csv

    path = tmp_path / "runs.csv"
    _report.write_csv(path, [{"mode": "shield", "seed": 0}, {"mode": "shield", "seed": 1,
                                                             "keep_proposal": True}])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["date", "mode", "seed", "keep_proposal"]
    assert rows[0]["keep_proposal"] == "" and rows[1]["keep_proposal"] == "True"

