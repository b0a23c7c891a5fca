"""benchmarks/pool_runs.py: pooling runs of several safety-benchmark folders by group."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pool_runs.py"
FIELDS = ["date", "mode", "seed", "cum_violations", "eval_return", "eval_cost"]


def write_runs(folder: Path, rows: list[tuple[str, int, float]]) -> None:
    folder.mkdir(parents=True)
    with (folder / "runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        for mode, seed, violations in rows:
            writer.writerow({"date": "2026-11-27", "mode": mode, "seed": seed,
                             "cum_violations": violations, "eval_return": 0.5, "eval_cost": 1.0})


def pool(*sources: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *sources],
                          check=False, capture_output=True, text=True)


def test_pools_seeds_from_two_folders_and_rates_against_none(tmp_path):
    first, later = tmp_path / "first", tmp_path / "later"
    write_runs(first, [("none", 0, 100), ("none", 1, 300), ("shield", 0, 10), ("shield", 1, 30)])
    write_runs(later, [("none", 2, 200), ("shield", 2, 20)])
    done = pool(f"none={first}:none", f"none={later}:none", f"guarded={first}:shield",
                f"guarded={later}:shield", out=tmp_path / "out")
    assert done.returncode == 0, done.stderr
    with (tmp_path / "out" / "pooled.csv").open() as f:
        rows = {r["group"]: r for r in csv.DictReader(f)}
    assert rows["none"]["seeds"] == "0 1 2" and float(rows["none"]["violations_mean"]) == 200
    assert float(rows["guarded"]["violations_mean"]) == 20
    assert float(rows["guarded"]["ratio_vs_none"]) == 0.1
    assert "| guarded | 3 (0, 1, 2) | 20 ± 8 | 0.10 |" in (tmp_path / "out" / "pooled.md").read_text()


def test_refuses_a_seed_twice_and_bad_entries(tmp_path):
    first = tmp_path / "first"
    write_runs(first, [("none", 0, 100)])
    twice = pool(f"none={first}:none", f"none={first}:none", out=tmp_path / "out")
    assert twice.returncode != 0 and "seed(s) ['0'] twice" in twice.stderr
    missing = pool(f"none={first}:shield", out=tmp_path / "out")
    assert missing.returncode != 0 and "no runs of mode 'shield'" in missing.stderr
    malformed = pool("none-without-folder", out=tmp_path / "out")
    assert malformed.returncode != 0 and "GROUP=FOLDER:MODE" in malformed.stderr


def test_pairs_groups_seed_by_seed_with_a_sign_test(tmp_path):
    runs = tmp_path / "runs"
    # "a" is lower than "b" in 5 of 6 seeds; one tie is dropped from the sign test
    write_runs(runs, [*(("a", s, 10 + s) for s in range(7)),
                      *(("b", s, 20 + s) for s in range(5)), ("b", 5, 10), ("b", 6, 16)])
    done = pool(f"a={runs}:a", f"b={runs}:b", out=tmp_path / "out")
    assert done.returncode == 0, done.stderr
    with (tmp_path / "out" / "paired.csv").open() as f:
        (pair,) = list(csv.DictReader(f))
    assert (pair["first"], pair["second"], pair["shared_seeds"]) == ("a", "b", "7")
    assert (pair["first_lower"], pair["second_lower"]) == ("5", "1")
    assert float(pair["sign_test_p"]) == 14 / 64  # 2 * P(X <= 1), X ~ Bin(6, 1/2)
    assert float(pair["mean_difference"]) == (5 * -10 + 5 + 0) / 7
    assert "| a vs b | 7 | 5 (second in 1) |" in (tmp_path / "out" / "pooled.md").read_text()


def test_keeps_only_the_seeds_named_after_at(tmp_path):
    runs = tmp_path / "runs"
    write_runs(runs, [("none", 0, 100), ("none", 1, 300), ("none", 2, 500), ("shield", 1, 30)])
    done = pool(f"none={runs}:none@0,1", out=tmp_path / "out")
    assert done.returncode == 0, done.stderr
    with (tmp_path / "out" / "pooled.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["seeds"] == "0 1" and float(row["violations_mean"]) == 200
    missing = pool(f"shield={runs}:shield@1,2", out=tmp_path / "out2")
    assert missing.returncode != 0 and "seed(s) [2]" in missing.stderr
    bad = pool(f"none={runs}:none@x", out=tmp_path / "out3")
    assert bad.returncode != 0 and "comma-separated seeds" in bad.stderr
