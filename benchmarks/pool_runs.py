"""Pool per-run rows of several ``safety_benchmark.py`` outputs (e.g. extra seeds run later).

    python benchmarks/pool_runs.py --out benchmarks/results/safety_pixelhazard_5seeds \
        none=benchmarks/results/safety_pixelhazard:none \
        none=benchmarks/results/safety_pixelhazard_seeds34:none \
        "shield+penalty=benchmarks/results/safety_pixelhazard_intervention_penalty:shield" ...

Each argument is ``GROUP=FOLDER:MODE``: the rows of ``FOLDER/runs.csv`` whose mode is ``MODE`` go
into ``GROUP``; ``GROUP=FOLDER:MODE@0,1,2`` takes only those seeds (each must be there). A seed may appear once per group (a clash is an error). Ratios are against the
group named ``none`` when there is one. Every pair of the other groups is also compared seed by
seed on cumulative violations: in how many shared seeds the first is lower, the mean paired
difference with its standard error, and the exact two-sided sign-test p-value (ties dropped).
Writes ``<out>/pooled.md``, ``<out>/pooled.csv`` and, with two or more such groups,
``<out>/paired.csv``.
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from _report import write_csv, write_markdown


@dataclass
class Args:
    sources: tyro.conf.Positional[list[str]]
    """``GROUP=FOLDER:MODE`` or ``GROUP=FOLDER:MODE@SEED,SEED,...`` entries, in the order the
    groups should be listed."""
    out: Path = Path("benchmarks/results/pooled")
    """Output folder."""


def parse(entry: str) -> tuple[str, Path, str, set[str] | None]:
    """``GROUP=FOLDER:MODE[@SEEDS]`` -> group, folder, mode and the seeds to keep (None: all)."""
    group, sep, rest = entry.partition("=")
    folder, sep2, mode = rest.rpartition(":")
    mode, at, seed_list = mode.partition("@")
    if not (sep and sep2 and group and folder and mode):
        raise SystemExit(f"expected GROUP=FOLDER:MODE or GROUP=FOLDER:MODE@0,1,2, got {entry!r}")
    seeds = None
    if at:
        seeds = {s.strip() for s in seed_list.split(",") if s.strip()}
        if not seeds or not all(s.isdigit() for s in seeds):
            raise SystemExit(f"expected comma-separated seeds after '@' in {entry!r}")
        seeds = {str(int(s)) for s in seeds}
    return group, Path(folder), mode, seeds


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign-test p-value for ``wins`` against ``losses`` (ties excluded)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_rows(groups: dict[str, list[dict]]) -> list[dict]:
    """Seed-by-seed comparison of cumulative violations for each pair of non-``none`` groups."""
    by_seed = {g: {int(r["seed"]): float(r["cum_violations"]) for r in rows}
               for g, rows in groups.items() if g != "none"}
    out = []
    for first, second in itertools.combinations(by_seed, 2):
        seeds = sorted(by_seed[first].keys() & by_seed[second].keys())
        if not seeds:
            continue
        diff = np.array([by_seed[first][s] - by_seed[second][s] for s in seeds])
        wins, losses = int((diff < 0).sum()), int((diff > 0).sum())
        stderr = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        out.append({"first": first, "second": second, "shared_seeds": len(seeds),
                    "first_lower": wins, "second_lower": losses,
                    "mean_difference": float(diff.mean()), "stderr": float(stderr),
                    "sign_test_p": sign_test_p(wins, losses)})
    return out


def main(args: Args) -> None:
    groups: dict[str, list[dict]] = {}
    for entry in args.sources:
        group, folder, mode, keep = parse(entry)
        path = folder / "runs.csv"
        if not path.is_file():
            raise SystemExit(f"no runs.csv in {folder}")
        with path.open() as f:
            rows = [r for r in csv.DictReader(f) if r["mode"] == mode]
        if not rows:
            raise SystemExit(f"{path} has no runs of mode {mode!r}")
        if keep is not None:
            missing = keep - {r["seed"] for r in rows}
            if missing:
                raise SystemExit(f"{path} has no {mode!r} runs of seed(s) {sorted(map(int, missing))}")
            rows = [r for r in rows if r["seed"] in keep]
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
                     f"{v.mean():.0f} ± {v.std():.0f} | {'-' if base is None else f'{ratio:.2f}'} | "
                     f"{ret.mean():.2f} ± {ret.std():.2f} | {cost.mean():.1f} ± {cost.std():.1f} |")
    pairs = paired_rows(groups)
    if pairs:
        header = ("| paired by seed | shared seeds | first lower in | mean difference "
                  "(first - second) | sign-test p |")
        lines += ["", header, "|---|---|---|---|---|"]
        lines += [f"| {p['first']} vs {p['second']} | {p['shared_seeds']} | {p['first_lower']} "
                  f"(second in {p['second_lower']}) | {p['mean_difference']:.0f} ± "
                  f"{p['stderr']:.0f} | {p['sign_test_p']:.2f} |" for p in pairs]
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "pooled.csv", table, dated=False)
    if pairs:
        write_csv(args.out / "paired.csv", pairs, dated=False)
    sources = [f"- {e}" for e in args.sources]
    write_markdown(args.out / "pooled.md", ["# pooled safety-benchmark runs", "", *lines, "",
                                            "sources:", *sources])


if __name__ == "__main__":
    main(tyro.cli(Args))
