"""Safe-action filter: keep a proposed action if the shield's predictor passes it, else substitute.

Decision logic only (no Gymnasium, no SB3); the shield wrappers call it. What B will be after an
action, and whether that passes, is the business of one
:class:`~lbwrap.barrier.predictors.ShieldPredictor`, chosen by ``FilterConfig.predictor`` and
holding its own margin (:mod:`lbwrap.barrier.predictors`): the paper's ``"prior"`` (B(z) at the
world model's prior mean, margin and ``cbf`` constants from the barrier's
:class:`~lbwrap.barrier.config.BarrierConfig`) or ``"action_barrier"`` (an
:class:`~lbwrap.barrier.action_barrier.ActionBarrierNet` ``B_next(e, a)`` on the encoder embedding
``e`` of the current frame, pass ``embed=`` to the call; its logit-scale margin comes from
:class:`~lbwrap.barrier.action_barrier.ActionBarrierConfig`). Only rows whose proposal fails are
searched: all their candidates go to the predictor in one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch

from lbwrap.experimental import (
    FilterExperimental,
    as_experimental,
    move_deprecated_key,
    move_deprecated_option,
)
from lbwrap.latent_state import LatentDynamics, LatentState

from . import _random
from .action_barrier import ActionBarrierConfig, ActionBarrierNet
from .config import BarrierConfig
from .network import BarrierNet
from .predictors import ActionBarrierPredictor, PriorPredictor, ShieldPredictor

__all__ = ["ActionScorer", "FilterConfig", "FilterResult", "SafeActionFilter"]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]
#: ``scorer(rows, candidates) -> scores``: rows (m,) index the filtered batch, candidates are
#: (m, K, A) actions, scores (m, K), higher is better (e.g. the agent's critic, Q(s, a)).
ActionScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_FALLBACKS = {"max_barrier": False, "proposal": True}  # the deprecated keyword -> the option


@dataclass
class FilterConfig:
    """Settings of :class:`SafeActionFilter`: which predictor, its condition, the candidates.

    ``predictor``: ``"prior"`` (the paper's: B(z) at the world model's prior mean, see
    :class:`~lbwrap.barrier.predictors.PriorPredictor`) or ``"action_barrier"``
    (:class:`~lbwrap.barrier.predictors.ActionBarrierPredictor`; ``condition="barrier"`` and
    ``lookahead=1`` only). Each predictor owns its margin: ``eps=None`` (the default) uses it
    (B(z)'s ``BarrierConfig.eps`` for the prior, ``ActionBarrierConfig.margin`` on B_next's logit
    scale for the action barrier); a number overrides it for this filter. ``dt`` / ``alpha``
    likewise default to the barrier's ``BarrierConfig`` (the prior's ``cbf`` condition; the action
    barrier does not read them). Without a config at hand (a bare
    :class:`SafeActionFilter` built with none) the defaults of ``BarrierConfig()`` and
    ``ActionBarrierConfig()`` apply.

    ``condition``: ``"barrier"`` accepts a step when ``B(z') >= eps``; ``"cbf"`` when
    ``(B(z') - B(z)) / dt + alpha * B(z') >= eps`` (each lookahead step compared with the
    previous one). Candidates: ``num_random_candidates`` uniform in the action box and
    ``num_local_candidates`` = proposal + Gaussian noise of std ``local_std`` times half the box
    width, clipped to the box. ``seed``: seeds the filter's own ``torch.Generator``. When no
    candidate passes, the filter executes the candidate with the largest worst-case predicted B.
    """

    condition: Literal["barrier", "cbf"] = "cbf"
    dt: float | None = None
    """Time step of the prior's ``cbf`` condition (> 0); ``None``: ``BarrierConfig.dt``."""
    alpha: float | None = None
    """Class-K gain of the prior's ``cbf`` condition (>= 0); ``None``: ``BarrierConfig.alpha``."""
    eps: float | None = None
    """Override of the chosen predictor's own margin (>= 0, on that predictor's scale); ``None``:
    the predictor's (``BarrierConfig.eps`` for ``"prior"``, ``ActionBarrierConfig.margin`` for
    ``"action_barrier"``)."""
    num_random_candidates: int = 64
    num_local_candidates: int = 64
    local_std: float = 0.3
    lookahead: int = 1
    fallback: Literal["max_barrier", "proposal"] | None = field(default=None, repr=False)
    """Deprecated keyword, accepted until the next release: ``"proposal"`` (execute the proposal
    when no candidate passes) is experimental and moved to
    ``experimental=FilterExperimental(proposal_fallback=True)``
    (:class:`~lbwrap.experimental.FilterExperimental`; with a ``DeprecationWarning``);
    ``"max_barrier"``, what the filter does anyway, is accepted silently. The attribute then
    reads ``None``."""
    predictor: Literal["prior", "action_barrier"] = "prior"
    """How B after an action is predicted (see the class docstring and
    :mod:`lbwrap.barrier.predictors`)."""
    seed: int | None = None
    experimental: FilterExperimental = field(default_factory=FilterExperimental)
    """Options measured to have no effect (:mod:`lbwrap.experimental`); a dict is converted."""

    def __post_init__(self) -> None:
        self.experimental = as_experimental(self.experimental, FilterExperimental, "FilterConfig")
        if self.fallback is not None and self.fallback not in _FALLBACKS:
            raise ValueError(
                f"fallback: expected 'max_barrier' or 'proposal', actual {self.fallback!r}"
            )
        move_deprecated_option(self, "fallback", "proposal_fallback", default="max_barrier",
                               converted=_FALLBACKS.get(str(self.fallback)))
        if self.condition not in ("barrier", "cbf"):
            raise ValueError(
                f"condition: expected 'barrier' or 'cbf', actual {self.condition!r}"
            )
        for name, strict in (("dt", True), ("alpha", False), ("eps", False)):
            value = getattr(self, name)
            if value is None:
                continue
            bad = isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or (value <= 0 if strict else value < 0)
            if bad:
                raise ValueError(f"{name}: expected None or a finite number "
                                 f"{'>' if strict else '>='} 0, actual {value!r}")
        if not self.local_std >= 0:
            raise ValueError(f"local_std: expected >= 0, actual {self.local_std}")
        counts = (self.num_random_candidates, self.num_local_candidates)
        if min(counts) < 0 or sum(counts) < 1:
            raise ValueError(f"candidate counts: expected >= 0 with a sum >= 1, actual {counts}")
        if self.lookahead < 1:
            raise ValueError(f"lookahead: expected >= 1, actual {self.lookahead}")
        if self.predictor not in ("prior", "action_barrier"):
            raise ValueError(
                f"predictor: expected 'prior' or 'action_barrier', actual {self.predictor!r}"
            )
        if self.predictor == "action_barrier" and (self.condition != "barrier" or self.lookahead != 1):
            raise ValueError(
                "predictor='action_barrier' predicts one step on its own (logit) scale: use "
                f"condition='barrier' and lookahead=1, actual {self.condition!r} and {self.lookahead}"
            )

    @classmethod
    def from_barrier_config(cls, config: BarrierConfig, **overrides: object) -> FilterConfig:
        """Take ``dt``, ``alpha`` and ``eps`` from the barrier's training config, as explicit
        values (the same as leaving them ``None`` with that config, for the prior predictor)."""
        kwargs: dict[str, object] = {"dt": config.dt, "alpha": config.alpha, "eps": config.eps}
        kwargs.update(overrides)
        return cls(**kwargs)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for logging and checkpoints; without the deprecated
        ``fallback`` key)."""
        out = asdict(self)
        del out["fallback"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilterConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``. Files written before
        the move keep their settings: a ``fallback`` key is read as
        ``experimental.proposal_fallback`` without a warning, and their explicit ``dt``,
        ``alpha`` and ``eps`` stay explicit."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown FilterConfig fields: {unknown}")
        fallback = data.get("fallback")
        if fallback is not None and fallback not in _FALLBACKS:
            raise ValueError(f"fallback: expected 'max_barrier' or 'proposal', actual {fallback!r}")
        return cls(**move_deprecated_key(data, "fallback", "proposal_fallback",
                                         default="max_barrier",
                                         converted=_FALLBACKS.get(str(fallback))))

    def build_predictor(
        self, dynamics: LatentDynamics, barrier: BarrierNet, *,
        barrier_config: BarrierConfig | None = None,
        action_barrier: ActionBarrierNet | None = None,
        action_barrier_config: ActionBarrierConfig | None = None,
    ) -> ShieldPredictor:
        """The predictor these settings choose, with its own margin (``eps`` overrides it).

        ``barrier_config`` gives the prior its ``dt`` / ``alpha`` / margin (default
        ``BarrierConfig()``); ``action_barrier`` is required with ``predictor="action_barrier"``,
        whose margin comes from ``action_barrier_config`` (default ``ActionBarrierConfig()``).
        """
        if self.predictor == "action_barrier":
            if action_barrier is None:
                raise ValueError(
                    "FilterConfig(predictor='action_barrier') needs the action_barrier network; "
                    "pass action_barrier=... or use predictor='prior'"
                )
            return ActionBarrierPredictor.from_config(action_barrier, action_barrier_config,
                                                      margin=self.eps)
        return PriorPredictor.from_barrier_config(
            dynamics, barrier, barrier_config or BarrierConfig(), condition=self.condition,
            lookahead=self.lookahead, dt=self.dt, alpha=self.alpha, margin=self.eps)


@dataclass
class FilterResult:
    """Output of :class:`SafeActionFilter` for N rows.

    ``actions`` (N, A): executed actions, always inside the box. ``intervened`` (N,): the
    proposal failed the condition and was replaced. ``feasible`` (N,): the executed action meets
    the condition (False: no candidate did; the one with the largest worst-case B was taken).
    ``b_now`` (N,): B(z). ``b_next_proposed`` / ``b_next_executed`` (N,): predicted B one step
    ahead under the (clipped) proposal / the executed action.
    """

    actions: torch.Tensor
    intervened: torch.Tensor
    feasible: torch.Tensor
    b_now: torch.Tensor
    b_next_proposed: torch.Tensor
    b_next_executed: torch.Tensor


class SafeActionFilter:
    """Shield: substitute the closest action that its predictor passes (vectorised).

    Args:
        dynamics: latent dynamics (only ``action_dim`` and, for the prior predictor,
            ``img_step`` are used).
        barrier: the barrier network B(z) (``b_now`` of every result; the prior predicts with it).
        config: :class:`FilterConfig`.
        action_low, action_high: the action box, shape (action_dim,), ``low < high``.
        action_barrier: the network ``predictor="action_barrier"`` uses (required then).
        barrier_config: B(z)'s settings, the prior predictor's ``dt`` / ``alpha`` / margin
            where ``config`` leaves them ``None`` (default ``BarrierConfig()``).
        action_barrier_config: the action barrier's settings, its predictor's margin where
            ``config.eps`` is ``None`` (default ``ActionBarrierConfig()``).

    The predictor (:attr:`predictor`) is built once, by :meth:`FilterConfig.build_predictor`.
    """

    def __init__(
        self,
        dynamics: LatentDynamics,
        barrier: BarrierNet,
        config: FilterConfig,
        action_low: ArrayLike,
        action_high: ArrayLike,
        action_barrier: ActionBarrierNet | None = None,
        *,
        barrier_config: BarrierConfig | None = None,
        action_barrier_config: ActionBarrierConfig | None = None,
    ) -> None:
        self.predictor: ShieldPredictor = config.build_predictor(
            dynamics, barrier, barrier_config=barrier_config, action_barrier=action_barrier,
            action_barrier_config=action_barrier_config)
        self.action_barrier = action_barrier
        self.dynamics = dynamics
        self.barrier = barrier
        self.config = config
        low = torch.as_tensor(np.asarray(action_low, dtype=np.float64)).reshape(-1)
        high = torch.as_tensor(np.asarray(action_high, dtype=np.float64)).reshape(-1)
        dim = int(dynamics.action_dim)
        if low.shape != (dim,) or high.shape != (dim,):
            raise ValueError(
                f"action bounds: expected shape ({dim},) (dynamics.action_dim), actual "
                f"{tuple(low.shape)} and {tuple(high.shape)}"
            )
        finite = bool(torch.isfinite(low).all() and torch.isfinite(high).all())
        if not finite or not bool((low < high).all()):
            raise ValueError(f"action bounds: expected finite low < high, actual {low}, {high}")
        self.action_low, self.action_high = low, high
        self.generator = torch.Generator()
        self.reset(config.seed)

    @property
    def margin(self) -> float:
        """The margin the shield tests against: its predictor's, on that predictor's scale (not
        necessarily B(z)'s; code that needs B(z)'s reads ``BarrierConfig.eps``)."""
        return self.predictor.margin

    @property
    def action_dim(self) -> int:
        """Size of an action."""
        return int(self.action_low.shape[0])

    def reset(self, seed: int | None = None) -> None:
        """Reseed the candidate generator (``None``: fresh non-deterministic seed)."""
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def _box(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            self.action_low.to(device=like.device, dtype=like.dtype),
            self.action_high.to(device=like.device, dtype=like.dtype),
        )

    def sample_candidates(self, proposed: torch.Tensor) -> torch.Tensor:
        """Candidate actions (N, K, A) for in-box proposals (N, A): random, then local ones."""
        low, high = self._box(proposed)
        n, a = proposed.shape
        cfg = self.config
        device, dtype, gen = proposed.device, proposed.dtype, self.generator
        parts = []
        if cfg.num_random_candidates:
            u = _random.rand((n, cfg.num_random_candidates, a), device=device, dtype=dtype,
                             generator=gen)
            parts.append(low + (high - low) * u)
        if cfg.num_local_candidates:
            noise = _random.randn((n, cfg.num_local_candidates, a), device=device, dtype=dtype,
                                  generator=gen)
            local = proposed.unsqueeze(1) + noise * (cfg.local_std * (high - low) / 2)
            parts.append(torch.maximum(torch.minimum(local, high), low))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def __call__(
        self, state: LatentState, proposed: ArrayLike, embed: torch.Tensor | None = None,
        scorer: ActionScorer | None = None,
    ) -> FilterResult:
        """Filter proposals (N, A) at latent states (N, ...); see the module docstring.

        ``embed`` (N, E): encoder embeddings of the current frames, required (and only read) by
        the action-barrier predictor. ``scorer``: how a replaced proposal's substitute is
        chosen among the passing candidates: the one ``scorer`` rates highest (e.g. the agent's
        critic: the best safe action for the task); ``None``: the one closest to the proposal.
        """
        ref = state.stoch
        prop = torch.as_tensor(np.asarray(proposed) if not torch.is_tensor(proposed) else proposed)
        prop = prop.to(device=ref.device, dtype=ref.dtype)
        n = ref.shape[0]
        if prop.shape != (n, self.action_dim):
            raise ValueError(
                f"proposed: expected shape ({n}, {self.action_dim}), actual {tuple(prop.shape)}"
            )
        low, high = self._box(prop)
        prop = torch.maximum(torch.minimum(prop, high), low)
        embed = self.predictor.prepare_embed(embed, n, ref)  # None where it is not read
        b_now = self.barrier.value(state)
        ok, _, b_next_prop = self.predictor.check(state, prop, b_now, embed)

        actions, feasible, b_next_exec = prop.clone(), ok.clone(), b_next_prop.clone()
        intervened = ~ok
        rows = torch.nonzero(~ok).squeeze(-1)
        if rows.numel() > 0:
            cand_actions, cand_feasible, cand_b = self._substitute(
                state[rows], prop[rows], b_now[rows], None if embed is None else embed[rows],
                None if scorer is None else lambda cand: scorer(rows, cand),
            )
            if self.config.experimental.proposal_fallback:  # none passes: the agent's action
                cand_actions = torch.where(cand_feasible.unsqueeze(-1), cand_actions, prop[rows])
                cand_b = torch.where(cand_feasible, cand_b, b_next_prop[rows])
                intervened = intervened.clone()
                intervened[rows] = cand_feasible
            actions[rows], feasible[rows], b_next_exec[rows] = cand_actions, cand_feasible, cand_b
        actions = torch.maximum(torch.minimum(actions, high), low)
        return FilterResult(
            actions=actions,
            intervened=intervened,
            feasible=feasible,
            b_now=b_now,
            b_next_proposed=b_next_prop,
            b_next_executed=b_next_exec,
        )

    def _substitute(
        self, state: LatentState, prop: torch.Tensor, b_now: torch.Tensor,
        embed: torch.Tensor | None,
        score: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Best candidate per row: the satisfying one with the highest ``score`` (default: the
        closest to the proposal), else the largest worst-case B."""
        cand = self.sample_candidates(prop)  # (m, K, A)
        m, k, _ = cand.shape
        ok, worst, first = self.predictor.check_candidates(state, cand, b_now, embed)
        if score is None:
            preference = -(cand - prop.unsqueeze(1)).norm(dim=-1)
        else:
            preference = torch.as_tensor(score(cand)).to(device=cand.device, dtype=cand.dtype)
            if preference.shape != (m, k):
                raise ValueError(
                    f"scorer: expected scores of shape ({m}, {k}) for candidates "
                    f"{tuple(cand.shape)}, actual {tuple(preference.shape)}"
                )
            low = torch.finfo(preference.dtype).min / 2  # non-finite scores rank last, among ok
            preference = torch.nan_to_num(preference, nan=low, neginf=low, posinf=-low)
        preference = torch.where(ok, preference, torch.full_like(preference, -float("inf")))
        any_ok = ok.any(dim=1)
        worst = torch.nan_to_num(worst, nan=-float("inf"))
        choice = torch.where(any_ok, preference.argmax(dim=1), worst.argmax(dim=1))
        idx = torch.arange(m, device=cand.device)
        return cand[idx, choice], any_ok, first[idx, choice]
