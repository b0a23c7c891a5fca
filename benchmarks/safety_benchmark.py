"""Safety benchmark: safety modes x seeds at one step budget, violations and return judged together.

    python benchmarks/safety_benchmark.py                                  # PixelHazard, all modes
    python benchmarks/safety_benchmark.py --env-id lbwrap/PixelHazardRun-v0 --level 2 \
        --agent-steps 5000 --seeds 0 1 2 3 4 --out benchmarks/results/safety_pixelhazard_run
    python benchmarks/safety_benchmark.py ... --report-only                # table of finished runs

Every mode sees the same learned latent observations and co-trains its own safety model (see
``lbwrap.sb3.recipes``); they differ only in how safety enters. Cumulative training violations
count every violating *env* step (action repeat included), random warm-up included and also
reported apart. Evaluation: deterministic episodes on held-out layouts (reset seeds >= 1e6).

The grid runs on Ray (``pip install "lbwrap[bench]"``): a local cluster of ``--parallel`` CPUs,
or a running one with ``--address``. Each run writes ``<out>/runs/<mode>-seed<k>/result.json``
atomically; the same command started again skips finished runs (and refuses a folder made with
other settings). The table (``_aggregate.py``: rliable IQM and 95 % stratified-bootstrap CIs of
cumulative violations, evaluation return and cost, violations per 1000 env steps after the
readiness gate opened, env steps until the rolling violation rate stays low, wall time; rliable's
probability of improvement against ``lagrangian`` and ``none``) goes to ``<out>/summary.md`` and
``summary.csv``; per run ``runs.csv`` and ``curves.csv``; plots ``violations.png`` (cumulative
violations and training return vs env steps, seeds as bands) and ``tradeoff.png``.
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script
from _aggregate import (
    SAFE_RATE_THRESHOLD,
    SAFE_RATE_WINDOW,
    markdown_table,
    paired_lines,
    plot_curves,
    plot_tradeoff,
    run_metrics,
    summarise_groups,
)
from _grid import finished_results, run_grid
from _report import machine, write_csv, write_markdown

from lbwrap.sb3.recipes import MODES


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
    label_discount: float = 0.5
    """Weight ratio between consecutive steps of the action barrier's label horizon
    (``ActionBarrierConfig.discount``)."""
    label_horizon: int = 3
    """The action barrier's label horizon (``ActionBarrierConfig.horizon``; runs before
    2026-11-27 used 1)."""
    label_steps: int = 4
    """Action-barrier gradient steps per world-model batch (``ActionBarrierConfig.steps_per_batch``)."""
    penalty_scale: float = 1.0
    """Scale of the barrier penalty (modes penalty, penalty+shield; ``AgentRecipe.penalty_scale``)."""
    intervention_penalty: float = 0.1
    """Reward (env units) subtracted when the shield replaces the agent's action (shield modes;
    the committed runs other than ``safety_pixelhazard_intervention_penalty`` used 0)."""
    ready_release_accuracy: float | None = None
    """Gate hysteresis (``SafetyModelExperimental.ready_release_accuracy``): once open, the shield stays
    on while the accuracies stay at or above this; None (default): closes below 0.8."""
    learn_from_executed: bool = False
    """SAC stores the shield's executed action instead of its proposal (ExecutedActionRelabel)."""
    keep_proposal: bool = False
    """With --learn-from-executed: SAC stores the proposal's transition too (AgentRecipe.keep_proposal)."""
    barrier_term: Literal["imagined", "action"] = "imagined"
    """The actor's barrier term of the barrier modes (``AgentRecipe.barrier_term``): the
    paper's imagined B(z) ("imagined") or the latent action barrier at the proposal ("action")."""
    barrier_weight: float = 1.0
    """Weight of the actor's barrier term in the barrier modes (``AgentRecipe.barrier_weight``,
    the paper's eta: 1)."""
    shield_selection: str = "closest"
    """How the shield picks a substitute among passing actions: closest to the proposal, or the
    best by the agent's critic ("critic")."""
    shield_eps: float | None = None
    """Margin of the action-barrier shield on its logit scale (a proposal passes when
    ``B_next >= shield_eps``); None: the library's default (``ActionBarrierConfig.margin``)."""
    eval_episodes: int = 3
    """Deterministic evaluation episodes (each on its own held-out layout)."""
    num_envs: int = 1
    """Envs per run; > 1 runs them in SubprocVecEnv workers (the GPU layout: 8)."""
    device: str = "cpu"
    """Torch device of agent and safety model ("cuda" on a GPU box)."""
    world_model: Literal["cpu", "paper"] = "cpu"
    """World-model size preset (``LatentSafetyModel.for_env(preset=...)``)."""
    model_batch: int | None = None
    """World-model batch: sequences per update (None: the model's default, 16)."""
    model_seq_len: int | None = None
    """World-model batch: steps per sequence (None: the model's default, 32)."""
    autocast: Literal["off", "bf16"] = "off"
    """Mixed precision of the safety-model updates (bf16 on CUDA)."""
    sac_gradient_steps: int = 1
    """SAC gradient steps per vector step (one vector step = num_envs transitions)."""
    sac_batch_size: int = 256
    """SAC minibatch size."""
    max_episode_steps: int = 500
    """PixelHazard episode length in env steps."""
    parallel: int = 2
    """Runs in parallel on the local Ray cluster (one CPU and one torch thread each)."""
    address: str | None = None
    """A running Ray cluster to use ("auto", "ray://host:10001"); None: start a local one."""
    report_only: bool = False
    """Write the table and plots from the runs already finished in ``--out`` and run nothing
    (the same command without it runs the rest)."""
    safe_threshold: float = SAFE_RATE_THRESHOLD
    """Rolling violation rate (per env step) that counts as safe for "env steps to safe"."""
    safe_window: int = SAFE_RATE_WINDOW
    """Window of that rolling rate, env steps."""
    out: Path = Path("benchmarks/results/safety_pixelhazard")
    """Output folder."""
    save_agents: Path | None = None
    """Also save each trained agent with its safety model (``SafePixelAgent`` checkpoint sets) in
    ``<save_agents>/<mode>-seed<k>/``, for ``benchmarks/shield_oracle.py``; None: do not."""


