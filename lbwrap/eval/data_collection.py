"""Collecting whole episodes for offline training and evaluation of the safety model.

Two collection policies:

* ``"random"``: uniform random actions, the classic choice for a world model's first data.
* ``"hazard-visitor"`` (:class:`HazardVisitor`): a *scripted, privileged* policy that drives from
  hazard to hazard, with noise. It reads the simulator's true robot and hazard positions, so it is
  a tool for benchmarks, tests and data sets, never for an agent.

Why the second exists: on Safety Gym tasks a random policy barely moves and enters hazards on
1.5-1.8 % of its steps, too few unsafe frames for any classifier to learn a cue that holds on new
layouts. Measured with ``benchmarks/vision_cost_probe.py`` (SafetyPointGoal1Vision-v0, 4000 agent
steps over 40 layouts, a plain per-frame CNN, 2026-11-27): random-policy data gave 70 unsafe
frames and held-out balanced accuracy 0.46; hazard-visitor data gave 765 unsafe frames (19 %) and
0.81 on 20 new layouts.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from lbwrap.envs.pixel_hazard import PixelHazardEnv

__all__ = ["COLLECTION_POLICIES", "CollectionPolicy", "HazardVisitor", "RandomPolicy",
           "collect_episodes"]

CollectionPolicy = Literal["random", "hazard-visitor"]
#: Names accepted by :func:`collect_episodes`'s ``policy`` argument.
COLLECTION_POLICIES: tuple[str, ...] = ("random", "hazard-visitor")


class RandomPolicy:
    """Uniform random actions from the env's action space (``rng.uniform(low, high)``)."""

    def __init__(self, env: Any, rng: np.random.Generator) -> None:
        self._low = env.action_space.low
        self._high = env.action_space.high
        self._rng = rng

    def reset(self) -> None:
        """Start of an episode (nothing to forget)."""

    def __call__(self) -> np.ndarray:
        return self._rng.uniform(self._low, self._high).astype(np.float32)


