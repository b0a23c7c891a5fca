"""Safety benchmark: safety modes x seeds at one step budget, cumulative violations and evaluation.

    python benchmarks/safety_benchmark.py                                  # PixelHazard, all modes
    python benchmarks/safety_benchmark.py --modes none shield --seeds 0 1 2 --agent-steps 6000

Every mode sees the same learned latent observations and co-trains its own safety model (see
``lbwrap.sb3.recipes``); they differ only in how safety enters. Cumulative training violations
count every violating *env* step (action repeat included), random warm-up included and also
reported apart. Evaluation: deterministic episodes on held-out layouts (reset seeds >= 1e6).
Writes ``<out>/runs.csv`` (one row per run), ``<out>/curves.csv`` and ``<out>/violations.png``.
"""

from __future__ import annotations

import contextlib
import csv
import multiprocessing as mp
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import tyro


@dataclass
class Args:
    env_id: str = "lbwrap/PixelHazard-v0"
    """Pixel env id (PixelHazard or a safety-gymnasium vision task)."""
    level: int = 1
    """PixelHazard level (0/1/2 hazards: none/8/16); ignored for other envs."""
    size: int = 64
    """Image side."""
    view_radius: float = 1.0
    """PixelHazard's egocentric window half-width in world units (arena half-width 1.5); ignored
    for other envs."""
    action_repeat: int = 2
    """Env steps per agent step."""
    modes: list[str] = field(default_factory=lambda: ["none", "lagrangian", "penalty", "shield",
                                                      "barrier", "barrier+shield"])
    """Safety modes to compare (see lbwrap.sb3.recipes.MODES)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds per mode."""
    agent_steps: int = 6000
    """Agent steps per run (env steps = agent_steps * action_repeat)."""
    learning_starts: int = 500
    """Random-action warm-up of SAC, in agent steps."""
    model_learning_starts: int = 50
    """Agent steps before the world model and barriers start training (runs before
    2026-11-27 (6) used 250; the pre-training burst waits for ``pretrain_min_unsafe``)."""
    reward_scale: float = 10.0
    """Reward multiplier for the agent (VecRewardScale); PixelHazard pays ~0.05 per step, which
    SAC's entropy bonus drowns at scale 1 (SAC on the true state did not learn in 5k steps)."""
    ent_coef: str = "auto_0.1"
    """SAC's entropy coefficient (SB3 syntax; "auto_0.1": learned, starting at 0.1)."""
    pretrain_updates: int = 200
    """Extra safety-model updates in its first training call (Dreamer's "pretrain"; runs before
    2026-11-27 used 0 with model_learning_starts 500)."""
    pretrain_min_unsafe: int = 3
    """Defer the burst until the replay holds this many unsafe steps (``CoTrainCallback``;
    runs before 2026-11-27 (6) used 0: at the first training call)."""
    train_every: int = 100
    """Agent steps between safety-model training calls."""
    updates_per_train: int = 10
    """World-model + barrier updates per call."""
    refresh_every: int = 0
    """Agent steps between re-filterings of SB3's stored latents (LatentRefresher); 0: off."""
    label_horizon: int = 3
    """The action barrier's label horizon (``ActionBarrierConfig.horizon``; runs before
    2026-11-27 used 1)."""
    intervention_penalty: float = 0.1
    """Reward (env units) subtracted when the shield replaces the agent's action (shield modes;
    the committed runs other than ``safety_pixelhazard_intervention_penalty`` used 0)."""
    ready_release_accuracy: float | None = None
    """Gate hysteresis (``SafetyModelConfig.ready_release_accuracy``): once open, the shield stays
    on while the accuracies stay at or above this; None (default): closes below 0.8."""
    learn_from_executed: bool = False
    """SAC stores the shield's executed action instead of its proposal (ExecutedActionRelabel)."""
    shield_selection: str = "closest"
    """How the shield picks a substitute among passing actions: closest to the proposal, or the
    best by the agent's critic ("critic")."""
    eval_episodes: int = 3
    """Deterministic evaluation episodes (each on its own held-out layout)."""
    max_episode_steps: int = 500
    """PixelHazard episode length in env steps."""
    workers: int = 2
    """Runs in parallel (one process each, one torch thread each)."""
    out: Path = Path("benchmarks/results/safety_pixelhazard")
    """Output folder."""


def make_env_fn(args: Args, seed: int):
    def make():
        import lbwrap

        kwargs = {}
        if args.env_id in (lbwrap.PIXEL_HAZARD_ID, lbwrap.PIXEL_HAZARD_RUN_ID):
            kwargs = {"level": args.level, "max_episode_steps": args.max_episode_steps,
                      "view_radius": args.view_radius}
        return lbwrap.make_pixel_env(args.env_id, size=args.size, action_repeat=args.action_repeat,
                                     **kwargs)
    return make


