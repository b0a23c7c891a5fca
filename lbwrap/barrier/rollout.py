"""Imagined rollouts through any :class:`~lbwrap.latent_state.LatentDynamics`."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lbwrap.latent_state import LatentDynamics, LatentState

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
    state = start
    states = [state]
    for _ in range(horizon):
        if policy is not None:
            action = policy(state)
        else:
            action = uniform_actions(
                state.stoch.shape[0],
                dynamics.action_dim,
                device=state.stoch.device,
                dtype=state.stoch.dtype,
                generator=generator,
            )
        state = dynamics.img_step(state, action, sample=sample)
        states.append(state)
    return LatentState.stack(states, dim=1)