class HazardVisitor:
    """Scripted policy that drives to a random hazard, through it, then to another one.

    Privileged: it reads true positions from ``env.unwrapped`` (see the module docstring).
    Supported envs:

    * :class:`~lbwrap.envs.pixel_hazard.PixelHazardEnv` with hazards (actions are velocities);
    * safety-gymnasium tasks with hazards and the Point robot (actions are ``[forward, turn]``).

    Args:
        env: the (possibly wrapped) env whose actions this policy chooses.
        rng: random generator for targets and noise.
        noise: standard deviation of Gaussian noise added to each action before clipping. Measured
            on SafetyPointGoal1Vision-v0 (400 agent steps, 4 layouts): 0.3 -> 14 % unsafe steps,
            1.0 -> 28 %; the default 0.5 gave 19 % over 4000 steps.

    Raises:
        ValueError: the env is neither of the supported kinds, has no hazards, or uses a robot
            other than Point.
    """

    def __init__(self, env: Any, rng: np.random.Generator, noise: float = 0.5) -> None:
        if not (noise >= 0 and math.isfinite(noise)):
            raise ValueError(f"noise must be a finite number >= 0, got {noise}")
        self._base = env.unwrapped
        self._rng = rng
        self._noise = float(noise)
        self._low = env.action_space.low.astype(np.float32)
        self._high = env.action_space.high.astype(np.float32)
        self._target: int | None = None
        if isinstance(self._base, PixelHazardEnv):
            if self._base.num_hazards == 0:
                raise ValueError("HazardVisitor: this PixelHazard env has no hazards (level 0 or "
                                 "num_hazards=0); use level >= 1 or the random policy")
            self._kind = "pixel_hazard"
        elif hasattr(self._base, "task"):
            task = self._base.task
            if getattr(task, "hazards", None) is None:
                raise ValueError(f"HazardVisitor: {type(task).__name__} has no hazards; "
                                 "use a task with hazards (e.g. *Goal1/2*) or the random policy")
            agent = type(task.agent).__name__
            if agent != "Point":
                raise ValueError(f"HazardVisitor drives the Point robot only, this task uses "
                                 f"{agent}; use a SafetyPoint* task or the random policy")
            self._kind = "safety_gym"
        else:
            raise ValueError(f"HazardVisitor needs PixelHazard or a safety-gymnasium task, got "
                             f"{type(self._base).__name__}; use the random policy for other envs")

    def reset(self) -> None:
        """Start of an episode: choose a new first target."""
        self._target = None

    def _positions(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(robot xy, hazard centres (K, 2), hazard radius) from the simulator."""
        if self._kind == "pixel_hazard":
            base = self._base
            return np.asarray(base.robot_pos), np.asarray(base.hazards), base.config.hazard_radius
        task = self._base.task
        hazards = np.array([pos[:2] for pos in task.hazards.pos])
        return np.asarray(task.agent.pos[:2]), hazards, float(task.hazards.size)

    def __call__(self) -> np.ndarray:
        robot, hazards, radius = self._positions()
        if self._target is None or self._target >= len(hazards) \
                or np.linalg.norm(hazards[self._target] - robot) < 0.25 * radius:
            self._target = int(self._rng.integers(len(hazards)))
        to_target = hazards[self._target] - robot
        if self._kind == "pixel_hazard":
            action = to_target / max(float(np.linalg.norm(to_target)), 1e-8)
        else:  # Point robot: heading error in the robot's frame -> [forward, turn]
            frame = self._base.task.agent.mat
            angle = math.atan2(float(to_target @ frame[:2, 1]), float(to_target @ frame[:2, 0]))
            action = np.array([math.cos(angle), 3.0 * angle])
        action = action + self._rng.normal(0.0, self._noise, size=action.shape)
        return np.clip(action, self._low, self._high).astype(np.float32)


def _make_policy(env: Any, policy: str, rng: np.random.Generator) -> RandomPolicy | HazardVisitor:
    if policy == "random":
        return RandomPolicy(env, rng)
    if policy == "hazard-visitor":
        return HazardVisitor(env, rng)
    raise ValueError(f"unknown collection policy {policy!r}; choose one of {COLLECTION_POLICIES}")


def collect_episodes(env: Any, n_steps: int, seed: int, max_len: int = 0,
                     policy: CollectionPolicy = "random") -> list[dict[str, np.ndarray]]:
    """About ``n_steps`` agent steps of ``policy`` as episodes in the replay's convention.

    Each episode holds the frames, the action that led into each (zeros first), reward and cost on
    arriving, ``is_first``, ``is_terminal``; layout ``k`` comes from ``reset(seed=seed*1000+k)``.
    ``max_len > 0`` cuts episodes after that many agent steps (more layouts per step). The env
    must report its cost in ``info["cost"]`` (as lbwrap's pixel envs do).
    """
    rng = np.random.default_rng(seed)
    actor = _make_policy(env, policy, rng)
    adim = env.action_space.shape[0]
    episodes: list[dict[str, np.ndarray]] = []
    total = k = 0
    while total < n_steps:
        obs, _ = env.reset(seed=seed * 1000 + k)
        actor.reset()
        k += 1
        cols: dict[str, list[Any]] = {"obs": [obs], "action": [np.zeros(adim, np.float32)],
                                      "reward": [0.0], "cost": [0.0], "is_first": [True],
                                      "is_terminal": [False]}
        while True:
            action = actor()
            obs, reward, term, trunc, info = env.step(action)
            if "cost" not in info:
                raise KeyError("collect_episodes: the env's info has no 'cost'; build it with "
                               "lbwrap.make_pixel_env or add the per-step cost to info['cost']")
            for key, value in (("obs", obs), ("action", action), ("reward", float(reward)),
                               ("cost", float(info["cost"])), ("is_first", False),
                               ("is_terminal", bool(term))):
                cols[key].append(value)
            cut = max_len > 0 and len(cols["obs"]) > max_len
            if term or trunc or cut or total + len(cols["obs"]) >= n_steps:
                break
        total += len(cols["obs"])
        episodes.append({
            "obs": np.stack(cols["obs"]), "action": np.stack(cols["action"]),
            "reward": np.asarray(cols["reward"], np.float32),
            "cost": np.asarray(cols["cost"], np.float32),
            "is_first": np.asarray(cols["is_first"], bool),
            "is_terminal": np.asarray(cols["is_terminal"], bool),
        })
    return episodes
