"""Per-run safety metrics and their aggregation with rliable (IQM, 95 % stratified bootstrap CIs).

Used by ``safety_benchmark.py`` (groups = modes of one grid) and ``tradeoff.py`` (groups =
variants from several grids). A run's result is the dict ``safety_benchmark.run_one`` returns:
final numbers plus a ``curve`` of ``(env_step, cumulative_violations, gate_open, ...)`` points and
``episodes``, the ``(env_step, return)`` of every finished training episode.

Metrics per run
    ``cum_violations``: violating env steps over the whole training run (warm-up included).
    ``eval_return`` / ``eval_cost``: mean over the deterministic evaluation episodes on held-out
    layouts. ``rate_after_gate``: violations per 1000 env steps from the first curve point with
    the safety model's readiness gate open to the end (NaN when it never opened).
    ``steps_to_safe``: the first env step from which the rolling violation rate (window
    ``window`` env steps) stays at or below ``threshold`` violations per env step until the end
    of training; a run whose rate is above it at the end counts as the full budget (censored, and
    reported as such). ``train_wall_s``: training wall time.

Aggregates per group: the interquartile mean (IQM) with a 95 % percentile interval from rliable's
stratified bootstrap (one task, so strata = the group's runs), and rliable's probability of
improvement (with its interval) for paired comparisons.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Default rolling-rate threshold of ``steps_to_safe``: 5 violations per 1000 env steps.
SAFE_RATE_THRESHOLD = 0.005
#: Default rolling window of ``steps_to_safe``, env steps.
SAFE_RATE_WINDOW = 2000
#: Metrics of the table, with the direction that is better.
METRICS: dict[str, str] = {
    "cum_violations": "lower",
    "eval_return": "higher",
    "eval_cost": "lower",
    "rate_after_gate": "lower",
    "steps_to_safe": "lower",
    "train_wall_s": "lower",
}
#: Bootstrap resamples per interval.
BOOTSTRAP_REPS = 5000


def rate_after_gate(curve: Sequence[Sequence[float]]) -> float:
    """Violations per 1000 env steps from the first point with the gate open to the end."""
    pts = np.asarray(curve, float)
    if pts.size == 0:
        return math.nan
    open_at = np.flatnonzero(pts[:, 2] > 0.5)
    if open_at.size == 0 or pts[-1, 0] <= pts[open_at[0], 0]:
        return math.nan
    i = open_at[0]
    return 1000.0 * (pts[-1, 1] - pts[i, 1]) / (pts[-1, 0] - pts[i, 0])


def steps_to_safe(curve: Sequence[Sequence[float]], threshold: float = SAFE_RATE_THRESHOLD,
                  window: int = SAFE_RATE_WINDOW) -> tuple[float, bool]:
    """``(env step, reached)``: the first step from which the rolling violation rate stays
    ``<= threshold`` to the end; ``(last step, False)`` when the final rate is above it."""
    pts = np.asarray(curve, float)
    if pts.size == 0:
        return math.nan, False
    steps, cum = pts[:, 0], pts[:, 1]
    # rolling rate at each point over the preceding window (points before a full window: from 0)
    earlier = np.interp(steps - window, np.concatenate([[0.0], steps]),
                        np.concatenate([[0.0], cum]), left=0.0)
    span = np.minimum(steps, window)
    rate = np.where(span > 0, (cum - earlier) / np.maximum(span, 1e-9), 0.0)
    above = np.flatnonzero(rate > threshold)
    if above.size == 0:
        return float(steps[0]), True
    if above[-1] == len(steps) - 1:
        return float(steps[-1]), False
    return float(steps[above[-1] + 1]), True


def run_metrics(result: Mapping[str, Any], threshold: float = SAFE_RATE_THRESHOLD,
                window: int = SAFE_RATE_WINDOW) -> dict[str, float]:
    """The table's metrics for one run (see the module docstring)."""
    steps, reached = steps_to_safe(result["curve"], threshold, window)
    return {
        "cum_violations": float(result["cum_violations"]),
        "eval_return": float(result["eval_return"]),
        "eval_cost": float(result["eval_cost"]),
        "rate_after_gate": rate_after_gate(result["curve"]),
        "steps_to_safe": steps,
        "safe_reached": float(reached),
        "train_wall_s": float(result["train_wall_s"]),
    }


