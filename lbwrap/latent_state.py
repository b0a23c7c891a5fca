"""The latent state shared by the world model and the barrier (pure torch, no other lbwrap imports).

The world model produces :class:`LatentState` objects; the barrier package only relies on the
small :class:`LatentDynamics` protocol below, never on the world-model class itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import torch

__all__ = ["LatentDynamics", "LatentState", "rollout"]


@dataclass
class LatentState:
    """RSSM state: deterministic ``deter`` (..., H) and stochastic ``stoch`` (..., Z) parts.

    ``mean`` and ``std`` are the parameters of the Gaussian that ``stoch`` was drawn from
    (prior or posterior). All four tensors share their leading (batch/time) dimensions.
    """

    deter: torch.Tensor
    stoch: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> LatentState:
        """Apply ``fn`` to every tensor and return a new state."""
        return LatentState(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def detach(self) -> LatentState:
        return self.map(lambda t: t.detach())

    def to(self, device: torch.device | str) -> LatentState:
        return self.map(lambda t: t.to(device))

    def __getitem__(self, index) -> LatentState:
        return self.map(lambda t: t[index])

    def flatten(self, end_dim: int = 1) -> LatentState:
        """Merge leading dims ``0..end_dim`` (e.g. (B, T, D) -> (B*T, D))."""
        return self.map(lambda t: t.flatten(0, end_dim))

    @property
    def features(self) -> torch.Tensor:
        """``cat([deter, stoch], -1)``: the representation heads and policies consume."""
        return torch.cat([self.deter, self.stoch], dim=-1)

    @staticmethod
    def stack(states: list[LatentState], dim: int = 1) -> LatentState:
        """Stack a list of states along a new dimension ``dim``."""
        return LatentState(
            **{f.name: torch.stack([getattr(s, f.name) for s in states], dim=dim) for f in fields(LatentState)}
        )

    @staticmethod
    def where(mask: torch.Tensor, a: LatentState, b: LatentState) -> LatentState:
        """Per-row choice: rows where ``mask`` (shape (B,)) is true come from ``a``, others from ``b``."""
        m = mask.reshape(-1, *([1] * (a.deter.dim() - 1))).bool()
        return LatentState(**{f.name: torch.where(m, getattr(a, f.name), getattr(b, f.name)) for f in fields(LatentState)})


@runtime_checkable
class LatentDynamics(Protocol):
    """What the barrier and the safe-action filter need from a latent dynamics model."""

    action_dim: int

    def img_step(self, state: LatentState, action: torch.Tensor, sample: bool = True) -> LatentState:
        """One prior step: predict the next latent state from ``state`` under ``action`` (B, A).

        With ``sample=False`` the returned ``stoch`` is the prior mean (deterministic prediction).
        """
        ...


def rollout(
    dynamics: LatentDynamics,
    start: LatentState,
    horizon: int,
    action_at: Callable[[int, LatentState], torch.Tensor],
    sample: bool = True,
) -> tuple[list[LatentState], list[torch.Tensor]]:
    """The one imagined rollout of lbwrap: ``horizon`` prior steps from ``start`` (N, ...).

    ``action_at(t, state)`` gives the action (N, A) taken at step ``t`` from ``state`` (a policy,
    a fixed action sequence, a repeated candidate). Returns the ``horizon`` states reached (each
    after its action) and the actions, as lists; gradients flow through ``img_step`` and the
    actions exactly as autograd allows. The world model's ``imagine``, the barrier's training
    rollouts, the shield's lookahead and BarrierSAC's actor term all step through here.
    """
    if horizon < 1:
        raise ValueError(f"horizon: expected >= 1, actual {horizon}")
    state, states, actions = start, [], []
    for t in range(horizon):
        action = action_at(t, state)
        state = dynamics.img_step(state, action, sample=sample)
        states.append(state)
        actions.append(action)
    return states, actions