def make_env_fn(args: Args, seed: int):
    def make():
        from stable_baselines3.common.monitor import Monitor

        import lbwrap

        # Monitor: the env's own episode return (before reward scaling and penalties)
        return Monitor(lbwrap.make_pixel_env(args.env_id, **env_kwargs(args)))
    return make


def env_kwargs(args: Args) -> dict:
    """The ``lbwrap.make_pixel_env`` arguments of ``args`` (besides the env id)."""
    import lbwrap

    kwargs: dict = {"size": args.size, "action_repeat": args.action_repeat}
    if args.env_id in (lbwrap.PIXEL_HAZARD_ID, lbwrap.PIXEL_HAZARD_RUN_ID):
        kwargs.update(level=args.level, max_episode_steps=args.max_episode_steps,
                      view_radius=args.view_radius)
    return kwargs


def train(args: Args, mode: str, seed: int):
    """Build one mode's agent and safety model and train it; returns ``(built, record)``.

    ``record``: the training curve, the episodes' (env step, return), the violations of the
    random warm-up and the training wall time.
    """
    import torch

    import lbwrap  # noqa: F401  (first: keeps gymnasium's plugin import quiet)

    torch.set_num_threads(1)
    from stable_baselines3.common.callbacks import BaseCallback

    from lbwrap.barrier import ActionBarrierConfig, FilterConfig
    from lbwrap.experimental import RecipeExperimental, SafetyModelExperimental
    from lbwrap.sb3.recipes import AgentRecipe, build_safe_agent

    recipe = AgentRecipe(
        mode=mode, train_every=args.train_every, updates_per_train=args.updates_per_train,
        model_learning_starts=args.model_learning_starts,
        pretrain_updates=args.pretrain_updates, pretrain_min_unsafe=args.pretrain_min_unsafe,
        experimental=RecipeExperimental(refresh_every=args.refresh_every),
        learn_from_executed=args.learn_from_executed, keep_proposal=args.keep_proposal,
        intervention_penalty=args.intervention_penalty, penalty_scale=args.penalty_scale,
        shield_selection=args.shield_selection, barrier_term=args.barrier_term,
        barrier_weight=args.barrier_weight, reward_scale=args.reward_scale,
        num_envs=args.num_envs, subproc=args.num_envs > 1,
        sac_kwargs={"learning_starts": args.learning_starts, "buffer_size": 200_000,
                    "ent_coef": args.ent_coef, "gradient_steps": args.sac_gradient_steps,
                    "batch_size": args.sac_batch_size},
    )
    safety_kwargs: dict = {"action_barrier": ActionBarrierConfig(horizon=args.label_horizon,
                                                                 discount=args.label_discount,
                                                                 steps_per_batch=args.label_steps),
                           "experimental": SafetyModelExperimental(
                               ready_release_accuracy=args.ready_release_accuracy),
                           "preset": args.world_model, "autocast": args.autocast}
    for key, value in (("batch_size", args.model_batch), ("seq_len", args.model_seq_len)):
        if value is not None:
            safety_kwargs[key] = value
    if args.shield_eps is not None:
        safety_kwargs["filter"] = FilterConfig(condition="barrier", eps=args.shield_eps,
                                               predictor="action_barrier")
    built = build_safe_agent([make_env_fn(args, seed)] * args.num_envs, recipe, seed=seed,
                             device=args.device, safety_kwargs=safety_kwargs)
    curve: list[tuple[int, int, float, float]] = []
    episodes: list[tuple[int, float]] = []  # (env step at the end, env return) of each episode
    warmup: dict[str, int] = {}

    class Recorder(BaseCallback):
        def _on_step(self) -> bool:
            t = self.num_timesteps
            n = self.training_env.num_envs
            cot = built.cotrain
            if "violations" not in warmup and t >= args.learning_starts:
                warmup["violations"] = cot.cumulative_violations
            for info in self.locals.get("infos", []):
                if "episode" in info:
                    episodes.append((t * args.action_repeat, float(info["episode"]["r"])))
            if t // 100 > (t - n) // 100:  # every 100 agent steps (all envs together)
                rate = cot.interventions / max(cot.shielded_steps, 1)
                curve.append((t * args.action_repeat, cot.cumulative_violations,
                              float(built.safety.ready), rate))
            return True

    start = time.perf_counter()
    built.agent.learn(args.agent_steps, callback=built.callback(Recorder()))
    record = {"curve": curve, "episodes": episodes, "warmup": warmup,
              "train_s": time.perf_counter() - start}
    return built, record


