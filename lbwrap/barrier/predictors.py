"""Shield predictors: what B will be after an action, and whether that passes, by one model's margin.

:class:`~lbwrap.barrier.filter.SafeActionFilter` asks one :class:`ShieldPredictor` about the
proposals and their candidates and never reads a margin itself. Each predictor owns its margin,
on its own model's scale:

* :class:`PriorPredictor` (the paper): rolls the world model's prior *mean*
  (``img_step(..., sample=False)``) for ``lookahead`` steps, repeating the action, and evaluates
  B(z) at each state reached. Its condition and margin are B(z)'s: ``"barrier"`` accepts a step
  when ``B(z') >= margin``, ``"cbf"`` when ``(B(z') - B(z)) / dt + alpha * B(z') >= margin``
  (each step compared with the previous one); the condition must hold at every step.
  :meth:`PriorPredictor.from_barrier_config` takes ``dt``, ``alpha`` and the margin (``eps``)
  from the barrier's :class:`~lbwrap.barrier.config.BarrierConfig`.
* :class:`ActionBarrierPredictor` (lbwrap's default): evaluates the
  :class:`~lbwrap.barrier.action_barrier.ActionBarrierNet` ``B_next(e, a)`` on the encoder
  embedding ``e`` of the current frame and accepts an action when ``B_next >= margin``. Its
  margin lives on B_next's logit scale (:attr:`ActionBarrierConfig.margin
  <lbwrap.barrier.action_barrier.ActionBarrierConfig.margin>`, 2), not on B(z)'s.

Code that needs B(z)'s margin (the barrier penalty, ``BarrierSAC``'s actor term) reads
``BarrierConfig.eps``; the shield's margin is ``SafeActionFilter.margin`` (its predictor's).

Note on the ``cbf`` condition with the paper's ``dt = 0.02, alpha = 1``: it requires
``B(z') >= (B(z) + margin * dt) / (1 + alpha * dt)``, i.e. B may shrink by at most ~2 % per
step, even deep inside the safe set; that makes the shield intervene whenever the agent heads
towards the boundary.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Literal, NamedTuple

import torch

from lbwrap.latent_state import LatentDynamics, LatentState, rollout

from .action_barrier import _DEFAULT_MARGIN, ActionBarrierConfig, ActionBarrierNet
from .config import BarrierConfig
from .losses import decrease_lhs
from .network import BarrierNet

__all__ = ["ActionBarrierPredictor", "PredictorCheck", "PriorPredictor", "ShieldPredictor"]

Condition = Literal["barrier", "cbf"]


class PredictorCheck(NamedTuple):
    """A predictor's answer for a batch of actions (all shaped like the batch).

    ``ok``: the condition held (at every predicted step). ``worst``: the smallest predicted B over
    the steps (the shield's fallback takes the largest). ``first``: the predicted B after the
    first step.
    """

    ok: torch.Tensor
    worst: torch.Tensor
    first: torch.Tensor


class ShieldPredictor(ABC):
    """Predicts B after actions and tests the shield's condition against its own :attr:`margin`.

    Subclasses implement :attr:`margin` and :meth:`check`; :meth:`check_candidates` and
    :meth:`prepare_embed` have defaults.
    """

    name: ClassVar[str]
    """What ``FilterConfig.predictor`` calls this predictor."""

    @property
    @abstractmethod
    def margin(self) -> float:
        """The margin of this predictor's condition, on its own model's scale."""

    @abstractmethod
    def check(self, state: LatentState, action: torch.Tensor, b_now: torch.Tensor,
              embed: torch.Tensor | None) -> PredictorCheck:
        """Predict for ``action`` (N, A) at ``state`` (N, ...), where ``b_now`` (N,) is B(z) and
        ``embed`` (N, E) the frame embeddings (``None`` unless :meth:`prepare_embed` kept them);
        every tensor of the result is (N,)."""

    def check_candidates(self, state: LatentState, candidates: torch.Tensor, b_now: torch.Tensor,
                         embed: torch.Tensor | None) -> PredictorCheck:
        """:meth:`check` for K candidate actions per row: ``candidates`` (m, K, A) at ``state``
        (m, ...); every tensor of the result is (m, K). The default repeats each row K times."""
        m, k, a = candidates.shape
        rep = state.map(lambda t: t.repeat_interleave(k, dim=0))
        rep_embed = None if embed is None else embed.repeat_interleave(k, dim=0)
        result = self.check(rep, candidates.reshape(m * k, a), b_now.repeat_interleave(k),
                            rep_embed)
        return PredictorCheck(*(t.view(m, k) for t in result))

    def prepare_embed(self, embed: torch.Tensor | None, n: int,
                      like: torch.Tensor) -> torch.Tensor | None:
        """The embeddings this predictor reads, checked for ``n`` rows and moved to ``like``'s
        device and dtype; the default reads none and returns ``None`` whatever it is given (the
        wrappers pass embeddings whatever the predictor)."""
        return None


def _check_margin(owner: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"{owner}: margin must be a finite number >= 0, got {value!r}")
    return float(value)


class PriorPredictor(ShieldPredictor):
    """B(z) at the world model's prior mean after the action, repeated for ``lookahead`` steps.

    Args:
        dynamics: latent dynamics (only ``img_step`` is used, with ``sample=False``).
        barrier: the barrier network B(z).
        condition: ``"barrier"`` (``B(z') >= margin``) or ``"cbf"`` (``(B(z') - B(z)) / dt +
            alpha * B(z') >= margin``), tested at every lookahead step.
        dt, alpha: the ``cbf`` condition's time step (> 0) and class-K gain (>= 0).
        margin: B(z)'s margin (``BarrierConfig.eps``, >= 0).
        lookahead: prior steps per prediction (>= 1).
    """

    name = "prior"

    def __init__(self, dynamics: LatentDynamics, barrier: BarrierNet, *,
                 condition: Condition = "cbf", dt: float = 1.0, alpha: float = 1.0,
                 margin: float = 0.01, lookahead: int = 1) -> None:
        if condition not in ("barrier", "cbf"):
            raise ValueError(f"PriorPredictor: condition must be 'barrier' or 'cbf', got "
                             f"{condition!r}")
        if not (math.isfinite(dt) and dt > 0) or not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"PriorPredictor: expected finite dt > 0 and alpha >= 0, got dt={dt}, "
                             f"alpha={alpha}")
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 1:
            raise ValueError(f"PriorPredictor: lookahead must be an int >= 1, got {lookahead!r}")
        self.dynamics, self.barrier = dynamics, barrier
        self.condition: Condition = condition
        self.dt, self.alpha = float(dt), float(alpha)
        self._margin = _check_margin("PriorPredictor", margin)
        self.lookahead = int(lookahead)

    @classmethod
    def from_barrier_config(cls, dynamics: LatentDynamics, barrier: BarrierNet,
                            config: BarrierConfig, *, condition: Condition = "cbf",
                            lookahead: int = 1, dt: float | None = None,
                            alpha: float | None = None,
                            margin: float | None = None) -> PriorPredictor:
        """The predictor with B(z)'s own ``dt``, ``alpha`` and margin (``eps``) from ``config``;
        ``dt`` / ``alpha`` / ``margin`` given here override the config's."""
        return cls(dynamics, barrier, condition=condition,
                   dt=config.dt if dt is None else dt,
                   alpha=config.alpha if alpha is None else alpha,
                   margin=config.eps if margin is None else margin, lookahead=lookahead)

    @property
    def margin(self) -> float:
        """B(z)'s margin, the right-hand side of the condition."""
        return self._margin

    def check(self, state: LatentState, action: torch.Tensor, b_now: torch.Tensor,
              embed: torch.Tensor | None) -> PredictorCheck:
        """Roll ``lookahead`` mean-prior steps repeating ``action``; ``embed`` is not read."""
        ok = torch.ones_like(b_now, dtype=torch.bool)
        prev, worst, first = b_now, None, None
        reached, _ = rollout(self.dynamics, state, self.lookahead, lambda _t, _s: action,
                             sample=False)  # the candidate, repeated
        for next_state in reached:
            b = self.barrier.value(next_state)
            if self.condition == "barrier":
                ok = ok & (b >= self._margin)
            else:
                ok = ok & (decrease_lhs(prev, b, self.dt, self.alpha) >= self._margin)
            worst = b if worst is None else torch.minimum(worst, b)
            first = b if first is None else first
            prev = b
        assert worst is not None and first is not None
        return PredictorCheck(ok, worst, first)


class ActionBarrierPredictor(ShieldPredictor):
    """``B_next(e, a)`` of an :class:`~lbwrap.barrier.action_barrier.ActionBarrierNet`, one step.

    An action passes when ``B_next >= margin``; the margin is on B_next's logit scale (default:
    :attr:`ActionBarrierConfig.margin <lbwrap.barrier.action_barrier.ActionBarrierConfig.margin>`,
    2). It reads the embeddings of the current frames, never the latent state or the world
    model.

    Args:
        net: the action barrier.
        margin: the logit-scale margin (>= 0).
    """

    name = "action_barrier"

    def __init__(self, net: ActionBarrierNet, margin: float = _DEFAULT_MARGIN) -> None:
        if not isinstance(net, ActionBarrierNet):
            raise TypeError(f"ActionBarrierPredictor needs an ActionBarrierNet, got "
                            f"{type(net).__name__}")
        self.net = net
        self._margin = _check_margin("ActionBarrierPredictor", margin)

    @classmethod
    def from_config(cls, net: ActionBarrierNet, config: ActionBarrierConfig | None = None, *,
                    margin: float | None = None) -> ActionBarrierPredictor:
        """The predictor with ``config.margin`` (the default config's without one); ``margin``
        given here overrides it."""
        if margin is None:
            margin = (config or ActionBarrierConfig()).margin
        return cls(net, margin)

    @property
    def margin(self) -> float:
        """The margin on B_next's logit scale."""
        return self._margin

    def check(self, state: LatentState, action: torch.Tensor, b_now: torch.Tensor,
              embed: torch.Tensor | None) -> PredictorCheck:
        """``B_next(embed, action) >= margin``; ``state`` and ``b_now`` are not read."""
        if embed is None:
            raise ValueError("the action-barrier predictor needs embed=: the world model's "
                             "embedding of the current frames (LatentTracker.embed)")
        b = self.net(embed, action)
        return PredictorCheck(b >= self._margin, b, b)

    def check_candidates(self, state: LatentState, candidates: torch.Tensor, b_now: torch.Tensor,
                         embed: torch.Tensor | None) -> PredictorCheck:
        """:meth:`check` for (m, K, A) candidates; only the embeddings are repeated."""
        if embed is None:
            raise ValueError("the action-barrier predictor needs embed=: the world model's "
                             "embedding of the current frames (LatentTracker.embed)")
        m, k, a = candidates.shape
        result = self.check(state, candidates.reshape(m * k, a), b_now,
                            embed.repeat_interleave(k, dim=0))
        return PredictorCheck(*(t.view(m, k) for t in result))

    def prepare_embed(self, embed: torch.Tensor | None, n: int,
                      like: torch.Tensor) -> torch.Tensor | None:
        """``embed`` as (n, E) on ``like``'s device and dtype; ``None`` or another shape raises
        ``ValueError``."""
        if embed is None:
            raise ValueError(
                "predictor='action_barrier' needs embed=: the world model's embedding of the "
                "current frames (LatentTracker.embed)"
            )
        embed = torch.as_tensor(embed).to(device=like.device, dtype=like.dtype)
        expected = (n, self.net.embed_dim)
        if tuple(embed.shape) != expected:
            raise ValueError(f"embed: expected shape {expected}, actual {tuple(embed.shape)}")
        return embed
