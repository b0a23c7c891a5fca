"""Scripted, privileged reference policies for ``lbwrap/PixelHazardRun-v0``.

They read the simulator's true robot and hazard positions (never an agent's business) and exist
to state what the task asks: how many violations a hazard-blind runner makes, and how much
return an agent that avoids every hazard can keep (its detour cost).

* :class:`StraightRunner`: full speed along +x, blind to hazards.
* :class:`HazardAvoider`: each step, the fastest heading (by progress along +x) whose straight
  path over the next ``lookahead`` steps keeps ``margin`` from every hazard edge, with one
  change of heading allowed half-way (a two-segment plan), so that it steers round a hazard
  early instead of grazing it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lbwrap.envs.pixel_hazard_run import PixelHazardRunEnv

__all__ = ["HazardAvoider", "StraightRunner", "run_reference_episode"]


def _run_env(env: Any) -> PixelHazardRunEnv:
    base = env.unwrapped
    if not isinstance(base, PixelHazardRunEnv):
        raise TypeError(
            f"run reference policies need lbwrap/PixelHazardRun-v0, got {type(base).__name__}"
        )
    return base


class StraightRunner:
    """Always ``[1, 0]``: full speed along +x, whatever lies ahead."""

    def __init__(self, env: Any) -> None:
        _run_env(env)

    def reset(self) -> None:
        """Start of an episode (nothing to forget)."""

    def __call__(self) -> np.ndarray:
        return np.array([1.0, 0.0], dtype=np.float32)


class HazardAvoider:
    """Fastest safe heading with a two-segment lookahead (privileged; see the module doc).

    Args:
        env: the (possibly wrapped) PixelHazardRun env whose actions this policy chooses.
        lookahead: steps of the plan (at the env's ``max_step`` per step).
        margin: clearance kept from every hazard edge, world units.
        headings: headings tried per segment, evenly spaced in ``[-90, 90]`` degrees.
    """

    def __init__(self, env: Any, lookahead: int = 24, margin: float = 0.03,
                 headings: int = 25) -> None:
        self.env = _run_env(env)
        self.lookahead = int(lookahead)
        self.margin = float(margin)
        angles = np.linspace(-0.5 * np.pi, 0.5 * np.pi, int(headings))
        self._dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (H, 2)

    def reset(self) -> None:
        """Start of an episode (the policy is memoryless)."""

    def __call__(self) -> np.ndarray:
        env = self.env
        cfg = env.config
        pos = env.robot_pos
        reach = cfg.max_step * self.lookahead + cfg.hazard_radius
        hazards = env.hazards_between(pos[0] - reach, pos[0] + reach)
        half = self.lookahead // 2
        n = len(self._dirs)
        steps = np.arange(1, half + 1, dtype=np.float64)[:, None]  # (T, 1)
        bound = env._bound
        # first segments: (H, T, 2) positions
        first = pos + cfg.max_step * steps[None] * self._dirs[:, None, :]
        first[..., 1] = np.clip(first[..., 1], -bound, bound)
        mid = first[:, -1, :]  # (H, 2)
        second = mid[:, None, None, :] + cfg.max_step * steps[None, None] * self._dirs[None, :, None, :]
        second[..., 1] = np.clip(second[..., 1], -bound, bound)  # (H, H, T, 2)
        if hazards.shape[0] == 0:
            return np.array([1.0, 0.0], dtype=np.float32)
        limit = cfg.hazard_radius + self.margin

        def clearance(points: np.ndarray) -> np.ndarray:
            d = np.linalg.norm(points[..., None, :] - hazards, axis=-1)  # (..., T, K)
            return (d.min(axis=-1) - limit).min(axis=-1)

        c1 = clearance(first)  # (H,)
        c2 = np.minimum(c1[:, None], clearance(second))  # (H, H)
        progress = second[:, :, -1, 0] - pos[0]  # (H, H)
        safe = c2 >= 0
        if safe.any():
            score = np.where(safe, progress, -np.inf)
        else:  # nothing keeps the margin: get as far from the hazards as possible
            score = c2
        row, _ = np.unravel_index(int(np.argmax(score)), score.shape)
        i = int(row)
        if not safe.any() and c1[i] < 0 and n:
            i = int(np.argmax(c1))
        return self._dirs[i].astype(np.float32)


def run_reference_episode(env: Any, policy: Any, seed: int) -> dict[str, float]:
    """One episode of ``policy`` from ``env.reset(seed=seed)``: return, cost and violations."""
    env.reset(seed=seed)
    policy.reset()
    ret = cost = 0.0
    violations = 0
    done = False
    while not done:
        _, reward, terminated, truncated, info = env.step(policy())
        ret += float(reward)
        cost += float(info["cost"])
        violations += int(info.get("violations", info["cost"] > 0))
        done = terminated or truncated
    return {"return": ret, "cost": cost, "violations": float(violations)}