def run_one(job: tuple[Args, str, int]) -> dict:
    args, mode, seed = job
    from lbwrap.eval import evaluate_agent
    from lbwrap.sb3 import LatentRefresher, SafePixelAgent
    from lbwrap.sb3.recipes import SHIELD_MODES

    built, record = train(args, mode, seed)
    curve, episodes, warmup, train_s = (record["curve"], record["episodes"], record["warmup"],
                                        record["train_s"])
    shield = mode in SHIELD_MODES
    if args.save_agents is not None:  # for later analysis (benchmarks/shield_oracle.py)
        pixel_agent = SafePixelAgent.from_training(
            built.agent, built.safety, shield=shield, mode=mode,
            shield_selection=args.shield_selection, env_id=args.env_id,
            env_kwargs=env_kwargs(args))
        pixel_agent.save(args.save_agents / f"{mode}-seed{seed}")
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
        "learn_from_executed": args.learn_from_executed, "keep_proposal": args.keep_proposal,
        "intervention_penalty": args.intervention_penalty, "label_horizon": args.label_horizon,
        "penalty_scale": args.penalty_scale, "barrier_term": args.barrier_term,
        "barrier_weight": args.barrier_weight,
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
        "curve": [list(point) for point in curve], "episodes": [list(e) for e in episodes],
    }


#: Settings added after results were committed, with the value those results used: left out of
#: a run's identity at that value, so that the committed results still match their command.
ADDED_LATER = {"barrier_weight": 1.0, "barrier_term": "imagined", "keep_proposal": False, "penalty_scale": 1.0, "label_discount": 0.5, "label_steps": 4, "num_envs": 1, "device": "cpu", "world_model": "cpu",
               "model_batch": None, "model_seq_len": None, "autocast": "off",
               "sac_gradient_steps": 1, "sac_batch_size": 256}


def settings_of(job: tuple[Args, str, int]) -> dict:
    """What identifies a run: every setting that changes its result (not out / parallel / ...)."""
    args, mode, seed = job
    skip = {"out", "parallel", "address", "modes", "seeds", "safe_threshold", "safe_window",
            "report_only", "save_agents"}
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()
              if k not in skip and not (k in ADDED_LATER and v == ADDED_LATER[k])}
    return {**values, "mode": mode, "seed": seed}


