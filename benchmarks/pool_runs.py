"""Pool per-run rows of several ``safety_benchmark.py`` outputs (e.g. extra seeds run later).

    python benchmarks/pool_runs.py --out benchmarks/results/safety_pixelhazard_5seeds \
        none=benchmarks/results/safety_pixelhazard:none \
        none=benchmarks/results/safety_pixelhazard_seeds34:none \
        "shield+penalty=benchmarks/results/safety_pixelhazard_intervention_penalty:shield" ...

Each argument is ``GROUP=FOLDER:MODE``: the rows of ``FOLDER/runs.csv`` whose mode is ``MODE`` go
into ``GROUP``. A seed may appear once per group (a clash is an error). Ratios are against the
group named ``none`` when there is one. Writes ``<out>/pooled.md`` and ``<out>/pooled.csv``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from _report import write_csv, write_markdown


@dataclass
class Args:
    sources: tyro.conf.Positional[list[str]]
    """``GROUP=FOLDER:MODE`` entries, in the order the groups should be listed."""
    out: Path = Path("benchmarks/results/pooled")
    """Output folder."""


def parse(entry: str) -> tuple[str, Path, str]:
    group, sep, rest = entry.partition("=")
    folder, sep2, mode = rest.rpartition(":")
    if not (sep and sep2 and group and folder and mode):
        raise SystemExit(f"expected GROUP=FOLDER:MODE, got {entry!r}")
    return group, Path(folder), mode


def main(args: Args) -> None:
    groups: dict[str, list[dict]] = {}
    for entry in args.sources:
        group, folder, mode = parse(entry)
        path = folder / "runs.csv"
        if not path.is_file():
            raise SystemExit(f"no runs.csv in {folder}")
        with path.open() as f:
            rows = [r for r in csv.DictReader(f) if r["mode"] == mode]
        if not rows:
            raise SystemExit(f"{path} has no runs of mode {mode!r}")
        seen = {r["seed"] for r in groups.get(group, [])}
        clash = seen & {r["seed"] for r in rows}
        if clash:
            raise SystemExit(f"group {group!r} would hold seed(s) {sorted(clash)} twice")
        groups.setdefault(group, []).extend({**r, "source": str(folder)} for r in rows)

    def values(rows: list[dict], key: str) -> np.ndarray:
        return np.array([float(r[key]) for r in rows])

    base = values(groups["none"], "cum_violations").mean() if "none" in groups else None
    table, lines = [], ["| group | seeds | cumulative violations | ratio vs none | eval return | eval cost |",
                        "|---|---|---|---|---|---|"]
    for group, rows in groups.items():
        v, ret, cost = (values(rows, k) for k in ("cum_violations", "eval_return", "eval_cost"))
        seeds = sorted(int(r["seed"]) for r in rows)
        ratio = v.mean() / base if base else float("nan")
        table.append({"group": group, "seeds": " ".join(map(str, seeds)),
                      "violations_mean": v.mean(), "violations_std": v.std(), "ratio_vs_none": ratio,
                      "eval_return_mean": ret.mean(), "eval_return_std": ret.std(),
                      "eval_cost_mean": cost.mean(), "eval_cost_std": cost.std()})
        lines.append(f"| {group} | {len(seeds)} ({', '.join(map(str, seeds))}) | "
                     f"{v.mean():.0f} ± {v.std():.0f} | {ratio:.2f} | "
                     f"{ret.mean():.2f} ± {ret.std():.2f} | {cost.mean():.1f} ± {cost.std():.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "pooled.csv", table, dated=False)
    sources = [f"- {e}" for e in args.sources]
    write_markdown(args.out / "pooled.md", ["# pooled safety-benchmark runs", "", *lines, "",
                                            "sources:", *sources])
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args))
