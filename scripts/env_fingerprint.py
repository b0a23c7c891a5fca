"""Fingerprint of a fixed-seed episode on every env lbwrap builds: frames, rewards, costs.

    python scripts/env_fingerprint.py out.json                  # write this stack's fingerprint
    python scripts/env_fingerprint.py out.json --compare ref.json   # and compare with another's

Run under two stacks (e.g. gymnasium 0.29.1 and 1.x, mujoco 3.1 and 3.x) to show that lbwrap's
compatibility code gives the same observations: ``scripts/test_compat.sh`` does. For each env:
50 agent steps with actions drawn from a fixed RNG after ``reset(seed=0)``; the SHA-256 of the
frames, the rewards and costs, and the largest pixel difference against the reference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ENVS = ("lbwrap/PixelHazard-v0", "lbwrap/PixelHazardRun-v0", "SafetyPointGoal1Vision-v0")
STEPS = 50


def fingerprint(env_id: str, steps: int = STEPS) -> dict:
    import lbwrap

    env = lbwrap.make_pixel_env(env_id, size=64)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    frames, rewards, costs = [obs], [], []
    for _ in range(steps):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        frames.append(obs)
        rewards.append(float(reward))
        costs.append(float(info["cost"]))
        if terminated or truncated:
            obs, _ = env.reset(seed=1)
    env.close()
    stack = np.stack(frames)
    return {"frames_sha256": hashlib.sha256(stack.tobytes()).hexdigest(),
            "frames_mean": float(stack.mean()), "rewards": rewards, "costs": costs,
            "frames": stack.reshape(len(frames), -1)[:, ::97].tolist()}  # a sample, for diffs


def versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("gymnasium", "stable_baselines3", "numpy", "mujoco", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def compare(mine: dict, ref: dict) -> list[str]:
    """One line per env: identical, or what differs."""
    lines = []
    for env_id in ENVS:
        a, b = mine["envs"][env_id], ref["envs"][env_id]
        same_frames = a["frames_sha256"] == b["frames_sha256"]
        pixel = int(np.abs(np.asarray(a["frames"], int) - np.asarray(b["frames"], int)).max())
        rewards = np.allclose(a["rewards"], b["rewards"], rtol=0, atol=1e-9)
        costs = a["costs"] == b["costs"]
        verdict = "identical" if same_frames and rewards and costs else (
            f"frames {'same' if same_frames else f'differ (max sampled pixel diff {pixel})'}, "
            f"rewards {'same' if rewards else 'differ'}, costs {'same' if costs else 'differ'}")
        lines.append(f"{env_id}: {verdict}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--compare", type=Path, default=None)
    args = parser.parse_args()
    mine = {"versions": versions(), "envs": {env_id: fingerprint(env_id) for env_id in ENVS}}
    args.out.write_text(json.dumps(mine))
    print(json.dumps(mine["versions"]))
    if args.compare is not None:
        ref = json.loads(args.compare.read_text())
        print(f"against {json.dumps(ref['versions'])}:")
        lines = compare(mine, ref)
        print("\n".join(lines))
        return 0 if all(line.endswith("identical") for line in lines) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