def report_progress(path: Path, name: str, row: dict, done: int, total: int,
                    elapsed_s: float) -> None:
    """Print and append (to ``path``) the headline numbers of one finished run."""
    keys = ("mode", "seed", "cum_violations", "eval_return", "eval_cost", "shield_active_steps",
            "train_wall_s")
    values = {k: row[k] for k in keys}
    print(f"[{done}/{total}, {elapsed_s / 60:.1f} min] {name} {values}", flush=True)
    new_file = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(keys))
        if new_file:
            writer.writeheader()
        writer.writerow(values)


def write_outputs(args: Args, results: dict[str, dict], wall_s: float) -> None:
    """Table (rliable IQM + 95 % CIs), paired comparisons, CSVs and plots of a finished grid."""
    groups: dict[str, list[dict]] = {}
    for mode in args.modes:
        runs = [results[f"{mode}-seed{s}"] for s in args.seeds if f"{mode}-seed{s}" in results]
        if runs:
            groups[mode] = runs
    rows = summarise_groups(groups, args.safe_threshold, args.safe_window)
    header = (f"# safety benchmark {date.today()}, {machine()}, {args.env_id} level {args.level}, "
              f"{args.size}px, {args.agent_steps * args.action_repeat} env steps/run, "
              f"seeds {args.seeds} ({len(results)} of {len(args.modes) * len(args.seeds)} runs "
              f"finished), shield selection {args.shield_selection}, intervention penalty "
              f"{args.intervention_penalty}"
              + (f", {wall_s / 60:.1f} min this invocation" if wall_s else ""))
    lines = [header, "", "IQM [95 % stratified-bootstrap CI] over seeds (rliable).", "",
             *markdown_table(rows, args.safe_threshold, args.safe_window)]
    for reference in ("lagrangian", "none"):
        paired = paired_lines(groups, reference)
        if paired:
            lines += ["", (f"Probability of fewer training violations than {reference} "
                      "(rliable; 'better' when the interval lies above 0.5):"), "", *paired]
    lines += ["", "args: " + str({k: (str(v) if isinstance(v, Path) else v)
                                  for k, v in asdict(args).items()})]
    write_markdown(args.out / "summary.md", lines)
    write_csv(args.out / "summary.csv", rows)
    per_run = []
    for runs in groups.values():
        for r in runs:
            flat = {k: v for k, v in r.items() if k not in ("curve", "episodes")}
            per_run.append({**flat, **run_metrics(r, args.safe_threshold, args.safe_window)})
    write_csv(args.out / "runs.csv", per_run)
    with open(args.out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["mode", "seed", "env_steps", "cum_violations", "barrier_ready",
                         "intervention_rate"])
        for runs in groups.values():
            for r in runs:
                for point in r["curve"]:
                    writer.writerow([r["mode"], r["seed"], *point])
    title = f"{args.env_id} level {args.level}, {args.agent_steps * args.action_repeat} env steps"
    plot_curves(groups, args.out / "violations.png", title)
    plot_tradeoff(rows, args.out / "tradeoff.png", title)


def main(args: Args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    # seed-major: a grid stopped early holds whole seeds of every mode
    jobs = [(f"{mode}-seed{seed}", (args, mode, seed)) for seed in args.seeds for mode in args.modes]
    if args.report_only:
        results = finished_results(jobs, args.out, settings_of)
        if not results:
            raise SystemExit(f"{args.out} holds no finished runs of this grid")
        write_outputs(args, results, 0.0)
        return
    start = time.perf_counter()
    progress = args.out / "progress.csv"  # one line per finished run, to watch a long benchmark

    def on_result(name: str, row: dict, done: int, total: int) -> None:
        report_progress(progress, name, row, done, total, time.perf_counter() - start)

    gpus = 1.0 / max(args.parallel, 1) if args.device.startswith("cuda") else 0.0
    results = run_grid(jobs, run_one, args.out, settings_of, address=args.address,
                       parallel=args.parallel, on_result=on_result, gpus_per_run=gpus)
    write_outputs(args, results, time.perf_counter() - start)


if __name__ == "__main__":
    main(tyro.cli(Args))
