"""What SAC can learn on PixelHazard in a CPU budget when it sees the *true state* (no pixels).

    python benchmarks/state_sac_reference.py        # goal task: 4 settings x 5000 agent steps, ~5 min
    python benchmarks/state_sac_reference.py --task run --settings auto_0.1:10 --seeds 0 1 2 3 4

A reference for the pixel benchmarks: the observation is the true state (no world model, no
barrier); actions are repeated twice as in the pixel benchmarks; the cost is ignored.

* ``--task goal`` (``lbwrap/PixelHazard-v0``): robot position, goal and every hazard relative to
  the robot.
* ``--task run`` (``lbwrap/PixelHazardRun-v0``): the robot's y and the ``RUN_HAZARDS`` hazards
  nearest to the robot among those within 2 units, relative to it (absent ones as far away).
 It shows whether a budget is long enough to learn the task
at all, and which SAC settings make the small per-step reward (~0.05) visible next to SAC's
entropy bonus. Evaluation: deterministic full episodes on held-out layouts, in the env's reward
units. Writes ``<out>/state_sac_reference.md`` and ``.csv``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tyro
from _report import machine, write_csv, write_markdown

import lbwrap  # noqa: F401  (quiet gymnasium plugin import)
from lbwrap.envs.pixel_hazard import LEVEL_NUM_HAZARDS, PixelHazardEnv
from lbwrap.envs.pixel_hazard_run import PixelHazardRunEnv

#: Hazards the run task's true state lists (the nearest ones, within ``RUN_REACH``).
RUN_HAZARDS = 8
RUN_REACH = 2.0


class TrueState(gym.ObservationWrapper):
    """Robot position, goal - robot, every hazard - robot (flattened), instead of the image."""

    def __init__(self, env: PixelHazardEnv) -> None:
        super().__init__(env)
        n = 4 + 2 * env.unwrapped.num_hazards
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (n,), np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        base = self.env.unwrapped
        robot = base.robot_pos
        parts = [robot, base.goal_pos - robot]
        if len(base.hazards):
            parts.append((base.hazards - robot).reshape(-1))
        return np.concatenate(parts).astype(np.float32)


class RunTrueState(gym.ObservationWrapper):
    """Robot y, then the nearest hazards relative to the robot (padded with far-away ones)."""

    def __init__(self, env: PixelHazardRunEnv) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (1 + 2 * RUN_HAZARDS,), np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        base = self.env.unwrapped
        robot = base.robot_pos
        rel = base.hazards_between(robot[0] - RUN_REACH, robot[0] + RUN_REACH) - robot
        rel = rel[np.argsort(np.linalg.norm(rel, axis=1))][:RUN_HAZARDS]
        padded = np.tile(np.array([RUN_REACH, 0.0]), (RUN_HAZARDS, 1))  # "nothing near"
        padded[: len(rel)] = rel
        return np.concatenate([[robot[1]], padded.reshape(-1)]).astype(np.float32)


class RepeatAndScale(gym.Wrapper):
    """Repeat each action ``repeat`` times; the agent's reward is ``scale`` x the env's."""

    def __init__(self, env: gym.Env, repeat: int, scale: float) -> None:
        super().__init__(env)
        self.repeat, self.scale = repeat, scale

    def step(self, action):
        total, cost = 0.0, 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            cost += float(info["cost"])
            if terminated or truncated:
                break
        info = dict(info, cost=cost, env_reward=total)
        return obs, self.scale * total, terminated, truncated, info


@dataclass
class Args:
    task: str = "goal"
    """``goal`` (lbwrap/PixelHazard-v0) or ``run`` (lbwrap/PixelHazardRun-v0)."""
    level: int = 1
    """PixelHazard level (goal: 0/8/16 hazards; run: 0/1/2 hazards per unit of corridor)."""
    agent_steps: int = 5000
    """SAC agent steps per setting (2 env steps each)."""
    settings: list[str] = field(default_factory=lambda: ["auto:1", "auto_0.1:1", "auto:10",
                                                         "auto_0.1:10"])
    """``ent_coef:reward_scale`` pairs."""
    eval_episodes: int = 3
    """Deterministic evaluation episodes on held-out layouts (reset seeds >= 1e6)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds (one run per setting and seed)."""
    out: Path = Path("benchmarks/results")
    """Output folder."""


def make_env(args: Args, scale: float) -> gym.Env:
    if args.task == "run":
        return RepeatAndScale(RunTrueState(PixelHazardRunEnv(level=args.level, size=16)),
                              repeat=2, scale=scale)
    if args.task != "goal":
        raise ValueError(f"--task must be 'goal' or 'run', got {args.task!r}")
    env = PixelHazardEnv(level=args.level, size=16, max_episode_steps=500)
    assert env.num_hazards == LEVEL_NUM_HAZARDS[args.level]
    return RepeatAndScale(TrueState(env), repeat=2, scale=scale)


def run(args: Args, ent_coef: str, scale: float, seed: int) -> dict:
    from stable_baselines3 import SAC

    env = make_env(args, scale)
    agent = SAC("MlpPolicy", env, learning_starts=500, ent_coef=ent_coef, seed=seed, verbose=0)
    start = time.perf_counter()
    agent.learn(args.agent_steps)
    train_s = time.perf_counter() - start
    returns, costs = [], []
    for k in range(args.eval_episodes):
        env = make_env(args, scale)
        obs, _ = env.reset(seed=1_000_000 + k)
        ret = cost = 0.0
        done = False
        while not done:
            action, _ = agent.predict(obs, deterministic=True)
            obs, _, terminated, truncated, info = env.step(action)
            ret += info["env_reward"]
            cost += info["cost"]
            done = terminated or truncated
        returns.append(ret)
        costs.append(cost)
    return {"task": args.task, "level": args.level, "seed": seed, "ent_coef": ent_coef,
            "reward_scale": scale, "agent_steps": args.agent_steps,
            "eval_return_mean": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
            "eval_cost_mean": float(np.mean(costs)), "train_s": train_s}


def main(args: Args) -> None:
    torch.set_num_threads(1)
    rows = []
    for setting in args.settings:
        ent_coef, scale = setting.split(":")
        for seed in args.seeds:
            rows.append(run(args, ent_coef, float(scale), seed))
            print(rows[-1], flush=True)
    name = "state_sac_reference" if args.task == "goal" else f"state_sac_reference_{args.task}"
    write_csv(args.out / f"{name}.csv", rows)
    env_id = "PixelHazard" if args.task == "goal" else "PixelHazardRun"
    lines = [(f"# SAC on {env_id}'s true state {date.today()}, {machine()}, level {args.level}, "
              f"{args.agent_steps} agent steps (x2 env steps), seeds {args.seeds}, "
              f"{args.eval_episodes} held-out episodes each"), "",
             "| ent_coef | reward scale | seed | eval return (env units) | eval cost | train s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['ent_coef']} | {r['reward_scale']:g} | {r['seed']} | "
                     f"{r['eval_return_mean']:.1f} ± {r['eval_return_std']:.1f} | "
                     f"{r['eval_cost_mean']:.0f} | {r['train_s']:.0f} |")
    for setting in args.settings:
        ent_coef, scale = setting.split(":")
        means = [r["eval_return_mean"] for r in rows
                 if r["ent_coef"] == ent_coef and r["reward_scale"] == float(scale)]
        lines.append(f"| {ent_coef} | {float(scale):g} | mean of {len(means)} | "
                     f"{np.mean(means):.1f} ± {np.std(means):.1f} | | |")
    write_markdown(args.out / f"{name}.md", lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