def run_one(job: tuple[Args, str, int]) -> dict:
    args, mode, seed = job
    import torch

    import lbwrap  # noqa: F401  (first: keeps gymnasium's plugin import quiet)

    torch.set_num_threads(1)
    from stable_baselines3.common.callbacks import BaseCallback

    from lbwrap.barrier import ActionBarrierConfig
    from lbwrap.eval import evaluate_agent
    from lbwrap.sb3 import LatentRefresher
    from lbwrap.sb3.recipes import SHIELD_MODES, AgentRecipe, build_safe_agent

    recipe = AgentRecipe(
        mode=mode, train_every=args.train_every, updates_per_train=args.updates_per_train,
        model_learning_starts=args.model_learning_starts,
        pretrain_updates=args.pretrain_updates, pretrain_min_unsafe=args.pretrain_min_unsafe,
        refresh_every=args.refresh_every,
        learn_from_executed=args.learn_from_executed,
        intervention_penalty=args.intervention_penalty,
        shield_selection=args.shield_selection,
        reward_scale=args.reward_scale,
        sac_kwargs={"learning_starts": args.learning_starts, "buffer_size": 200_000,
                    "ent_coef": args.ent_coef},
    )
    built = build_safe_agent([make_env_fn(args, seed)], recipe, seed=seed, device="cpu",
                             safety_kwargs={"action_barrier":
                                            ActionBarrierConfig(horizon=args.label_horizon),
                                            "ready_release_accuracy": args.ready_release_accuracy})
    curve: list[tuple[int, int, float, float]] = []
    warmup: dict[str, int] = {}

    class Recorder(BaseCallback):
        def _on_step(self) -> bool:
            t = self.num_timesteps
            cot = built.cotrain
            if t == args.learning_starts:
                warmup["violations"] = cot.cumulative_violations
            if t % 100 == 0:
                rate = cot.interventions / max(cot.shielded_steps, 1)
                curve.append((t * args.action_repeat, cot.cumulative_violations,
                              float(built.safety.ready), rate))
            return True

    start = time.perf_counter()
    built.agent.learn(args.agent_steps, callback=built.callback(Recorder()))
    train_s = time.perf_counter() - start
    shield = mode in SHIELD_MODES
    ev = evaluate_agent(built.agent, make_env_fn(args, seed), built.safety,
                        episodes=args.eval_episodes, shield=shield,
                        action_scorer=built.action_scorer).summary()
    cot = built.cotrain
    refresher = next((c for c in built.callbacks if isinstance(c, LatentRefresher)), None)
    returns = [ep["r"] for ep in built.agent.ep_info_buffer] if built.agent.ep_info_buffer else []
    m = cot.last_metrics
    return {
        "mode": mode, "seed": seed, "env_steps": args.agent_steps * args.action_repeat,
        "cum_violations": cot.cumulative_violations,
        "warmup_violations": warmup.get("violations", 0),
        "train_ep_cost_mean": float(np.mean(cot.episode_costs)) if cot.episode_costs else float("nan"),
        "eval_return": ev["return_mean"], "eval_return_std": ev["return_std"],
        "eval_cost": ev["cost_mean"], "eval_violations": ev["violations_mean"],
        "eval_interventions": ev["interventions_mean"],
        "shield_intervention_rate": cot.interventions / max(cot.shielded_steps, 1),
        "shield_active_steps": cot.shielded_steps,
        "barrier_ready": float(built.safety.ready),
        "barrier_accuracy_ema": float(built.safety.accuracy_ema),
        "world_model_loss": m.get("world_model/loss", float("nan")),
        "refresh_every": args.refresh_every,
        "learn_from_executed": args.learn_from_executed,
        "intervention_penalty": args.intervention_penalty, "label_horizon": args.label_horizon,
        "pretrain_updates": args.pretrain_updates, "pretrain_min_unsafe": args.pretrain_min_unsafe,
        "ready_release_accuracy": args.ready_release_accuracy,
        "model_learning_starts": args.model_learning_starts,
        "refresh_count": refresher.refresh_count if refresher else 0,
        "refresh_s_total": refresher.seconds_total if refresher else 0.0,
        "refresh_last_slots": refresher.last_metrics.get("slots_refreshed", 0.0) if refresher else 0.0,
        "refresh_last_s": refresher.last_metrics.get("seconds", 0.0) if refresher else 0.0,
        "refresh_last_mean_abs_change": (refresher.last_metrics.get("mean_abs_change", 0.0)
                                         if refresher else 0.0),
        "train_wall_s": train_s, "last_train_returns": float(np.mean(returns)) if returns else float("nan"),
        "curve": curve,
    }


