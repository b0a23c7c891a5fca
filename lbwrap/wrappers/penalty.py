"""``BarrierPenalty``: reward reshaping with the learned barrier (a soft alternative to the shield)."""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np

from lbwrap.safety_model import LatentSafetyModel, barrier_penalty, barrier_values
from lbwrap.wrappers.latent import find_latent_observation

__all__ = ["BarrierPenalty"]


class BarrierPenalty(gym.Wrapper):
    """``reward - scale * penalty``, with the penalty from the barrier on the reached latent state.

    ``mode="decrease"``: the violation of the discrete-time CBF condition along the transition,
    ``relu(eps - ((B(z') - B(z)) / dt + alpha * B(z')))``; ``mode="margin"``: ``relu(eps - B(z'))``.
    ``eps``, ``dt`` and ``alpha`` are B(z)'s own (``safety.config.barrier``), never the shield's
    margin (the action-barrier shield's lives on another scale). Inactive until ``safety.ready`` unless ``only_when_ready=False``. ``info`` gets
    ``barrier_penalty`` (before scaling), ``barrier_value`` and ``env_reward``.
    """

    def __init__(
        self,
        env: gym.Env,
        safety: LatentSafetyModel,
        scale: float = 1.0,
        mode: Literal["decrease", "margin"] = "decrease",
        only_when_ready: bool = True,
    ) -> None:
        latent = find_latent_observation(env, "BarrierPenalty",
                                         "lbwrap.VecBarrierPenalty(VecLatentObservation(vec_env, safety), safety)")
        super().__init__(env)
        self.latent = latent
        if self.latent.safety is not safety:
            raise ValueError("BarrierPenalty and its LatentObservation must share one LatentSafetyModel.")
        if scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        if mode not in ("decrease", "margin"):
            raise ValueError(f"mode must be 'decrease' or 'margin', got {mode!r}")
        self.safety = safety
        self.scale = float(scale)
        self.mode = mode
        self.only_when_ready = bool(only_when_ready)
        self._b_prev = np.zeros(1, np.float32)

    @property
    def spec(self) -> None:  # type: ignore[override]
        """``None``, as for :class:`~lbwrap.wrappers.LatentObservation` (holds a live model)."""
        return None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._b_prev = barrier_values(self.safety, self.latent.latent_state)
        return obs, info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        b_next = barrier_values(self.safety, self.latent.latent_state)
        active = self.safety.ready or not self.only_when_ready
        penalty = barrier_penalty(self.safety, self._b_prev, b_next, np.zeros(1, bool), self.mode)[0]
        penalty = float(penalty) if active else 0.0
        self._b_prev = b_next
        info = dict(info)
        info.setdefault("env_reward", float(reward))
        info.update(barrier_penalty=penalty, barrier_value=float(b_next[0]))
        return obs, float(reward) - self.scale * penalty, terminated, truncated, info
