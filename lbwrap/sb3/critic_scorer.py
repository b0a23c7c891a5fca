"""``critic_scorer``: let the shield pick, among the actions it deems safe, the agent's best one.

A shield that replaces an unsafe proposal with the *closest* passing action keeps the agent's
intent only locally: in front of a hazard the closest safe action is often "slow down", then
"back off", and the agent stalls. With an off-policy agent at hand there is a better judge of
what the task wants: its critic. :func:`critic_scorer` wraps an SB3 SAC / TD3 (any algorithm
whose ``critic(obs, actions)`` returns Q-value heads) as the shield's ``action_scorer``: each
candidate is rated by the pessimistic (minimum) Q head at the agent's current observation,
and the filter executes the best-rated candidate that passes the barrier.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm

from lbwrap.safety_model import LatentSafetyModel, ObservationScorer, reward_scorer

__all__ = ["SHIELD_SELECTIONS", "critic_scorer", "selection_scorer"]

#: How a shield picks a blocked proposal's substitute among the passing candidates.
SHIELD_SELECTIONS = ("closest", "critic", "reward")


def selection_scorer(selection: str, agent: BaseAlgorithm,
                     safety: LatentSafetyModel) -> ObservationScorer | None:
    """The shield's ``action_scorer`` for ``selection``: None (the closest action), the agent's
    critic (:func:`critic_scorer`) or the world model's predicted reward
    (:func:`lbwrap.safety_model.reward_scorer`)."""
    if selection not in SHIELD_SELECTIONS:
        raise ValueError(f"shield selection must be one of {SHIELD_SELECTIONS}, got {selection!r}")
    if selection == "critic":
        return critic_scorer(agent)
    if selection == "reward":
        return reward_scorer(safety)
    return None


def critic_scorer(agent: BaseAlgorithm) -> ObservationScorer:
    """An ``action_scorer`` for :class:`~lbwrap.sb3.VecBarrierShield` /
    :class:`~lbwrap.wrappers.BarrierShield` from ``agent``'s critic (min over its Q heads).

    The agent is read at call time, so the scorer follows its training (and a reloaded agent
    can be swapped in with a new scorer). Candidates are in the env's action units; they are
    rescaled to SB3's [-1, 1] for the critic as SB3's own ``policy.scale_action`` does.

    Raises:
        TypeError: the agent has no Q-function critic (e.g. PPO: use the default closest-action
            rule there).
    """
    policy = getattr(agent, "policy", None)
    critic = getattr(policy, "critic", None)
    if critic is None or not callable(critic):
        raise TypeError(
            f"critic_scorer needs an off-policy agent with a Q critic (SAC, TD3, BarrierSAC), got "
            f"{type(agent).__name__}; leave the shield's action_scorer unset (closest action)."
        )
    action_space = cast(spaces.Box, agent.action_space)  # the shield needs Box actions
    low = np.asarray(action_space.low, np.float32)
    high = np.asarray(action_space.high, np.float32)

    def score(observations: np.ndarray, candidates: torch.Tensor) -> torch.Tensor:
        m, k, a = candidates.shape
        pol: Any = agent.policy
        device = pol.device
        obs, _ = pol.obs_to_tensor(np.asarray(observations))
        obs = obs.reshape(m, -1).repeat_interleave(k, dim=0)
        lo = torch.as_tensor(low, device=device)
        hi = torch.as_tensor(high, device=device)
        acts = candidates.reshape(m * k, a).to(device=device, dtype=torch.float32)
        scaled = 2.0 * (acts - lo) / (hi - lo) - 1.0
        with torch.no_grad():
            q = torch.cat(pol.critic(obs, scaled), dim=1).min(dim=1).values
        return q.view(m, k).to(candidates.device)

    return score
