"""``BarrierShield``: replace unsafe actions with the closest action that keeps the barrier condition."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from lbwrap.safety_model import (
    LatentSafetyModel,
    ObservationScorer,
    as_action_batch,
    bind_observations,
    shield_decision,
)
from lbwrap.wrappers.latent import find_latent_observation

__all__ = ["BarrierShield"]


class BarrierShield(gym.Wrapper):
    """Action reshaping with the learned barrier (put it outside a ``LatentObservation``).

    For each proposed action the shield predicts the barrier after it with the safety model's
    shield predictor (``safety.shield_filter.predictor``: by default the action-conditioned
    barrier on the current frame's embedding; ``"prior"``: B at the world model's one-step prior,
    as in the paper) and checks the condition against that predictor's margin; if it fails, it executes the closest candidate
    action that passes (or, if none does, the one with the largest predicted B). It stays inactive — actions pass through, clipped to the box — until ``safety.ready``
    (the barrier's balanced accuracy gate, see :mod:`lbwrap.safety_model`).

    ``info`` gets ``shield_active``, ``shield_intervened``, ``proposed_action``,
    ``executed_action`` and, while the shield is active, ``barrier_now``,
    ``barrier_next_proposed``, ``barrier_next_executed`` (never NaN, see
    :meth:`~lbwrap.safety_model.ShieldDecision.info`).
    ``intervention_penalty > 0`` subtracts that amount from the reward of every step in which the
    shield intervened (``info["env_reward"]`` keeps the env's own reward). ``action_scorer``
    (settable later): picks the substitute among the passing candidates, e.g.
    :func:`lbwrap.sb3.critic_scorer` of the acting agent (the best safe action by its critic);
    ``None``: the closest to the proposal.

    ``step`` takes one proposal of shape ``(A,)``; another shape (e.g. ``(1, A)`` or a flat batch)
    or NaN/inf values raise a ``ValueError`` before the env is stepped (never reshaped, replaced
    or executed).
    """

    def __init__(self, env: gym.Env, safety: LatentSafetyModel, intervention_penalty: float = 0.0,
                 action_scorer: ObservationScorer | None = None) -> None:
        latent = find_latent_observation(env, "BarrierShield",
                                         "lbwrap.VecBarrierShield(VecLatentObservation(vec_env, safety), safety)")
        super().__init__(env)
        self.latent = latent
        if self.latent.safety is not safety:
            raise ValueError(
                "BarrierShield and the LatentObservation inside it must share one LatentSafetyModel."
            )
        if intervention_penalty < 0:
            raise ValueError(f"intervention_penalty must be >= 0, got {intervention_penalty}")
        self.safety = safety
        self.intervention_penalty = float(intervention_penalty)
        self.action_scorer = action_scorer
        self._obs: Any = None

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        return obs, info

    @property
    def spec(self) -> None:  # type: ignore[override]
        """``None``, as for :class:`~lbwrap.wrappers.LatentObservation` (holds a live model)."""
        return None

    def step(self, action: Any):
        proposed = as_action_batch(action, 1, self.safety.action_dim, single=True,
                                   what="BarrierShield.step: the proposed action")
        observations = None if self._obs is None else np.asarray(self._obs)[None]
        decision = shield_decision(self.safety, self.latent.latent_state, proposed,
                                   embed=self.latent.latent_embed,
                                   scorer=bind_observations(self.action_scorer, observations))
        executed = decision.executed[0]
        obs, reward, terminated, truncated, info = self.env.step(executed)
        self._obs = obs
        info = dict(info)
        intervened = bool(decision.intervened[0])
        info.update(decision.info(0), proposed_action=proposed[0])
        if intervened and self.intervention_penalty > 0:
            info.setdefault("env_reward", float(reward))
            reward = float(reward) - self.intervention_penalty
        return obs, reward, terminated, truncated, info
