"""Imagined rollouts through any :class:`~lbwrap.latent_state.LatentDynamics`."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lbwrap.latent_state import LatentDynamics, LatentState, rollout

from . import _random

__all__ = ["Policy", "imagine", "uniform_actions"]

Policy = Callable[[LatentState], torch.Tensor]
"""Maps a batch of latent states (N, ...) to actions (N, A), nominally in [-1, 1]."""


def uniform_actions(
    num: int,
    action_dim: int,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``num`` actions drawn uniformly from [-1, 1]^action_dim."""
    u = _random.rand((num, action_dim), device=device, dtype=dtype, generator=generator)
    return u * 2.0 - 1.0


def imagine(
    dynamics: LatentDynamics,
    start: LatentState,
    horizon: int,
    policy: Policy | None = None,
    generator: torch.Generator | None = None,
    sample: bool = True,
) -> LatentState:
    """Roll ``horizon`` prior steps from ``start`` (N, ...).

    Actions come from ``policy(state)`` when given, else uniformly from [-1, 1]. Returns the
    trajectory including the start, shape (N, horizon + 1, ...). Gradients flow through
    ``img_step`` and the policy exactly as autograd allows; wrap the call in ``torch.no_grad()``
    when none are wanted.
    """
    if horizon < 1:
        raise ValueError(f"horizon: expected >= 1, actual {horizon}")

    def action_at(_t: int, state: LatentState) -> torch.Tensor:
        if policy is not None:
            return policy(state)
        return uniform_actions(state.stoch.shape[0], dynamics.action_dim,
                               device=state.stoch.device, dtype=state.stoch.dtype,
                               generator=generator)

    states, _ = rollout(dynamics, start, horizon, action_at, sample=sample)
    return LatentState.stack([start, *states], dim=1)
