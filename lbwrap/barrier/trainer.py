"""The barrier's training step: its loss through the shared guarded Adam step."""

from __future__ import annotations

import contextlib
from typing import Any, cast

import torch

from lbwrap._optim import AutocastFactory, GuardedAdam, GuardedTrainer
from lbwrap.latent_state import LatentDynamics, LatentState

from .action_barrier import ActionBarrierNet
from .config import BarrierConfig
from .losses import CostFn, compute_barrier_loss
from .network import BarrierNet
from .rollout import Policy

__all__ = ["BarrierTrainer"]


class BarrierTrainer(GuardedTrainer):
    """Adam on the barrier's parameters only (never the world model's).

    Args:
        barrier: the network to train (:meth:`update` needs a :class:`BarrierNet`; an
            :class:`ActionBarrierNet` is trained with :meth:`step` on its own loss).
        config: loss settings; ``config.lr`` and ``config.grad_clip`` unless overridden.
        lr: learning rate override (paper: 8e-5; default ``config.lr`` = 3e-4).
        grad_clip: max global grad norm override (``math.inf``: no clipping).
    """

    def __init__(
        self,
        barrier: BarrierNet | ActionBarrierNet,
        config: BarrierConfig,
        lr: float | None = None,
        grad_clip: float | None = None,
    ) -> None:
        self.barrier = barrier
        self.config = config
        lr = float(config.lr if lr is None else lr)
        grad_clip = float(config.grad_clip if grad_clip is None else grad_clip)
        if not lr > 0 or not grad_clip > 0:
            raise ValueError(f"expected lr > 0 and grad_clip > 0, actual {lr}, {grad_clip}")
        self.guard = GuardedAdam(barrier.parameters(), lr=lr, grad_clip=grad_clip)

    @property
    def lr(self) -> float:
        return self.guard.lr

    @property
    def grad_clip(self) -> float:
        return float(self.guard.grad_clip or 0.0)

    def update(
        self,
        posts: LatentState,
        cost: torch.Tensor,
        is_first: torch.Tensor,
        dynamics: LatentDynamics | None = None,
        cost_fn: CostFn | None = None,
        policy: Policy | None = None,
        generator: torch.Generator | None = None,
        autocast: AutocastFactory | None = None,
    ) -> dict[str, float]:
        """One gradient step on :func:`compute_barrier_loss` (states detached); its metrics.
        ``autocast``: a context factory for the loss's forward pass (mixed precision)."""
        barrier = cast(BarrierNet, self.barrier)  # see the class docstring
        with (autocast or contextlib.nullcontext)():
            loss, metrics = compute_barrier_loss(
                barrier, self.config, posts, cost, is_first, dynamics=dynamics,
                cost_fn=cost_fn, policy=policy, generator=generator, detach_states=True,
            )
        metrics.update(self.step(loss))
        return metrics

    def step(self, loss: torch.Tensor) -> dict[str, float]:
        """Backward, clip and step on any scalar ``loss`` (:class:`lbwrap._optim.GuardedAdam`:
        skipped and counted when the loss or the gradient norm is NaN/inf)."""
        return self.guard.step(loss)

    def state_dict(self) -> dict[str, Any]:
        """Optimiser state and counters (the network's weights are saved by its owner)."""
        return self.guard.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (older files: ``nonfinite_skipped``)."""
        self.guard.load_state_dict(state)
