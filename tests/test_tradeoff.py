"""benchmarks/tradeoff.py: variants from several safety-benchmark folders in one table and plot."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tradeoff.py"


def write_runs(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True)
    with open(folder / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def row(mode: str, seed: int, violations: float, ret: float) -> dict:
    return {"mode": mode, "seed": seed, "cum_violations": violations, "eval_return": ret,
            "eval_cost": 1.0, "eval_interventions": 2.0}


def test_tables_and_plots_variants_against_none(tmp_path: Path) -> None:
    write_runs(tmp_path / "a", [row("none", 0, 1000, 20.0), row("shield", 0, 100, 5.0)])
    write_runs(tmp_path / "b", [row("shield", s, 50 + s, 18.0) for s in range(3)])
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), f"none={tmp_path / 'a'}:none",
         f"shield default={tmp_path / 'a'}:shield", f"shield tuned={tmp_path / 'b'}:shield"],
        check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = (out / "tradeoff.md").read_text()
    assert "| 2 | shield default | 1 | 100 | 0.10x | 5.00 | 25 % |" in table
    assert "| 3 | shield tuned | 3 | 51 [" in table and "| 90 % |" in table
    assert "in the bar" not in table
    assert (out / "tradeoff.png").stat().st_size > 1000


def test_marks_the_variants_inside_the_bar(tmp_path: Path) -> None:
    """The bar: <= 1/5 of the reference's violations and >= 80 % of its return (IQMs)."""
    write_runs(tmp_path / "a", [row("none", 0, 1000, 20.0), row("shield", 0, 100, 5.0),
                                row("penalty", 0, 300, 19.0), row("barrier", 0, 200, 16.0)])
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--bar-reference", "none",
         f"none={tmp_path / 'a'}:none", f"timid={tmp_path / 'a'}:shield",
         f"leaky={tmp_path / 'a'}:penalty", f"good={tmp_path / 'a'}:barrier"],
        check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = (out / "tradeoff.md").read_text()
    assert "at most 200 cumulative training violations and at least 16.00" in table
    inside = {line.split(" | ")[1]: line.rstrip(" |").rsplit(" | ", 1)[1]
              for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()}
    assert inside == {"none": "no", "timid": "no", "leaky": "no", "good": "yes"}
    with open(out / "tradeoff.csv", newline="") as f:
        assert [r["in_bar"] for r in csv.DictReader(f)] == ["False", "False", "False", "True"]


def test_refuses_bad_entries(tmp_path: Path) -> None:
    write_runs(tmp_path / "a", [row("none", 0, 1000, 20.0)])
    for entry, message in ((f"x={tmp_path / 'a'}:shield", "no runs of mode"),
                           (f"x={tmp_path / 'missing'}:none", "does not exist"),
                           ("no-equals-sign", "LABEL=FOLDER:MODE")):
        done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "o"), entry],
                              check=False, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and message in done.stderr, (entry, done.stderr)


def test_refuses_a_bar_reference_that_is_no_label(tmp_path: Path) -> None:
    write_runs(tmp_path / "a", [row("none", 0, 1000, 20.0)])
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "o"),
                           "--bar-reference", "plain", f"none={tmp_path / 'a'}:none"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "is not one of the labels" in done.stderr, done.stderr
