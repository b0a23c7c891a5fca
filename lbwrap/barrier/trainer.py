"""Optimiser loop of the barrier: Adam, gradient clipping, non-finite step skipping."""

from __future__ import annotations

import math
from typing import Any, cast

import torch

from lbwrap.latent_state import LatentDynamics, LatentState

from .action_barrier import ActionBarrierNet
from .config import BarrierConfig
from .losses import CostFn, compute_barrier_loss
from .network import BarrierNet
from .rollout import Policy

__all__ = ["BarrierTrainer"]


class BarrierTrainer:
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
        self.lr = float(config.lr if lr is None else lr)
        self.grad_clip = float(config.grad_clip if grad_clip is None else grad_clip)
        if not self.lr > 0 or not self.grad_clip > 0:
            raise ValueError(
                f"expected lr > 0 and grad_clip > 0, actual {self.lr}, {self.grad_clip}"
            )
        self.optimizer = torch.optim.Adam(barrier.parameters(), lr=self.lr)
        self.num_updates = 0
        self.nonfinite_skipped = 0

    def update(
        self,
        posts: LatentState,
        cost: torch.Tensor,
        is_first: torch.Tensor,
        dynamics: LatentDynamics | None = None,
        cost_fn: CostFn | None = None,
        policy: Policy | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """One gradient step on :func:`compute_barrier_loss` (states detached); its metrics."""
        barrier = cast(BarrierNet, self.barrier)  # see the class docstring
        loss, metrics = compute_barrier_loss(
            barrier, self.config, posts, cost, is_first, dynamics=dynamics,
            cost_fn=cost_fn, policy=policy, generator=generator, detach_states=True,
        )
        metrics.update(self.step(loss))
        return metrics

    def step(self, loss: torch.Tensor) -> dict[str, float]:
        """Backward, clip and step on any scalar ``loss``; skip on non-finite loss or grads."""
        self.optimizer.zero_grad(set_to_none=True)
        skipped = not bool(torch.isfinite(loss.detach()))
        grad_norm = math.nan
        if not skipped:
            loss.backward()
            params = [p for p in self.barrier.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip) if params else None
            grad_norm = float(norm) if norm is not None else 0.0
            skipped = not math.isfinite(grad_norm)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_skipped += 1
        else:
            self.optimizer.step()
            self.num_updates += 1
        return {
            "grad_norm": grad_norm,
            "skipped": float(skipped),
            "nonfinite_skipped": float(self.nonfinite_skipped),
            "num_updates": float(self.num_updates),
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def state_dict(self) -> dict[str, Any]:
        """Optimiser state and counters (the network's weights are saved by its owner)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "num_updates": self.num_updates,
            "nonfinite_skipped": self.nonfinite_skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_updates = int(state["num_updates"])
        self.nonfinite_skipped = int(state["nonfinite_skipped"])
