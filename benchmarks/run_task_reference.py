"""What the run task asks: scripted, privileged reference policies on ``lbwrap/PixelHazardRun-v0``.

    python benchmarks/run_task_reference.py                    # levels 1 and 2, 10 episodes each

Per level: a hazard-blind straight runner (the most return there is, and the violations a policy
that ignores the hazards makes) and the privileged :class:`~lbwrap.eval.run_reference.HazardAvoider`
(how much return an agent that avoids every hazard can keep: its detour cost), on the evaluation
layouts the safety benchmark uses (reset seeds from 1e6). Also the env's raw speed with random
actions (numpy rendering, one process). Writes ``<out>/run_task_reference.{md,csv}``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_csv, write_markdown

from lbwrap.envs.pixel_hazard_run import PixelHazardRunEnv
from lbwrap.eval.evaluate import EVAL_SEED_OFFSET
from lbwrap.eval.run_reference import HazardAvoider, StraightRunner, run_reference_episode


@dataclass
class Args:
    levels: list[int] = field(default_factory=lambda: [1, 2])
    """PixelHazardRun levels (hazards per chunk of length 1)."""
    episodes: int = 10
    """Episodes per policy and level (reset seeds EVAL_SEED_OFFSET + k)."""
    max_episode_steps: int = 500
    """Episode length in env steps (the benchmark's)."""
    speed_steps: int = 5000
    """Random-action env steps timed per level."""
    out: Path = Path("benchmarks/results")
    """Output folder."""


def env_speed(level: int, steps: int) -> float:
    """Env steps per second with random actions (resets included)."""
    env = PixelHazardRunEnv(level=level)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    start = time.perf_counter()
    for a in actions:
        if env.step(a)[3]:
            env.reset()
    return steps / (time.perf_counter() - start)


def main(args: Args) -> None:
    rows = []
    for level in args.levels:
        env = PixelHazardRunEnv(level=level, max_episode_steps=args.max_episode_steps)
        top = args.max_episode_steps * env.config.max_step * env.config.reward_progress
        speed = env_speed(level, args.speed_steps)
        for name, policy in (("straight (blind)", StraightRunner(env)),
                             ("avoider (privileged)", HazardAvoider(env))):
            eps = [run_reference_episode(env, policy, EVAL_SEED_OFFSET + k)
                   for k in range(args.episodes)]
            ret = np.array([e["return"] for e in eps])
            viol = np.array([e["violations"] for e in eps])
            rows.append({"level": level, "policy": name, "episodes": args.episodes,
                         "return_mean": float(ret.mean()), "return_min": float(ret.min()),
                         "return_share_of_max": float(ret.mean() / top),
                         "violations_mean": float(viol.mean()), "violations_max": float(viol.max()),
                         "violating_step_share": float(viol.mean() / args.max_episode_steps),
                         "env_steps_per_s": speed})
    cfg = PixelHazardRunEnv(max_episode_steps=args.max_episode_steps).config
    top = args.max_episode_steps * cfg.max_step * cfg.reward_progress
    lines = [(f"# run task reference {date.today()}, {machine()}, {args.episodes} episodes of "
             f"{args.max_episode_steps} env steps per row (max return {top:g}), evaluation "
             "layouts"), "",
             ("| level | policy | return (min) | share of max | violations / episode (max) | "
             "violating steps | env steps/s |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['level']} | {r['policy']} | {r['return_mean']:.2f} ({r['return_min']:.2f}) "
                     f"| {100 * r['return_share_of_max']:.0f} % | {r['violations_mean']:.1f} "
                     f"({r['violations_max']:.0f}) | {100 * r['violating_step_share']:.0f} % | "
                     f"{r['env_steps_per_s']:.0f} |")
    lines += ["", "command: python benchmarks/run_task_reference.py " + " ".join(sys.argv[1:])]
    write_markdown(args.out / "run_task_reference.md", lines)
    write_csv(args.out / "run_task_reference.csv", rows)


if __name__ == "__main__":
    main(tyro.cli(Args))