def summarise(rows: list[dict], args: Args) -> str:
    lines = [("| mode | cum. violations (warm-up) | ratio vs none | eval return | eval cost | "
             "shield active steps | barrier ready | wall s |"), "|---|---|---|---|---|---|---|---|"]
    by_mode: dict[str, list[dict]] = {}
    for r in rows:
        by_mode.setdefault(r["mode"], []).append(r)
    base = np.mean([r["cum_violations"] for r in by_mode.get("none", [])]) if "none" in by_mode else None
    for mode in args.modes:
        rs = by_mode.get(mode, [])
        if not rs:
            continue
        v = np.array([r["cum_violations"] for r in rs], float)
        w = np.array([r["warmup_violations"] for r in rs], float)
        ratio = f"{v.mean() / base:.2f}" if base else "-"
        er = np.array([r["eval_return"] for r in rs])
        ec = np.array([r["eval_cost"] for r in rs])
        lines.append(
            f"| {mode} | {v.mean():.0f} ± {v.std():.0f} ({w.mean():.0f}) | {ratio} | "
            f"{er.mean():.2f} ± {er.std():.2f} | {ec.mean():.1f} ± {ec.std():.1f} | "
            f"{np.mean([r['shield_active_steps'] for r in rs]):.0f} | "
            f"{np.mean([r['barrier_ready'] for r in rs]):.2f} | "
            f"{np.mean([r['train_wall_s'] for r in rs]):.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        curves = [np.array(r["curve"]) for r in rows if r["mode"] == mode and r["curve"]]
        n = min(len(c) for c in curves)
        steps = curves[0][:n, 0]
        vals = np.stack([c[:n, 1] for c in curves])
        ax.plot(steps, vals.mean(0), label=mode)
        ax.fill_between(steps, vals.min(0), vals.max(0), alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("cumulative violating env steps")
    ax.set_title("training violations (band: min-max over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report_progress(path: Path, row: dict, done: int, total: int, elapsed_s: float) -> None:
    """Print and append (to ``path``) the headline numbers of one finished run."""
    keys = ("mode", "seed", "cum_violations", "eval_return", "eval_cost", "shield_active_steps",
            "train_wall_s")
    values = {k: row[k] for k in keys}
    print(f"[{done}/{total}, {elapsed_s / 60:.1f} min] {values}", flush=True)
    new_file = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(keys))
        if new_file:
            writer.writeheader()
        writer.writerow(values)


def main(args: Args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(args, mode, seed) for mode in args.modes for seed in args.seeds]
    start = time.perf_counter()
    progress = args.out / "progress.csv"  # one line per finished run, to watch a long benchmark
    progress.unlink(missing_ok=True)
    rows = []
    with contextlib.ExitStack() as stack:
        if args.workers > 1:
            pool = stack.enter_context(mp.get_context("spawn").Pool(args.workers))
            finished = pool.imap_unordered(run_one, jobs, chunksize=1)
        else:
            finished = map(run_one, jobs)
        for row in finished:
            rows.append(row)
            report_progress(progress, row, len(rows), len(jobs), time.perf_counter() - start)
    order = {(mode, seed): i for i, (_, mode, seed) in enumerate(jobs)}
    rows.sort(key=lambda r: order[(r["mode"], r["seed"])])
    wall = time.perf_counter() - start
    machine = f"{platform.node()} ({os.cpu_count()} cores)"
    header = (f"# safety benchmark {date.today()}, {machine}, {args.env_id} level {args.level}, "
              f"{args.size}px, {args.agent_steps * args.action_repeat} env steps/run, "
              f"{len(args.seeds)} seeds, latent refresh every "
              f"{args.refresh_every or 'off'} agent steps, learn from executed actions "
              f"{args.learn_from_executed}, {wall / 60:.1f} min total")
    table = summarise(rows, args)
    print(header)
    print(table)
    with open(args.out / "runs.csv", "w", newline="") as f:
        keys = [k for k in rows[0] if k != "curve"]
        writer = csv.DictWriter(f, fieldnames=["date", *keys])
        writer.writeheader()
        for r in rows:
            writer.writerow({"date": date.today(), **{k: r[k] for k in keys}})
    with open(args.out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["mode", "seed", "env_steps", "cum_violations", "barrier_ready", "intervention_rate"])
        for r in rows:
            for point in r["curve"]:
                writer.writerow([r["mode"], r["seed"], *point])
    (args.out / "summary.md").write_text(header + "\n\n" + table + "\n\nargs: " + str(
        {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()}) + "\n")
    plot(rows, args.out / "violations.png")


if __name__ == "__main__":
    main(tyro.cli(Args))
