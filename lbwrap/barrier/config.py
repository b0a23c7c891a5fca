"""Configuration of the latent barrier-like function B(z), its losses and its optimiser."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["BarrierConfig", "BarrierInput", "LossForm"]

BarrierInput = Literal["stoch", "features"]
LossForm = Literal["hinge", "paper"]

_INPUTS = ("stoch", "features")
_FORMS = ("hinge", "paper")


@dataclass
class BarrierConfig:
    """Everything that defines the barrier network and how it is trained.

    Sign convention: ``B(z) >= 0`` safe, ``B(z) < 0`` unsafe. A state is labelled unsafe when its
    cost is ``> kappa`` and safe when it is ``< kappa`` (a cost exactly equal to ``kappa`` is
    left unlabelled).

    Loss (see :mod:`lbwrap.barrier.losses`), per data group (real, imagined)::

        safe_weight * L_safe + unsafe_weight * L_unsafe + decrease_weight * L_decrease

    summed over the enabled groups, plus ``grad_penalty * mean ||dB/dx||^2``.

    ``class_balance``: when True, ``L_safe`` and ``L_unsafe`` are each a mean over the states of
    their own class, so the rare unsafe class weighs as much as the abundant safe one whatever
    the class frequencies. When False both are sums divided by the total number of labelled
    states (a plain per-sample mean, in which a 1 % unsafe class contributes ~1 % of the loss).
    """

    hidden_dim: int = 200
    """Width of each hidden layer."""
    num_layers: int = 3
    """Number of hidden ReLU layers (3: z -> 200 -> 200 -> 200 -> 1; 0: a linear function)."""
    input: BarrierInput = "stoch"
    """Barrier input: the stochastic latent z (paper) or ``features`` = cat(deter, stoch)."""
    loss_form: LossForm = "hinge"
    """``hinge`` (default, measured better) or ``paper`` (authors' sign-gated terms)."""
    kappa: float = 0.01
    """Cost threshold: cost > kappa is unsafe, cost < kappa is safe."""
    eps: float = 0.01
    """Margin of the three conditions."""
    dt: float = 1.0
    """Time step of the discrete-time decrease condition (authors: 0.02, see :meth:`paper`).

    With dt = 1 and alpha = 1 the condition reads ``B(z') >= (B(z) + eps) / 2``: B may at most
    halve per step, the usual discrete-time CBF. dt = 0.02 lets B shrink by ~2 % per step only.
    """
    alpha: float = 1.0
    """Class-K gain of the decrease condition."""
    safe_weight: float = 1.0
    """Weight of the safe-state term."""
    unsafe_weight: float = 1.0
    """Weight of the unsafe-state term."""
    decrease_weight: float = 1.0
    """Weight of the decrease (CBF) term (authors: 100, see :meth:`paper`).

    Why not 100 (measured on a toy, see :mod:`lbwrap.barrier.losses`): with dt = 0.02 this term's
    gradient is ~5000x a label term's, and on transitions that enter the unsafe set (random
    actions, an unsafe policy) the conditions contradict each other; B then collapses to a
    near-constant positive value (every state "safe", a shield that never intervenes). Watch
    ``balanced_accuracy_real``; weight 1 kept it at 0.99 on the same data.
    """
    use_real_labels: bool = True
    """Classify posterior states of real data, labelled by the observed cost."""
    use_imagined_labels: bool = True
    """Classify imagined states, labelled by the cost head's prediction (authors' only labels)."""
    imagine_horizon: int = 15
    """Length of the imagined rollouts."""
    imagine_starts: int = 256
    """Number of posterior states that imagined rollouts start from."""
    real_decrease: bool = True
    """Decrease condition on real transitions posts[:, t] -> posts[:, t + 1]."""
    imagined_decrease: bool = True
    """Decrease condition on the imagined transitions."""
    grad_penalty: float = 0.0
    """Weight of the smoothness penalty mean ||dB/dx||^2 on labelled states (0 disables)."""
    class_balance: bool = True
    """Per-class means for the safe/unsafe terms (see the class docstring)."""
    lr: float = 3e-4
    """Adam learning rate of :class:`~lbwrap.barrier.trainer.BarrierTrainer` (authors: 8e-5)."""
    grad_clip: float = 100.0
    """Max global gradient norm in the trainer (``math.inf`` disables clipping)."""

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def paper(cls, **overrides: Any) -> BarrierConfig:
        """The authors' settings: sign-gated loss, dt = 0.02, decrease weight 100, lr 8e-5.

        Kept for reproduction; lbwrap's defaults differ because these collapse B to a constant
        on data that enters unsafe states (see ``decrease_weight``).
        """
        params: dict[str, Any] = {"loss_form": "paper", "dt": 0.02, "decrease_weight": 100.0,
                                  "lr": 8e-5}
        params.update(overrides)
        return cls(**params)

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message on any invalid field."""
        if self.input not in _INPUTS:
            raise ValueError(f"input: expected one of {_INPUTS}, actual {self.input!r}")
        if self.loss_form not in _FORMS:
            raise ValueError(f"loss_form: expected one of {_FORMS}, actual {self.loss_form!r}")
        _check_int(self, "hidden_dim", minimum=1)
        _check_int(self, "num_layers", minimum=0)
        _check_int(self, "imagine_horizon", minimum=1)
        _check_int(self, "imagine_starts", minimum=1)
        _check_float(self, "kappa")
        _check_float(self, "eps", minimum=0.0)
        _check_float(self, "alpha", minimum=0.0)
        _check_float(self, "dt", minimum=0.0, strict=True)
        _check_float(self, "lr", minimum=0.0, strict=True)
        for name in ("safe_weight", "unsafe_weight", "decrease_weight", "grad_penalty"):
            _check_float(self, name, minimum=0.0)
        if not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise ValueError(f"grad_clip: expected a number > 0, actual {self.grad_clip!r}")
        parts = (self.use_real_labels, self.use_imagined_labels, self.real_decrease,
                 self.imagined_decrease)
        if not any(parts):
            raise ValueError(
                "at least one of use_real_labels, use_imagined_labels, real_decrease, "
                "imagined_decrease must be True"
            )

    @property
    def uses_imagination(self) -> bool:
        """Whether the loss needs imagined rollouts (and hence a dynamics model)."""
        return self.use_imagined_labels or self.imagined_decrease

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for logging and checkpoints)."""
        return asdict(self)


def _check_int(cfg: BarrierConfig, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, actual {value!r}")


def _check_float(
    cfg: BarrierConfig, name: str, minimum: float | None = None, strict: bool = False
) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, actual {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        op = ">" if strict else ">="
        raise ValueError(f"{name}: expected a number {op} {minimum}, actual {value!r}")
