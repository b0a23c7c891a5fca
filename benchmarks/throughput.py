"""Training throughput, side by side: plain SB3 SAC (CnnPolicy on pixels) vs lbwrap's shielded SAC.

    python benchmarks/throughput.py                                  # CPU, tiny budget
    python benchmarks/throughput.py --num-envs 8 --device cuda --world-model paper \\
        --model-batch 64 --model-seq-len 50 --autocast bf16 --sac-gradient-steps 8 \\
        --agent-steps 4000 --out benchmarks/results/throughput_gpu    # what gpu_vision.sh runs

Both variants train on the same pixel envs (``make_pixel_env``, ``num_envs`` in SubprocVecEnv
workers when > 1) for ``agent_steps`` SB3 timesteps (all envs together) after the same random
warm-up. It prints a table and writes ``throughput.csv`` / ``throughput.md``: end-to-end env
steps/s, the share of wall time in the envs, the world model (latent filter of every frame, and
its co-trained updates with the barriers), the shield and SAC's gradient steps, and the wall time
a 1M-env-step run would take at that rate.
"""

from __future__ import annotations

import csv
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import tyro

os.environ.setdefault("MUJOCO_GL", "egl")

from _report import machine, write_markdown

BUCKETS = ("env", "world model (filter)", "world model + barriers (updates)", "shield", "SAC")


@dataclass
class Args:
    env_id: str = "SafetyPointGoal1Vision-v0"
    """Pixel env (``lbwrap.make_pixel_env`` id)."""
    num_envs: int = 2
    """Envs in SubprocVecEnv workers (1: DummyVecEnv)."""
    agent_steps: int = 600
    """SB3 timesteps to time per variant (all envs together; env steps = x action_repeat)."""
    learning_starts: int = 200
    """Random warm-up, in SB3 timesteps (both variants)."""
    device: str = "cpu"
    """Torch device ("cuda" on a GPU box)."""
    world_model: Literal["cpu", "paper"] = "cpu"
    """World-model size preset."""
    model_batch: int = 16
    """World-model batch: sequences per update."""
    model_seq_len: int = 32
    """World-model batch: steps per sequence."""
    autocast: Literal["off", "bf16"] = "off"
    """Mixed precision of the safety-model updates."""
    train_every: int = 100
    """SB3 timesteps between safety-model training calls."""
    updates_per_train: int = 10
    """Safety-model updates per call."""
    sac_gradient_steps: int = 1
    """SAC gradient steps per vector step."""
    sac_batch_size: int = 256
    """SAC minibatch size."""
    size: int = 64
    action_repeat: int = 2
    threads: int = 1
    """torch CPU threads."""
    out: Path = Path("benchmarks/results/throughput_cpu")


class Timings:
    """Wall time per bucket, filled by wrapping methods of live objects."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, obj: Any, name: str, bucket: str,
             exclude: Callable[[], float] | None = None) -> None:
        """Time ``obj.name`` into ``bucket``; ``exclude`` reads time already counted elsewhere
        (inner calls) so that it is subtracted."""
        method = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            inner = exclude() if exclude else 0.0
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.seconds[bucket] += elapsed - ((exclude() if exclude else 0.0) - inner)

        setattr(obj, name, timed)


def make_envs(args: Args) -> list[Callable[[], Any]]:
    import functools

    import lbwrap

    return [functools.partial(lbwrap.make_pixel_env, args.env_id, size=args.size,
                              action_repeat=args.action_repeat)] * args.num_envs


def time_plain_sac(args: Args) -> tuple[float, dict[str, float]]:
    """SB3 SAC with its CnnPolicy on the pixel envs: what a user without lbwrap would run."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    fns = make_envs(args)
    venv = SubprocVecEnv(fns, start_method="spawn") if args.num_envs > 1 else DummyVecEnv(fns)
    timings = Timings()
    timings.wrap(venv, "step_async", "env")
    timings.wrap(venv, "step_wait", "env")
    agent = SAC("CnnPolicy", venv, learning_starts=args.learning_starts,
                batch_size=args.sac_batch_size, gradient_steps=args.sac_gradient_steps,
                buffer_size=max(10_000, args.agent_steps + 1), device=args.device, seed=0,
                verbose=0)
    timings.wrap(agent, "train", "SAC")
    start = time.perf_counter()
    agent.learn(args.agent_steps)
    wall = time.perf_counter() - start
    venv.close()
    return wall, dict(timings.seconds)


