"""One optimiser step for every lbwrap model: Adam, gradient clipping, non-finite steps skipped.

World model, barrier and action barrier all train through :class:`GuardedAdam`, so they share
one rule and one set of counter names: a step whose loss or gradient norm is NaN/inf changes
nothing (gradients are zeroed, parameters and Adam's state untouched) and is counted in
``num_skipped``; the metrics of a step carry ``grad_norm``, ``step_skipped`` (1.0 when this step
was skipped) and ``nonfinite_skipped`` (the running count).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

__all__ = ["AutocastFactory", "GuardedAdam", "GuardedTrainer", "training_autocast"]

#: ``() -> context manager`` entered around a training forward pass (see :func:`training_autocast`).
AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]


def training_autocast(device: torch.device | str, mode: str = "off"
                      ) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` in bfloat16 on ``device`` for ``mode == "bf16"``, else a no-op.

    Only forward passes (the losses) run under it; backward and the optimiser step stay outside,
    and the weights stay float32, so no loss scaling is needed with bfloat16.
    """
    if mode == "off":
        return contextlib.nullcontext()
    if mode != "bf16":
        raise ValueError(f"autocast must be 'off' or 'bf16', got {mode!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


class GuardedAdam:
    """Adam on ``params`` with a global gradient-norm clip and non-finite step skipping.

    Args:
        params: the parameters it updates (only those).
        lr: learning rate (> 0).
        eps: Adam's epsilon (> 0).
        grad_clip: max global gradient norm (> 0); ``None`` or ``math.inf``: no clipping.
        weight_decay: Adam's L2 weight decay.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, eps: float = 1e-8,
                 grad_clip: float | None = None, weight_decay: float = 0.0) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
        self.params = list(params)
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.Adam(self.params, lr=lr, eps=eps, weight_decay=weight_decay)
        self.num_updates = 0
        self.num_skipped = 0

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, loss: torch.Tensor) -> dict[str, float]:
        """Backward ``loss``, clip, and step unless the loss or the gradient norm is NaN/inf."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p for p in self.params if p.grad is not None]
        max_norm = math.inf if self.grad_clip is None else self.grad_clip
        norm = (torch.nn.utils.clip_grad_norm_(grads, max_norm) if grads
                else torch.zeros((), device=loss.device))
        # a NaN/inf gradient anywhere makes the total norm non-finite: one check, one sync
        finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(norm))
        if finite:
            self.optimizer.step()
            self.num_updates += 1
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.num_skipped += 1
        return {"grad_norm": float(norm), "step_skipped": 0.0 if finite else 1.0,
                "nonfinite_skipped": float(self.num_skipped),
                "num_updates": float(self.num_updates), "lr": self.lr}

    def state_dict(self) -> dict[str, Any]:
        """Adam's state and the counters."""
        return {"optimizer": self.optimizer.state_dict(), "num_updates": self.num_updates,
                "num_skipped": self.num_skipped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (``nonfinite_skipped``: the barrier's older name)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_updates = int(state.get("num_updates", 0))
        self.num_skipped = int(state.get("num_skipped", state.get("nonfinite_skipped", 0)))


class GuardedTrainer:
    """Base of the model trainers: they own a :class:`GuardedAdam` as ``guard`` and expose its
    optimiser and counters under the same names."""

    guard: GuardedAdam

    @property
    def optimizer(self) -> torch.optim.Adam:
        return self.guard.optimizer

    @property
    def num_updates(self) -> int:
        return self.guard.num_updates

    @num_updates.setter
    def num_updates(self, value: int) -> None:
        self.guard.num_updates = int(value)

    @property
    def num_skipped(self) -> int:
        """Steps skipped so far because the loss or the gradient norm was NaN/inf."""
        return self.guard.num_skipped

    @num_skipped.setter
    def num_skipped(self, value: int) -> None:
        self.guard.num_skipped = int(value)
