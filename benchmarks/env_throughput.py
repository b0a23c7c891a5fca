"""Env throughput: raw safety-gymnasium vision vs lbwrap's make_pixel_env, PixelHazard, 1 and N procs.

    python benchmarks/env_throughput.py [--steps 1000] [--procs 2]

Prints a table, writes ``benchmarks/results/env_throughput.csv``. Random actions, 64x64 images,
steps/s counted in *env* steps (an agent step with action repeat 2 is 2 env steps).
"""

from __future__ import annotations

import csv
import os
import platform
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import tyro

os.environ.setdefault("MUJOCO_GL", "egl")

RESULTS = Path(__file__).parent / "results"


@dataclass
class Args:
    steps: int = 1000
    """Env steps per measurement (per process)."""
    procs: int = 2
    """Processes for the SubprocVecEnv rows (the machine has 2 cores)."""
    vision_id: str = "SafetyPointGoal1Vision-v0"
    """safety-gymnasium vision task."""
    size: int = 64
    """Image side."""
    repeats: int = 3
    """Alternating repeats of the raw/adapter pair (best of each is reported)."""


def _raw_safety(vision_id: str, size: int, steps: int) -> float:
    from lbwrap.envs.safety_gym import make_safety_vision_env

    env = make_safety_vision_env(vision_id, size=size)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, 2))
    start = time.perf_counter()
    for a in actions:
        out = env.step(a)
        if out[3] or out[4]:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def _adapted(env_id: str, size: int, steps: int, action_repeat: int = 2,
             render_every_substep: bool = False) -> float:
    from lbwrap.envs import make_pixel_env

    env = make_pixel_env(env_id, size=size, action_repeat=action_repeat)
    if render_every_substep:  # what lbwrap did before: a frame per sub-step, the first unused
        adapter = env
        while not hasattr(adapter, "skip_substep_observations"):
            adapter = adapter.env
        adapter.skip_substep_observations = False
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n_agent = steps // action_repeat
    actions = rng.uniform(-1, 1, (n_agent, 2)).astype(np.float32)
    start = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return n_agent * action_repeat / elapsed


def _make_factory(env_id: str, size: int, seed: int):
    def factory():
        from lbwrap.envs import make_pixel_env

        env = make_pixel_env(env_id, size=size, action_repeat=2)
        env.reset(seed=seed)
        return env

    return factory


def _vector(env_id: str, size: int, steps: int, procs: int) -> float:
    from stable_baselines3.common.vec_env import SubprocVecEnv

    venv = SubprocVecEnv([_make_factory(env_id, size, i) for i in range(procs)], start_method="spawn")
    venv.reset()
    n_agent = steps // 2
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(n_agent):
        venv.step(rng.uniform(-1, 1, (procs, 2)).astype(np.float32))
    elapsed = time.perf_counter() - start
    venv.close()
    return n_agent * 2 * procs / elapsed


def main(args: Args) -> None:
    rows: list[tuple[str, str, int, float]] = []
    raw_best, adapted_best, every_best = 0.0, 0.0, 0.0
    for _ in range(args.repeats):  # alternate, so drifting machine load hits all alike
        raw_best = max(raw_best, _raw_safety(args.vision_id, args.size, args.steps))
        adapted_best = max(adapted_best, _adapted(args.vision_id, args.size, args.steps))
        every_best = max(every_best, _adapted(args.vision_id, args.size, args.steps,
                                              render_every_substep=True))
    rows.append((args.vision_id, "raw safety-gymnasium (Dict obs, renders every step)", 1,
                 raw_best))
    rows.append((args.vision_id, "make_pixel_env (repeat 2, renders every sub-step)", 1,
                 every_best))
    rows.append((args.vision_id, "make_pixel_env (repeat 2, renders the agent's frame only)", 1,
                 adapted_best))
    rows.append((args.vision_id, f"make_pixel_env, SubprocVecEnv x{args.procs}", args.procs,
                 _vector(args.vision_id, args.size, args.steps, args.procs)))
    ph_steps = args.steps * 20
    rows.append(("lbwrap/PixelHazard-v0", "make_pixel_env (repeat 2)", 1,
                 max(_adapted("lbwrap/PixelHazard-v0", args.size, ph_steps) for _ in range(3))))
    rows.append(("lbwrap/PixelHazard-v0", f"make_pixel_env, SubprocVecEnv x{args.procs}", args.procs,
                 _vector("lbwrap/PixelHazard-v0", args.size, ph_steps, args.procs)))

    overhead = (raw_best / every_best - 1.0) * 100.0  # same rendering work as the raw env
    speedup = adapted_best / every_best
    machine = f"{platform.node() or 'unknown'} ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    print(f"# env throughput, {date.today()}, {machine}, {args.size}x{args.size}, random actions")
    print("| env | setting | processes | env steps/s |\n|---|---|---|---|")
    for env_id, setting, procs, sps in rows:
        print(f"| {env_id} | {setting} | {procs} | {sps:,.0f} |")
    print(f"\nmake_pixel_env overhead vs raw env time (both rendering every step): {overhead:+.1f}% "
          "(budget: <= 5%)")
    print(f"rendering only the agent's frame under repeat 2: {speedup:.2f}x env steps/s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "env_throughput.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["date", "machine", "env", "setting", "processes", "env_steps_per_s"])
        for env_id, setting, procs, sps in rows:
            writer.writerow([date.today(), machine, env_id, setting, procs, f"{sps:.1f}"])
        writer.writerow([date.today(), machine, args.vision_id, "adapter overhead %", 1, f"{overhead:.2f}"])
        writer.writerow([date.today(), machine, args.vision_id, "agent-frame-only speedup x", 1,
                         f"{speedup:.3f}"])


if __name__ == "__main__":
    main(tyro.cli(Args))