def time_lbwrap_shield(args: Args) -> tuple[float, dict[str, float]]:
    """lbwrap's shielded SAC on the world model's latents, co-training world model and barriers."""
    from lbwrap.sb3.recipes import AgentRecipe, build_safe_agent
    from lbwrap.sb3.vec_wrappers import VecBarrierShield, find_vec_latent

    recipe = AgentRecipe(
        mode="shield", num_envs=args.num_envs, subproc=args.num_envs > 1,
        train_every=args.train_every, updates_per_train=args.updates_per_train,
        model_learning_starts=args.learning_starts, reward_scale=10.0,
        intervention_penalty=0.1, pretrain_updates=0, pretrain_min_unsafe=0,  # as measured
        sac_kwargs={"learning_starts": args.learning_starts, "batch_size": args.sac_batch_size,
                    "gradient_steps": args.sac_gradient_steps, "ent_coef": "auto_0.1",
                    "buffer_size": max(10_000, args.agent_steps + 1)})
    built = build_safe_agent(
        make_envs(args), recipe, seed=0, device=args.device,
        safety_kwargs={"preset": args.world_model, "batch_size": args.model_batch,
                       "seq_len": args.model_seq_len, "autocast": args.autocast})
    timings = Timings()
    latent = find_vec_latent(built.env)
    raw = latent.venv
    timings.wrap(raw, "step_async", "env")
    timings.wrap(raw, "step_wait", "env")
    # the latent wrapper's step_wait = raw env + filtering the new frames
    timings.wrap(latent, "step_wait", "world model (filter)",
                 exclude=lambda: timings.seconds["env"])
    shield = built.env
    while not isinstance(shield, VecBarrierShield):
        shield = shield.venv
    timings.wrap(shield, "step_async", "shield",
                 exclude=lambda: timings.seconds["env"])
    timings.wrap(built.safety, "update", "world model + barriers (updates)")
    timings.wrap(built.agent, "train", "SAC")
    start = time.perf_counter()
    built.agent.learn(args.agent_steps, callback=built.callback())
    wall = time.perf_counter() - start
    built.env.close()
    return wall, dict(timings.seconds)


def row(label: str, args: Args, wall: float, seconds: dict[str, float]) -> dict[str, Any]:
    env_steps = args.agent_steps * args.action_repeat
    rate = env_steps / wall
    shares = {b: 100.0 * seconds.get(b, 0.0) / wall for b in BUCKETS}
    other = max(0.0, 100.0 - sum(shares.values()))
    return {"variant": label, "env_steps": env_steps, "wall_s": round(wall, 2),
            "env_steps_per_s": round(rate, 1),
            **{f"{b} %": round(v, 1) for b, v in shares.items()}, "other %": round(other, 1),
            "1M env steps (h)": round(1e6 / rate / 3600, 2)}


def main(args: Args) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(max(1, args.threads))
    rows = []
    wall, seconds = time_plain_sac(args)
    rows.append(row("SB3 SAC, CnnPolicy on pixels (no safety)", args, wall, seconds))
    wall, seconds = time_lbwrap_shield(args)
    rows.append(row("lbwrap shielded SAC (world model + barriers co-trained)", args, wall, seconds))
    ratio = rows[1]["env_steps_per_s"] / rows[0]["env_steps_per_s"]
    header = (f"# training throughput, {time.strftime('%Y-%m-%d')}, {machine()}, {args.env_id}, "
              f"{args.num_envs} envs, device {args.device}, {args.agent_steps * args.action_repeat} "
              f"env steps per variant")
    cols = list(rows[0])
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", f"lbwrap / plain SAC env steps/s: {ratio:.2f}x",
              "", "args: " + str({k: str(v) for k, v in asdict(args).items()})]
    args.out.mkdir(parents=True, exist_ok=True)
    write_markdown(args.out / "throughput.md", lines)  # prints it too
    with open(args.out / "throughput.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