def _interval_estimates(score_dict: Mapping[str, Any], func: Any, seed: int) -> tuple[dict, dict]:
    """rliable's stratified-bootstrap point estimates and 95 % percentile intervals."""
    from rliable import library as rly

    with warnings.catch_warnings():  # arch (rliable's bootstrap) deprecates RandomState
        warnings.simplefilter("ignore", FutureWarning)
        return rly.get_interval_estimates(score_dict, func, reps=BOOTSTRAP_REPS,
                                          random_state=np.random.RandomState(seed))


def iqm_with_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float, float, int]:
    """``(IQM, CI low, CI high, n)`` of the finite values (rliable, 95 % stratified bootstrap)."""
    from rliable import metrics

    x = np.asarray([v for v in values if math.isfinite(v)], float)
    if x.size == 0:
        return math.nan, math.nan, math.nan, 0
    if x.size == 1:
        return float(x[0]), float(x[0]), float(x[0]), 1
    point, ci = _interval_estimates({"g": x[:, None]},
                                    lambda s: np.array([metrics.aggregate_iqm(s)]), seed)
    return float(point["g"][0]), float(ci["g"][0, 0]), float(ci["g"][1, 0]), int(x.size)


def probability_of_improvement(x: Sequence[float], y: Sequence[float], lower_is_better: bool,
                               seed: int = 0) -> tuple[float, float, float]:
    """rliable's P(a run of x beats a run of y) with its 95 % bootstrap interval."""
    from rliable import metrics

    sign = -1.0 if lower_is_better else 1.0
    a = sign * np.asarray(x, float)[:, None]
    b = sign * np.asarray(y, float)[:, None]
    point, ci = _interval_estimates({"p": (a, b)}, metrics.probability_of_improvement, seed)
    p, bounds = np.asarray(point["p"], float).reshape(-1), np.asarray(ci["p"], float).reshape(-1)
    return float(p[0]), float(bounds[0]), float(bounds[1])


def summarise_groups(groups: Mapping[str, Sequence[Mapping[str, Any]]],
                     threshold: float = SAFE_RATE_THRESHOLD,
                     window: int = SAFE_RATE_WINDOW) -> list[dict[str, Any]]:
    """One row per group: IQM, interval and n of each metric, ratios to the group ``none``."""
    per_run = {g: [run_metrics(r, threshold, window) for r in rs] for g, rs in groups.items()}
    rows = []
    for group, runs in per_run.items():
        row: dict[str, Any] = {"group": group, "runs": len(runs)}
        for key in METRICS:
            iqm, lo, hi, n = iqm_with_ci([m[key] for m in runs])
            row.update({key: iqm, f"{key}_lo": lo, f"{key}_hi": hi, f"{key}_n": n})
        row["safe_reached"] = int(sum(m["safe_reached"] for m in runs))
        rows.append(row)
    base = next((r for r in rows if r["group"] == "none"), None)
    for row in rows:
        for key in ("cum_violations", "eval_return"):
            ok = base is not None and base[key] not in (0.0,) and math.isfinite(base[key])
            row[f"{key}_vs_none"] = row[key] / base[key] if ok else math.nan
    return rows


def _fmt(value: float, digits: int) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}"


def _cell(row: Mapping[str, Any], key: str, digits: int) -> str:
    iqm, lo, hi = row[key], row[f"{key}_lo"], row[f"{key}_hi"]
    if not math.isfinite(iqm):
        return "-"
    text = f"{_fmt(iqm, digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"
    if row[f"{key}_n"] < row["runs"]:
        text += f" (n={row[f'{key}_n']})"
    return text


