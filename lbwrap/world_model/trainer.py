"""The world model's training step: its loss through the shared guarded Adam step."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lbwrap._optim import AutocastFactory, GuardedAdam, GuardedTrainer
from lbwrap.world_model.rssm import WorldModel, WorldModelOutput

__all__ = ["WorldModelTrainer"]

logger = logging.getLogger(__name__)


class WorldModelTrainer(GuardedTrainer):
    """Owns the world model's optimiser (:class:`lbwrap._optim.GuardedAdam`).

    Defaults: ``lr=6e-4`` (Dreamer v1), ``eps=1e-5``, gradient-norm clip 100. The paper's
    world-model learning rate (1e-5) learns far too slowly at the budgets lbwrap targets; pass
    ``lr=1e-5`` to reproduce it. A step whose loss or gradient is NaN/inf is skipped
    (gradients zeroed, parameters and optimiser state untouched) and counted in
    :attr:`num_skipped`.
    """

    def __init__(
        self, model: WorldModel, lr: float = 6e-4, eps: float = 1e-5,
        grad_clip: float | None = 100.0, weight_decay: float = 0.0,
    ) -> None:
        self.model = model
        self.guard = GuardedAdam(model.parameters(), lr=lr, eps=eps, grad_clip=grad_clip,
                                 weight_decay=weight_decay)

    @property
    def grad_clip(self) -> float | None:
        return self.guard.grad_clip

    @grad_clip.setter
    def grad_clip(self, value: float | None) -> None:
        self.guard.grad_clip = value

    def update(
        self, batch: Mapping[str, torch.Tensor | np.ndarray],
        autocast: AutocastFactory | None = None,
    ) -> tuple[dict[str, float], WorldModelOutput]:
        """One optimiser step on ``batch``; returns ``(metrics, output)``.

        ``metrics`` has the loss terms plus ``grad_norm``, ``step_skipped`` (1.0 when this step
        was skipped) and ``nonfinite_skipped`` (the cumulative number of skipped steps).
        ``autocast``: a context factory for the loss's forward pass (mixed precision,
        :func:`lbwrap._optim.training_autocast`); backward and the step run outside it.
        """
        self.model.train()
        with (autocast or contextlib.nullcontext)():
            output = self.model.loss(batch)
        metrics = dict(output.metrics)
        step = self.guard.step(output.loss)
        if step["step_skipped"]:
            logger.warning(
                "world-model update skipped: non-finite loss (%s) or gradient norm (%s); "
                "%d skipped so far", metrics.get("loss"), step["grad_norm"], self.num_skipped,
            )
        metrics.update(grad_norm=step["grad_norm"], step_skipped=step["step_skipped"],
                       nonfinite_skipped=step["nonfinite_skipped"])
        return metrics, output

    def state_dict(self) -> dict[str, Any]:
        """Optimiser state and counters."""
        return {**self.guard.state_dict(), "grad_clip": self.guard.grad_clip}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.guard.load_state_dict(state)
        if "grad_clip" in state:
            self.guard.grad_clip = state["grad_clip"]
