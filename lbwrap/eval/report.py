"""Run reports: a metrics CSV written during training, its plots, and an evaluation-episode GIF.

Three independent pieces (the training example uses all three)::

    recorder = MetricsRecorder("run/metrics.csv", safety, every=1000, env_steps_per_step=2,
                               warmup_timesteps=agent.learning_starts, cotrain=cotrain)
    agent.learn(50_000, callback=[cotrain, recorder])
    plot_run("run/metrics.csv", "run/plot")            # run/plot_return.png, _cost.png, ...
    record_episode_video(agent, make_env, safety, "run/episode.gif", shield=True)

``metrics.csv`` has one row every ``every`` env steps (see :data:`METRICS_COLUMNS`); the GIF shows
the camera image next to the world model's reconstruction of it, with B(z) over the episode
drawn underneath (red where B < 0) and the steps with a cost marked.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from lbwrap._atomic import atomic_write, atomic_write_text
from lbwrap.safety_model import LatentSafetyModel
from lbwrap.wrappers import BarrierShield, LatentObservation

__all__ = [
    "METRICS_COLUMNS",
    "EpisodeVideo",
    "MetricsRecorder",
    "compare_runs",
    "compose_video_frame",
    "plot_comparison",
    "plot_run",
    "read_metrics",
    "record_episode_video",
    "truncate_metrics",
    "write_json",
]

#: Columns of ``metrics.csv``, in order.
METRICS_COLUMNS: tuple[str, ...] = (
    "env_steps",              # env steps so far (agent steps x action repeat, all envs)
    "agent_steps",            # SB3's num_timesteps
    "wall_s",                 # training wall time so far (resumed runs included)
    "episodes",               # episodes finished so far
    "ep_return_mean",         # env return, mean over the last `stats_window` episodes
    "ep_cost_mean",           # episode cost, mean over the last `stats_window` episodes
    "window_violations",      # violating env steps since the previous row
    "cum_violations",         # violating env steps so far (warm-up included)
    "warmup_violations",      # violating env steps during the random warm-up
    "shield_interventions",   # steps whose action the shield replaced, so far
    "shield_active_steps",    # steps taken with the shield active, so far
    "world_model_loss",       # last world-model loss (NaN before the first update)
    "barrier_loss",           # last barrier loss
    "barrier_bal_acc_real",   # last balanced accuracy of sign(B) on real labelled states
    "barrier_acc_ema",        # its EMA (what the readiness gate reads)
    "ready",                  # 1 when the barrier is trusted (shield / barrier term on)
    "world_model_skipped",    # world-model updates skipped so far (NaN/inf loss or gradient)
    "barrier_skipped",        # barrier updates skipped so far (NaN/inf loss or gradient)
    "action_barrier_skipped",  # action-barrier updates skipped so far (0 without one)
)


class MetricsRecorder(BaseCallback):
    """SB3 callback that appends a row to a CSV file at the start of a new run (step 0), each
    time the env-step count passes a multiple of ``every``, and at the end of training.

    Everything is counted from the step ``infos`` (``cost``, ``violations``,
    ``shield_active``, ``shield_intervened``, ``env_reward``), so it works with any of lbwrap's
    env stacks; losses and accuracies come from ``cotrain.last_metrics`` when a
    :class:`~lbwrap.sb3.CoTrainCallback` is given, readiness from ``safety``.

    Args:
        path: the CSV file (created with a header, or appended to when ``append``).
        safety: the co-trained safety model (for ``ready`` and the accuracy EMA).
        every: env steps between rows.
        env_steps_per_step: env steps per SB3 timestep (the action repeat).
        warmup_timesteps: SB3 timesteps of random warm-up (SAC's ``learning_starts``);
            violations up to then are also counted as warm-up violations.
        cotrain: the co-training callback whose ``last_metrics`` fill the loss columns.
        append: continue an existing file (a resumed run) instead of starting a new one.
        stats_window: episodes in the rolling return / cost means.
        log_to_sb3: also record ``rollout/ep_env_return_mean`` and ``safety/warmup_violations``
            with the SB3 logger (TensorBoard).
    """

    def __init__(
        self,
        path: str | Path,
        safety: LatentSafetyModel,
        every: int = 1000,
        env_steps_per_step: int = 1,
        warmup_timesteps: int = 0,
        cotrain: Any | None = None,
        append: bool = False,
        stats_window: int = 10,
        log_to_sb3: bool = True,
    ) -> None:
        super().__init__(verbose=0)
        if every < 1 or env_steps_per_step < 1:
            raise ValueError(f"every and env_steps_per_step must be >= 1, got {every}, {env_steps_per_step}")
        self.path = Path(path)
        self.safety = safety
        self.every = int(every)
        self.env_steps_per_step = int(env_steps_per_step)
        self.warmup_timesteps = int(warmup_timesteps)
        self.cotrain = cotrain
        self.append = bool(append)
        self.log_to_sb3 = bool(log_to_sb3)
        self.returns: deque[float] = deque(maxlen=stats_window)
        self.costs: deque[float] = deque(maxlen=stats_window)
        self.episodes = 0
        self.cum_violations = 0
        self.warmup_violations = 0
        self.interventions = 0
        self.shield_active_steps = 0
        self.wall_offset = 0.0
        self.last_row_env_steps = 0
        self._window_start_violations = 0
        self._ep_return = np.zeros(0)
        self._ep_cost = np.zeros(0)
        self._start: float | None = None

    # ------------------------------------------------------------------ resume support
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable counters, to continue a run with :meth:`load_state_dict`."""
        return {
            "returns": list(self.returns), "costs": list(self.costs), "episodes": self.episodes,
            "cum_violations": self.cum_violations, "warmup_violations": self.warmup_violations,
            "interventions": self.interventions, "shield_active_steps": self.shield_active_steps,
            "wall_s": self.wall_s, "last_row_env_steps": self.last_row_env_steps,
            "window_start_violations": self._window_start_violations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters saved by :meth:`state_dict` (episodes in flight are not kept)."""
        self.returns.extend(float(x) for x in state.get("returns", []))
        self.costs.extend(float(x) for x in state.get("costs", []))
        self.episodes = int(state.get("episodes", 0))
        self.cum_violations = int(state.get("cum_violations", 0))
        self.warmup_violations = int(state.get("warmup_violations", 0))
        self.interventions = int(state.get("interventions", 0))
        self.shield_active_steps = int(state.get("shield_active_steps", 0))
        self.wall_offset = float(state.get("wall_s", 0.0))
        self.last_row_env_steps = int(state.get("last_row_env_steps", 0))
        self._window_start_violations = int(state.get("window_start_violations", self.cum_violations))
        self._start = None

    @property
    def wall_s(self) -> float:
        """Training wall time in seconds, earlier (resumed-from) sessions included; the clock
        runs from the start to the end of ``learn``."""
        running = time.perf_counter() - self._start if self._start is not None else 0.0
        return self.wall_offset + running

    @property
    def env_steps(self) -> int:
        return int(self.num_timesteps) * self.env_steps_per_step

    # ------------------------------------------------------------------ SB3 hooks
    def _on_training_start(self) -> None:
        n = self.training_env.num_envs
        self._ep_return = np.zeros(n)
        self._ep_cost = np.zeros(n)
        self._start = time.perf_counter()
        if self.path.exists() and self.append:
            header = _read_header(self.path)
            if header != list(METRICS_COLUMNS):
                raise ValueError(
                    f"{self.path} has columns {header}, expected {list(METRICS_COLUMNS)}: it was "
                    "not written by this MetricsRecorder; move it away or use append=False."
                )
        elif not self.append or not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(METRICS_COLUMNS)
            self.append = True  # a second learn() call continues this file
            if self.num_timesteps == 0:
                self.write_row()  # the origin of the curves

    def _on_step(self) -> bool:
        infos: list[dict[str, Any]] = self.locals["infos"]
        dones = np.asarray(self.locals["dones"], dtype=bool).reshape(-1)
        rewards = np.asarray(self.locals["rewards"], dtype=np.float64).reshape(-1)
        warm = self.num_timesteps <= self.warmup_timesteps
        for i, info in enumerate(infos):
            cost = float(info.get("cost", 0.0))
            violations = int(info.get("violations", int(cost > 0)))
            self.cum_violations += violations
            if warm:
                self.warmup_violations += violations
            if info.get("shield_active", False):
                self.shield_active_steps += 1
                self.interventions += int(bool(info.get("shield_intervened", False)))
            self._ep_return[i] += float(info.get("env_reward", rewards[i]))
            self._ep_cost[i] += cost
            if dones[i]:
                self.returns.append(float(self._ep_return[i]))
                self.costs.append(float(self._ep_cost[i]))
                self.episodes += 1
                self._ep_return[i] = 0.0
                self._ep_cost[i] = 0.0
        if self.log_to_sb3:
            if self.returns:
                self.logger.record("rollout/ep_env_return_mean", float(np.mean(self.returns)))
            self.logger.record("safety/warmup_violations", self.warmup_violations)
            for name, count in self._skipped().items():
                self.logger.record(f"safety/{name}_updates", count)
        if self.env_steps // self.every > self.last_row_env_steps // self.every:
            self.write_row()
        return True

    def _on_training_end(self) -> None:
        if self.env_steps != self.last_row_env_steps:
            self.write_row()
        self.wall_offset = self.wall_s  # stop the clock
        self._start = None

    # ------------------------------------------------------------------ rows
    def row(self) -> dict[str, float | int]:
        """The current values of :data:`METRICS_COLUMNS`."""
        m: dict[str, float] = dict(getattr(self.cotrain, "last_metrics", {}) or {})
        nan = math.nan
        ema = float(self.safety.accuracy_ema) if hasattr(self.safety, "accuracy_ema") else nan
        return {
            "env_steps": self.env_steps,
            "agent_steps": int(self.num_timesteps),
            "wall_s": round(self.wall_s, 2),
            "episodes": self.episodes,
            "ep_return_mean": float(np.mean(self.returns)) if self.returns else nan,
            "ep_cost_mean": float(np.mean(self.costs)) if self.costs else nan,
            "window_violations": self.cum_violations - self._window_start_violations,
            "cum_violations": self.cum_violations,
            "warmup_violations": self.warmup_violations,
            "shield_interventions": self.interventions,
            "shield_active_steps": self.shield_active_steps,
            "world_model_loss": float(m.get("world_model/loss", nan)),
            "barrier_loss": float(m.get("barrier/loss", nan)),
            "barrier_bal_acc_real": float(m.get("barrier/balanced_accuracy_real", nan)),
            "barrier_acc_ema": ema,
            "ready": int(bool(self.safety.ready)),
            **self._skipped(),
        }

    def _skipped(self) -> dict[str, int]:
        skipped = getattr(self.safety, "skipped_updates", {})
        return {f"{name}_skipped": int(skipped.get(name, 0))
                for name in ("world_model", "barrier", "action_barrier")}

    def write_row(self) -> None:
        """Append the current row to the CSV file now."""
        row = self.row()
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row[c]) for c in METRICS_COLUMNS])
        self.last_row_env_steps = self.env_steps
        self._window_start_violations = self.cum_violations


def _fmt(value: float) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.6g}"
    return str(value)


def _read_header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def read_metrics(metrics_csv: str | Path) -> dict[str, np.ndarray]:
    """Read a ``metrics.csv`` into one float array per column."""
    with open(metrics_csv, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{metrics_csv} is empty (no header)")
        rows = [r for r in reader if r]
    data = np.array([[float(x) for x in r] for r in rows], dtype=np.float64).reshape(-1, len(header))
    return {name: data[:, k] for k, name in enumerate(header)}


def truncate_metrics(metrics_csv: str | Path, max_env_steps: int) -> int:
    """Drop rows logged after ``max_env_steps`` (e.g. after the checkpoint a run resumes from),
    and a last row that a killed process left half-written (no line end, or too few columns).

    Rewrites the file atomically; returns the number of rows dropped (0: file untouched).
    """
    path = Path(metrics_csv)
    if not path.exists():
        return 0
    text = path.read_text()
    partial = 0
    if text and not text.endswith("\n"):  # the write of the last row was cut off
        text = text[: text.rfind("\n") + 1]
        partial = 1
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        return 0
    header, body = rows[0], [r for r in rows[1:] if r]
    k = header.index("env_steps") if "env_steps" in header else 0
    kept = [r for r in body if len(r) == len(header) and float(r[k]) <= max_env_steps]
    dropped = len(body) - len(kept) + partial
    if dropped:
        out = io.StringIO()
        csv.writer(out).writerows([header, *kept])
        atomic_write_text(path, out.getvalue())
    return dropped


# ---------------------------------------------------------------------------------- plots
_PLOTS: tuple[tuple[str, str, str], ...] = (
    ("return", "ep_return_mean", "episode return (env reward, rolling mean)"),
    ("cost", "ep_cost_mean", "episode cost (rolling mean)"),
    ("violations", "cum_violations", "cumulative violating env steps"),
)


def plot_run(metrics_csv: str | Path, out_png_prefix: str | Path) -> list[Path]:
    """Plot return, episode cost and cumulative violations against env steps.

    Writes ``<prefix>_return.png``, ``<prefix>_cost.png`` and ``<prefix>_violations.png``
    (matplotlib's Agg backend, no display needed) and returns their paths. The first row at
    which the barrier was ready is marked with a dotted vertical line, the end of the random
    warm-up (when the warm-up count stops growing) is shaded.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = read_metrics(metrics_csv)
    steps = data["env_steps"]
    prefix = Path(out_png_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # mypy is right here: without a "ready" column ``[] > 0`` raises TypeError (kept as is)
    any_ready = bool(np.any(np.asarray(data.get("ready", [])) > 0))
    ready_at = steps[np.flatnonzero(data["ready"] > 0)[0]] if any_ready else None
    warm = data.get("warmup_violations")
    warm_end = None
    if warm is not None and len(warm):
        grew = np.flatnonzero(np.diff(warm, prepend=0.0) > 0)
        warm_end = steps[grew[-1]] if grew.size else None
    paths = []
    for name, column, label in _PLOTS:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        y = data[column]
        ok = np.isfinite(y)
        ax.plot(steps[ok], y[ok], marker="." if ok.sum() < 30 else None, color="C0")
        if column == "cum_violations" and warm is not None:
            ax.plot(steps, warm, color="C1", linestyle="--", label="during random warm-up")
            ax.legend(loc="upper left")
        if warm_end is not None:
            ax.axvspan(steps[0], warm_end, color="0.9", zorder=0)
        if ready_at is not None:
            ax.axvline(ready_at, color="C3", linestyle=":", label="barrier ready")
            ax.text(ready_at, ax.get_ylim()[1], " ready", color="C3", va="top", fontsize=8)
        ax.set_xlabel("env steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = prefix.with_name(f"{prefix.name}_{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_comparison(runs: dict[str, str | Path], out_png: str | Path, title: str = "") -> Path:
    """Cumulative violations and episode return of several runs (``{label: metrics.csv}``)
    against env steps, side by side in one figure; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_v, ax_r) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, (label, path) in enumerate(runs.items()):
        data = read_metrics(path)
        steps = data["env_steps"]
        style = {"color": f"C{k}", "linestyle": "-" if k == 0 else "--"}
        ax_v.plot(steps, data["cum_violations"], label=label, **style)
        ok = np.isfinite(data["ep_return_mean"])
        ax_r.plot(steps[ok], data["ep_return_mean"][ok], label=label, **style)
    ax_v.set(xlabel="env steps", ylabel="cumulative violating env steps")
    ax_r.set(xlabel="env steps", ylabel="episode return (env reward, rolling mean)")
    for ax in (ax_v, ax_r):
        ax.grid(alpha=0.3)
    ax_v.legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def compare_runs(violations: float, ret: float, ref_violations: float, ref_return: float,
                 label: str = "this run", ref_label: str = "plain SAC") -> str:
    """One line comparing a run's training violations and evaluation return with a reference's."""
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "n/a"

    share = f"{100 * ret / ref_return:.0f} %" if ref_return > 0 else "n/a"
    return (f"{label}: {violations:.0f} training violations, {ratio(violations, ref_violations)} "
            f"{ref_label}'s {ref_violations:.0f}; evaluation return {ret:.2f}, {share} of "
            f"{ref_label}'s {ref_return:.2f}")


# ---------------------------------------------------------------------------------- video
_GREEN = np.array([60, 200, 90], np.uint8)
_RED = np.array([230, 40, 40], np.uint8)
_ORANGE = np.array([255, 160, 0], np.uint8)
_GREY = np.array([110, 110, 110], np.uint8)
_WHITE = np.array([235, 235, 235], np.uint8)


@dataclass
class EpisodeVideo:
    """What :func:`record_episode_video` wrote and saw."""

    path: Path
    steps: int
    episode_return: float
    cost: float
    violations: int
    barrier: list[float] = field(default_factory=list)
    """B(z_t) of every frame (reset frame first)."""
    costs: list[float] = field(default_factory=list)
    """Cost received on arriving at every frame (0 for the reset frame)."""


def _hwc(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    return frame.transpose(1, 2, 0) if frame.shape[0] in (1, 3) and frame.shape[-1] not in (1, 3) else frame


def _upscale(image: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def _draw_vline(strip: np.ndarray, x: int, y0: int, y1: int, colour: np.ndarray) -> None:
    lo, hi = sorted((int(y0), int(y1)))
    strip[lo:hi + 2, x] = colour  # 2 px thick


def _barrier_strip(values: np.ndarray, costs: np.ndarray, t: int, width: int, height: int) -> np.ndarray:
    """A (height, width, 3) plot of B over the episode: zero line, B (red where < 0), cost ticks
    at the top, the current step as a white line."""
    strip = np.full((height, width, 3), 25, np.uint8)
    n = len(values)
    finite = values[np.isfinite(values)]
    span = 1.15 * float(np.max(np.abs(finite))) if finite.size else 1.0
    span = span if span > 0 else 1.0
    top, bottom = 5, height - 3                 # rows 0..3: cost ticks
    mid = (top + bottom) / 2

    def y_of(v: float) -> int:
        return round(mid - (v / span) * (bottom - top) / 2)

    def x_of(k: int) -> int:
        return round(k * (width - 1) / max(n - 1, 1))

    strip[round(mid), :] = _GREY
    for k in np.flatnonzero(costs > 0):
        x = x_of(int(k))
        strip[0:4, x] = _ORANGE
    prev: tuple[int, int] | None = None
    for k in range(n):
        v = values[k]
        if not np.isfinite(v):
            prev = None
            continue
        x, y = x_of(k), y_of(float(v))
        colour = _RED if v < 0 else _GREEN
        if prev is not None and prev[0] != x:
            for xx in range(prev[0] + 1, x + 1):  # straight segment, column by column
                yy = prev[1] + (y - prev[1]) * (xx - prev[0]) / (x - prev[0])
                y_prev = prev[1] + (y - prev[1]) * (xx - 1 - prev[0]) / (x - prev[0])
                _draw_vline(strip, xx, round(y_prev), round(yy), colour)
        else:
            strip[y:y + 2, x] = colour
        prev = (x, y)
    x_now = x_of(min(t, n - 1))
    strip[top:, x_now] = np.maximum(strip[top:, x_now], _WHITE // 2)
    strip[0:4, x_now] = _WHITE
    return strip


def compose_video_frame(
    camera: np.ndarray,
    reconstruction: np.ndarray,
    barrier: Sequence[float],
    costs: Sequence[float],
    t: int,
    scale: int = 3,
    strip_height: int = 48,
) -> np.ndarray:
    """One GIF frame (H, W, 3) uint8: ``[camera | reconstruction]`` upscaled ``scale`` x
    (nearest), a red border on the camera image when ``costs[t] > 0``, and under it the strip
    of ``barrier`` over the episode (green B >= 0, red B < 0, orange ticks at costly steps,
    white line at step ``t``). Images may be CHW or HWC."""
    cam = _upscale(_hwc(camera), scale)
    rec = _upscale(_hwc(reconstruction), scale)
    if cam.shape != rec.shape:
        raise ValueError(f"camera {cam.shape} and reconstruction {rec.shape} differ in shape")
    cam = cam.copy()
    if costs[t] > 0:
        b = max(2, scale)
        cam[:b], cam[-b:], cam[:, :b], cam[:, -b:] = _RED, _RED, _RED, _RED
    gap = np.full((cam.shape[0], max(2, scale), 3), 255, np.uint8)
    top = np.concatenate([cam, gap, rec], axis=1)
    strip = _barrier_strip(np.asarray(barrier, np.float64), np.asarray(costs, np.float64), t,
                           top.shape[1], strip_height)
    sep = np.full((2, top.shape[1], 3), 255, np.uint8)
    return np.concatenate([top, sep, strip], axis=0)


def record_episode_video(
    agent: BaseAlgorithm,
    make_env: Callable[[], gym.Env],
    safety: LatentSafetyModel,
    path: str | Path,
    shield: bool = False,
    seed: int = 0,
    max_steps: int = 200,
    scale: int | None = None,
    fps: int = 15,
) -> EpisodeVideo:
    """Run one deterministic episode (reset seed ``seed``) and write it as a GIF.

    The env is wrapped like evaluation (:class:`LatentObservation`, and :class:`BarrierShield`
    when ``shield``) around the live ``safety`` model. Each frame shows the camera image and the
    world model's reconstruction of it (the decoder applied to the posterior features the agent
    sees, ``world_model.postprocess``), with B(z) over the whole episode drawn underneath (see
    :func:`compose_video_frame`). At most ``max_steps`` agent steps are recorded. ``scale``:
    pixel upscaling (default 4 for images up to 32 px, else 3).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    latent = LatentObservation(make_env(), safety)
    env: gym.Env = BarrierShield(latent, safety) if shield else latent
    wm = safety.world_model
    cameras: list[np.ndarray] = []
    recons: list[np.ndarray] = []
    barrier: list[float] = []
    costs: list[float] = []

    def capture(pixels: np.ndarray, cost: float) -> None:
        state = latent.latent_state
        with torch.no_grad():
            image = wm.decode(wm.features(state.to(wm.device)))
            b = safety.barrier.value(state.to(safety.device))
        cameras.append(_hwc(np.asarray(pixels)))
        recons.append(_hwc(wm.postprocess(image)[0].cpu().numpy()))
        barrier.append(float(b.reshape(-1)[0]))
        costs.append(float(cost))

    was_training = safety.training
    safety.eval()
    ret = 0.0
    violations = 0
    try:
        obs, info = env.reset(seed=seed)
        capture(info["pixels"], 0.0)
        for _ in range(max_steps):
            action, _ = agent.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, info = env.step(action)
            ret += float(info.get("env_reward", reward))
            violations += int(info.get("violations", info["cost"] > 0))
            capture(info["pixels"], float(info["cost"]))
            if terminated or truncated:
                break
    finally:
        safety.train(was_training)
        env.close()
    import imageio.v2 as imageio

    if scale is None:
        scale = 4 if cameras[0].shape[0] <= 32 else 3
    frames: list[Any] = [compose_video_frame(cameras[t], recons[t], barrier, costs, t, scale)
                         for t in range(len(cameras))]
    gif = imageio.mimwrite("<bytes>", frames, format="GIF", duration=1000.0 / fps, loop=0)
    if not isinstance(gif, bytes):  # "<bytes>" makes imageio return the encoded file
        raise TypeError(f"imageio returned {type(gif).__name__} instead of the GIF's bytes")
    atomic_write(path, lambda handle: handle.write(gif))
    return EpisodeVideo(path=path, steps=len(cameras) - 1, episode_return=ret,
                        cost=float(np.sum(costs)), violations=violations, barrier=barrier,
                        costs=costs)


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically (a reader sees the old file or the new one);
    values JSON cannot encode (paths, numpy scalars) are written as ``str``."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str))