def markdown_table(rows: Sequence[Mapping[str, Any]], threshold: float = SAFE_RATE_THRESHOLD,
                   window: int = SAFE_RATE_WINDOW) -> list[str]:
    """The summary table (IQM [95 % CI]) as Markdown lines."""
    lines = [
        ("| mode | runs | cum. training violations | vs none | eval return | vs none | eval cost | "
        f"violations / 1000 steps after gate | env steps to rate <= {threshold * 1000:g}/1000 "
        f"(window {window}) | wall s |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['group']} | {r['runs']} | {_cell(r, 'cum_violations', 0)} | "
            f"{_fmt(r['cum_violations_vs_none'], 2)}x | {_cell(r, 'eval_return', 2)} | "
            f"{_fmt(100 * r['eval_return_vs_none'], 0)} % | {_cell(r, 'eval_cost', 1)} | "
            f"{_cell(r, 'rate_after_gate', 1)} | {_cell(r, 'steps_to_safe', 0)} "
            f"({r['safe_reached']}/{r['runs']} reached) | {_fmt(r['train_wall_s'], 0)} |"
        )
    return lines


def paired_lines(groups: Mapping[str, Sequence[Mapping[str, Any]]], reference: str,
                 key: str = "cum_violations") -> list[str]:
    """Each group against ``reference``: P(fewer ``key``) with its interval (rliable)."""
    if reference not in groups:
        return []
    lower = METRICS[key] == "lower"
    ref = [run_metrics(r)[key] for r in groups[reference]]
    lines = [f"| mode | P({key} {'below' if lower else 'above'} {reference}'s) [95 % CI] |",
             "|---|---|"]
    for group, runs in groups.items():
        if group == reference:
            continue
        p, lo, hi = probability_of_improvement([run_metrics(r)[key] for r in runs], ref, lower)
        verdict = " (better)" if lo > 0.5 else (" (worse)" if hi < 0.5 else "")
        lines.append(f"| {group} | {p:.2f} [{lo:.2f}, {hi:.2f}]{verdict} |")
    return lines


def _band(ax: Any, series: list[tuple[np.ndarray, np.ndarray]], label: str) -> None:
    """Median line and min-max band of runs sampled on (possibly different) step grids."""
    series = [(s, v) for s, v in series if len(s)]
    if not series:
        return
    end = min(s[-1] for s, _ in series)
    grid = np.unique(np.concatenate([s[s <= end] for s, _ in series]))
    vals = np.stack([np.interp(grid, s, v) for s, v in series])
    line = ax.plot(grid, np.median(vals, 0), label=label)[0]
    ax.fill_between(grid, vals.min(0), vals.max(0), alpha=0.18, color=line.get_color())


def plot_curves(groups: Mapping[str, Sequence[Mapping[str, Any]]], path: Any,
                title: str = "", smooth_episodes: int = 4) -> None:
    """Cumulative training violations and training return vs env steps (median, min-max band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_v, ax_r) = plt.subplots(1, 2, figsize=(11, 4))
    for group, runs in groups.items():
        _band(ax_v, [(np.asarray(r["curve"], float)[:, 0], np.asarray(r["curve"], float)[:, 1])
                     for r in runs if r["curve"]], group)
        returns = []
        for r in runs:
            eps = np.asarray(r.get("episodes", []), float).reshape(-1, 2)
            if len(eps):
                k = min(smooth_episodes, len(eps))
                smooth = np.convolve(eps[:, 1], np.ones(k) / k, mode="valid")
                returns.append((eps[k - 1:, 0], smooth))
        _band(ax_r, returns, group)
    ax_v.set(xlabel="env steps", ylabel="cumulative violating env steps",
             title="training violations")
    ax_r.set(xlabel="env steps", ylabel=f"episode return (mean of last {smooth_episodes})",
             title="training return")
    ax_v.legend(fontsize=8)
    if title:
        fig.suptitle(title + "  (line: median over seeds, band: min-max)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tradeoff(rows: Sequence[Mapping[str, Any]], path: Any, title: str = "") -> None:
    """Final evaluation return vs cumulative training violations, IQM with 95 % CIs, per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in rows:
        x, y = r["cum_violations"], r["eval_return"]
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        ax.errorbar(x, y, xerr=[[x - r["cum_violations_lo"]], [r["cum_violations_hi"] - x]],
                    yerr=[[y - r["eval_return_lo"]], [r["eval_return_hi"] - y]], fmt="o",
                    capsize=3, label=r["group"])
    ax.set(xlabel="cumulative training violations (IQM, 95 % CI)",
           ylabel="final evaluation return (IQM, 95 % CI)",
           title=title or "return / violation trade-off")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
