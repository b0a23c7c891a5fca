"""Return / violation trade-off of variants from several safety-benchmark folders, in one plot.

    python benchmarks/tradeoff.py --out benchmarks/results/run_task_variants \\
        "none=benchmarks/results/run_task_variants/eps2_closest_p0.1:none" \\
        "shield eps 2, closest, penalty 0.1=benchmarks/results/run_task_variants/eps2_closest_p0.1:shield"

Each argument is ``LABEL=FOLDER:MODE``: the rows of ``FOLDER/runs.csv`` (written by
``safety_benchmark.py``) whose mode is ``MODE``. Per label: the IQM and 95 % stratified-bootstrap
interval (rliable) of cumulative training violations and final evaluation return (a single run
is shown as a point without an interval), the ratio of each to the label ``none`` where there is
one, and the evaluation cost and the shield's evaluation interventions per episode. With
``--bar-reference LABEL`` the run task's bar (at most 1/5 of that label's violations, at least
80 % of its return) is drawn as a box and a column says who is inside. Writes ``<out>/tradeoff.md``,
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
    bar_reference: str | None = None
    """Label whose IQM defines the run task's bar: at most 1/5 of its cumulative training
    violations and at least 80 % of its evaluation return. Drawn as a shaded box, and a column
    says which variants lie inside it. None: no bar."""


#: The run task's bar (issue 15): violations at most this share of the reference's ...
BAR_VIOLATION_SHARE = 0.2
#: ... and return at least this share of the reference's.
BAR_RETURN_SHARE = 0.8


def parse(entry: str) -> tuple[str, Path, str]:
    """``LABEL=FOLDER:MODE`` -> label, folder, mode."""
    label, sep, rest = entry.partition("=")
    folder, sep2, mode = rest.rpartition(":")
    if not (sep and sep2 and label and folder and mode):
        raise SystemExit(f"expected LABEL=FOLDER:MODE, got {entry!r}")
    return label, Path(folder), mode


def bar_box(table: list[dict], reference: str | None) -> tuple[float, float] | None:
    """(most violations, least return) of the bar set by the row labelled ``reference``."""
    if reference is None:
        return None
    ref = next((r for r in table if r["label"] == reference), None)
    if ref is None:
        raise SystemExit(f"--bar-reference {reference!r} is not one of the labels "
                         f"{[r['label'] for r in table]}")
    return BAR_VIOLATION_SHARE * ref["cum_violations"], BAR_RETURN_SHARE * ref["eval_return"]


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
    bar = bar_box(table, args.bar_reference)
    lines = [f"# return / violation trade-off {date.today()}, {machine()}", "",
             "IQM [95 % CI] over the runs of each variant (rliable); one run: its value.", ""]
    if bar:
        lines += [(f"Bar: at most {bar[0]:.0f} cumulative training violations and at least "
                  f"{bar[1]:.2f} evaluation return ({BAR_VIOLATION_SHARE:.0%} and "
                  f"{BAR_RETURN_SHARE:.0%} of {args.bar_reference!r})."), ""]
    lines += [("| # | variant | runs | cum. training violations | vs none | eval return | vs none | "
              "eval cost | eval interventions / episode |" + (" in the bar |" if bar else "")),
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if bar else "")]

    def cell(r: dict, key: str, digits: int) -> str:
        if r["runs"] == 1:
            return f"{r[key]:.{digits}f}"
        return f"{r[key]:.{digits}f} [{r[key + '_lo']:.{digits}f}, {r[key + '_hi']:.{digits}f}]"

    for k, r in enumerate(table, start=1):
        v = r["cum_violations"] / base["cum_violations"] if base else math.nan
        ret = r["eval_return"] / base["eval_return"] if base else math.nan
        r["cum_violations_vs_none"], r["eval_return_vs_none"] = v, ret
        inside = ""
        if bar:
            r["in_bar"] = r["cum_violations"] <= bar[0] and r["eval_return"] >= bar[1]
            inside = f" {'yes' if r['in_bar'] else 'no'} |"
        lines.append(f"| {k} | {r['label']} | {r['runs']} | {cell(r, 'cum_violations', 0)} | "
                     f"{v:.2f}x | {cell(r, 'eval_return', 2)} | {100 * ret:.0f} % | "
                     f"{cell(r, 'eval_cost', 1)} | {cell(r, 'eval_interventions', 1)} |{inside}")
    lines += ["", "command: python benchmarks/tradeoff.py " + " ".join(
        f'"{s}"' if " " in s else s for s in sys.argv[1:])]
    write_markdown(args.out / "tradeoff.md", lines)
    write_csv(args.out / "tradeoff.csv", table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, max(6.0, 0.15 * len(table) + 1.5)))  # legend: a row each
    if bar:
        ax.fill_between([0, bar[0]], bar[1], max(r["eval_return"] for r in table) * 1.05,
                        color="tab:green", alpha=0.12, label=f"the bar ({args.bar_reference})")
    for k, r in enumerate(table, start=1):
        x, y = r["cum_violations"], r["eval_return"]
        err = {} if r["runs"] == 1 else {
            "xerr": [[x - r["cum_violations_lo"]], [r["cum_violations_hi"] - x]],
            "yerr": [[y - r["eval_return_lo"]], [r["eval_return_hi"] - y]]}
        ax.errorbar(x, y, fmt="os^vD<>p*h"[k % 10], capsize=3,
                    label=f"{k}: {r['label']} (n={r['runs']})", **err)
        ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel="cumulative training violations", ylabel="final evaluation return",
           title="return / violation trade-off (IQM, 95 % CI where n > 1)")
    ax.set_xscale("symlog", linthresh=100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(args.out / "tradeoff.png", dpi=120)
    print(f"wrote {args.out / 'tradeoff.png'}")


if __name__ == "__main__":
    main(tyro.cli(Args))
