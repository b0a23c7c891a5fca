"""Violation rates before and after the safety model's readiness gate, from a safety-benchmark run.

    python benchmarks/violation_rates.py benchmarks/results/safety_pixelhazard

``safety_benchmark.py`` records, every 200 env steps, the cumulative violations and whether the
co-trained safety model passed its readiness gate (``LatentSafetyModel.ready``; every mode trains
one, only the shield modes act on it). This splits each run at the first step the gate was open:
violations per 1000 env steps before and after, averaged over seeds. The "after" rate is the
shield's steady-state effect; the "before" part is what no shield can prevent (warm-up and
learning the model). Writes ``<dir>/violation_rates.md`` and ``<dir>/violation_rates.csv``.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import tyro
from _report import write_csv, write_markdown


def split_rates(curve: list[tuple[int, float, bool]]) -> dict[str, float]:
    """Rates per 1000 env steps before/after the first ready point of one run's curve."""
    steps = np.array([c[0] for c in curve], float)
    cum = np.array([c[1] for c in curve], float)
    ready = np.array([c[2] for c in curve], bool)
    end_step, end_cum = steps[-1], cum[-1]
    if not ready.any():
        return {"ready_step": np.nan, "before": 1000 * end_cum / end_step, "after": np.nan,
                "after_violations": np.nan}
    i = int(np.argmax(ready))
    before = 1000 * cum[i] / steps[i]
    span = end_step - steps[i]
    after = 1000 * (end_cum - cum[i]) / span if span > 0 else np.nan
    return {"ready_step": steps[i], "before": before, "after": after,
            "after_violations": end_cum - cum[i]}


def main(results: Path) -> None:
    curves: dict[tuple[str, str], list[tuple[int, float, bool]]] = defaultdict(list)
    with open(results / "curves.csv", newline="") as f:
        for row in csv.DictReader(f):
            curves[(row["mode"], row["seed"])].append(
                (int(row["env_steps"]), float(row["cum_violations"]), float(row["barrier_ready"]) > 0))
    per_run = [{"mode": mode, "seed": seed, **split_rates(curve)}
               for (mode, seed), curve in curves.items()]
    modes = list(dict.fromkeys(r["mode"] for r in per_run))
    base = np.nanmean([r["after"] for r in per_run if r["mode"] == "none"]) if "none" in modes else np.nan
    lines = [f"# violation rates around the readiness gate ({results})", "",
             ("| mode | gate open at env step | violations / 1000 env steps before | after | "
              "after, ratio vs none |"), "|---|---|---|---|---|"]
    for mode in modes:
        rs = [r for r in per_run if r["mode"] == mode]
        ready = [r["ready_step"] for r in rs]
        after = np.array([r["after"] for r in rs], float)
        lines.append(
            f"| {mode} | {', '.join('never' if np.isnan(s) else f'{s:.0f}' for s in ready)} | "
            f"{np.mean([r['before'] for r in rs]):.0f} | "
            f"{np.nanmean(after):.0f} ± {np.nanstd(after):.0f} | "
            f"{np.nanmean(after) / base:.2f} |"
        )
    write_csv(results / "violation_rates.csv", per_run, dated=False)
    write_markdown(results / "violation_rates.md", lines)


if __name__ == "__main__":
    main(tyro.cli(Path, description=__doc__))
