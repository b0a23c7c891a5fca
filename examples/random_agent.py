"""A short run of a random agent on a pixel safety task: returns, costs, violations and frames.

    python examples/random_agent.py                                  # SafetyPointGoal1Vision-v0
    python examples/random_agent.py --env-id lbwrap/PixelHazard-v0 --steps 2000

Prints one line per episode and a summary, and writes a few camera frames (PNG) and a GIF of the
first steps to ``--out-dir``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import tyro

import lbwrap


@dataclass
class Args:
    env_id: str = "SafetyPointGoal1Vision-v0"
    """Env id: a safety-gymnasium vision task or lbwrap/PixelHazard-v0."""
    steps: int = 500
    """Agent steps to run (each is `action_repeat` env steps)."""
    size: int = 64
    """Camera image side in pixels."""
    action_repeat: int = 2
    """Env steps per agent step; reward and cost are summed over them."""
    seed: int = 0
    """Seed of the layout and of the random actions."""
    out_dir: Path = Path("runs/random_agent")
    """Where frames and the GIF are written."""
    num_frames: int = 4
    """How many PNG frames to save (evenly spaced)."""
    gif_steps: int = 100
    """Length of the GIF, in agent steps."""


def main(args: Args) -> None:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    env = lbwrap.make_pixel_env(args.env_id, size=args.size, action_repeat=args.action_repeat)
    env.action_space.seed(args.seed)
    obs, _ = env.reset(seed=args.seed)
    frames = [obs.transpose(1, 2, 0)]
    ep_return = ep_cost = 0.0
    ep_violations = total_violations = episodes = 0
    start = time.perf_counter()
    try:
        for step in range(1, args.steps + 1):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            ep_return += reward
            ep_cost += info["cost"]
            ep_violations += info["violations"]
            total_violations += info["violations"]
            if len(frames) < args.gif_steps:
                frames.append(obs.transpose(1, 2, 0))
            if terminated or truncated or step == args.steps:
                episodes += 1
                ended = "ended" if (terminated or truncated) else "cut at --steps"
                print(
                    f"episode {episodes} ({ended}): return {ep_return:8.3f}  cost {ep_cost:6.1f}  "
                    f"violating env steps {ep_violations}"
                )
                ep_return = ep_cost = 0.0
                ep_violations = 0
                obs, _ = env.reset()
    finally:
        env.close()
    elapsed = time.perf_counter() - start
    env_steps = args.steps * args.action_repeat
    print(
        f"{args.env_id}: {args.steps} agent steps ({env_steps} env steps) in {elapsed:.1f} s "
        f"({env_steps / elapsed:.0f} env steps/s); violating env steps: {total_violations}"
    )
    for i, idx in enumerate(np.linspace(0, len(frames) - 1, args.num_frames).astype(int)):
        imageio.imwrite(args.out_dir / f"frame_{i}.png", frames[idx])
    imageio.mimsave(args.out_dir / "episode.gif", frames, duration=0.05)
    print(f"frames and GIF written to {args.out_dir}/")


if __name__ == "__main__":
    main(tyro.cli(Args))
