"""Return / violation trade-off of variants from several safety-benchmark folders, in one plot.

    python benchmarks/tradeoff.py --out benchmarks/results/run_task_variants \\
        "none=benchmarks/results/run_task_variants/eps2_closest_p0.1:none" \\
        "shield eps 2, closest, penalty 0.1=benchmarks/results/run_task_variants/eps2_closest_p0.1:shield"

Each argument is ``LABEL=FOLDER:MODE``: the rows of ``FOLDER/runs.csv`` (written by
``safety_benchmark.py``) whose mode is ``MODE``. Per label: the IQM and 95 % stratified-bootstrap
interval (rliable) of cumulative training violations and final evaluation return (a single run
is shown as a point without an interval), the ratio of each to the label ``none`` where there is
one, and the evaluation cost and the shield's evaluation interventions per episode. Writes ``<out>/tradeoff.md``,
``<out>/tradeoff.csv`` and ``<out>/tradeoff.png``.
"""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _aggregate import iqm_with_ci
from _report import machine, write_csv, write_markdown


@dataclass
class Args:
    sources: tyro.conf.Positional[list[str]]
    """``LABEL=FOLDER:MODE`` entries, in the order the variants should be listed."""
    out: Path = Path("benchmarks/results/tradeoff")
    """Output folder."""


def parse(entry: str) -> tuple[str, Path, str]:
    """``LABEL=FOLDER:MODE`` -> label, folder, mode."""
    label, sep, rest = entry.partition("=")
    folder, sep2, mode = rest.rpartition(":")
    if not (sep and sep2 and label and folder and mode):
        raise SystemExit(f"expected LABEL=FOLDER:MODE, got {entry!r}")
    return label, Path(folder), mode


def load(folder: Path, mode: str) -> list[dict[str, str]]:
    path = folder / "runs.csv"
    if not path.exists():
        raise SystemExit(f"{path} does not exist (run safety_benchmark.py with --out {folder})")
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["mode"] == mode]
    if not rows:
        raise SystemExit(f"{path} has no runs of mode {mode!r}")
    return rows


def main(args: Args) -> None:
    table = []
    for entry in args.sources:
        label, folder, mode = parse(entry)
        rows = load(folder, mode)
        row: dict = {"label": label, "folder": str(folder), "mode": mode, "runs": len(rows)}
        for key in ("cum_violations", "eval_return", "eval_cost", "eval_interventions"):
            iqm, lo, hi, _ = iqm_with_ci([float(r[key]) for r in rows])
            row.update({key: iqm, f"{key}_lo": lo, f"{key}_hi": hi})
        table.append(row)
    base = next((r for r in table if r["label"] == "none"), None)
    lines = [f"# return / violation trade-off {date.today()}, {machine()}", "",
             "IQM [95 % CI] over the runs of each variant (rliable); one run: its value.", "",
             ("| variant | runs | cum. training violations | vs none | eval return | vs none | "
             "eval cost | eval interventions / episode |"), "|---|---|---|---|---|---|---|---|"]

    def cell(r: dict, key: str, digits: int) -> str:
        if r["runs"] == 1:
            return f"{r[key]:.{digits}f}"
        return f"{r[key]:.{digits}f} [{r[key + '_lo']:.{digits}f}, {r[key + '_hi']:.{digits}f}]"

    for r in table:
        v = r["cum_violations"] / base["cum_violations"] if base else math.nan
        ret = r["eval_return"] / base["eval_return"] if base else math.nan
        r["cum_violations_vs_none"], r["eval_return_vs_none"] = v, ret
        lines.append(f"| {r['label']} | {r['runs']} | {cell(r, 'cum_violations', 0)} | {v:.2f}x | "
                     f"{cell(r, 'eval_return', 2)} | {100 * ret:.0f} % | "
                     f"{cell(r, 'eval_cost', 1)} | {cell(r, 'eval_interventions', 1)} |")
    lines += ["", "command: python benchmarks/tradeoff.py " + " ".join(
        f'"{s}"' if " " in s else s for s in sys.argv[1:])]
    write_markdown(args.out / "tradeoff.md", lines)
    write_csv(args.out / "tradeoff.csv", table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for k, r in enumerate(table):
        x, y = r["cum_violations"], r["eval_return"]
        err = {} if r["runs"] == 1 else {
            "xerr": [[x - r["cum_violations_lo"]], [r["cum_violations_hi"] - x]],
            "yerr": [[y - r["eval_return_lo"]], [r["eval_return_hi"] - y]]}
        ax.errorbar(x, y, fmt="os^vD<>p*h"[k % 10], capsize=3, label=f"{r['label']} (n={r['runs']})",
                    **err)
    ax.set(xlabel="cumulative training violations", ylabel="final evaluation return",
           title="return / violation trade-off (IQM, 95 % CI where n > 1)")
    ax.set_xscale("symlog", linthresh=100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(args.out / "tradeoff.png", dpi=120)
    print(f"wrote {args.out / 'tradeoff.png'}")


if __name__ == "__main__":
    main(tyro.cli(Args))
