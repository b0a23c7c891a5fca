"""Safe-action filter: keep a proposed action if the barrier condition holds, else substitute.

Decision logic only (no Gymnasium, no SB3); the shield wrappers call it. Predictions use the
prior *mean* of the latent dynamics (``img_step(..., sample=False)``), repeating the candidate
action for ``lookahead`` steps; the condition must hold at every step. Only rows whose proposal
fails are searched: all their candidates go through one ``img_step`` call per lookahead step.

Note on the ``cbf`` condition with the paper's ``dt = 0.02, alpha = 1``: it requires
``B(z') >= (B(z) + eps * dt) / (1 + alpha * dt)``, i.e. B may shrink by at most ~2 % per step,
even deep inside the safe set. That is much stricter than ``barrier`` (``B(z') >= eps``) and
makes the shield intervene whenever the agent heads towards the boundary; choose ``dt`` /
``alpha`` for the shield deliberately.

``predictor="action_barrier"`` replaces "B at the prior mean" by an
:class:`~lbwrap.barrier.action_barrier.ActionBarrierNet` ``B_next(e, a)`` evaluated on the
encoder embedding ``e`` of the current frame (pass ``embed=`` to the call); it needs
``condition="barrier"`` and ``lookahead=1`` (see that module for why it exists).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from lbwrap.latent_state import LatentDynamics, LatentState, rollout

from . import _random
from .action_barrier import ActionBarrierNet
from .config import BarrierConfig
from .losses import decrease_lhs
from .network import BarrierNet

__all__ = ["ActionScorer", "FilterConfig", "FilterResult", "SafeActionFilter"]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]
#: ``scorer(rows, candidates) -> scores``: rows (m,) index the filtered batch, candidates are
#: (m, K, A) actions, scores (m, K), higher is better (e.g. the agent's critic, Q(s, a)).
ActionScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FilterConfig:
    """Settings of :class:`SafeActionFilter`.

    ``condition``: ``"barrier"`` accepts a step when ``B(z') >= eps``; ``"cbf"`` when
    ``(B(z') - B(z)) / dt + alpha * B(z') >= eps`` (each lookahead step compared with the
    previous one). Candidates: ``num_random_candidates`` uniform in the action box and
    ``num_local_candidates`` = proposal + Gaussian noise of std ``local_std`` times half the box
    width, clipped to the box. ``seed``: seeds the filter's own ``torch.Generator``.
    """

    condition: Literal["barrier", "cbf"] = "cbf"
    dt: float = 1.0
    alpha: float = 1.0
    eps: float = 0.01
    num_random_candidates: int = 64
    num_local_candidates: int = 64
    local_std: float = 0.3
    lookahead: int = 1
    fallback: Literal["max_barrier", "proposal"] = "max_barrier"
    """What to execute when no candidate meets the condition: the candidate with the largest
    worst-case predicted B (default), or the unchanged proposal ("the model sees no safe action, so
    it has no grounds to override the agent"). Measured on PixelHazard
    (``benchmarks/shield_diagnostics.py``): ``max_barrier`` cut a random policy's violations to
    0.68x but raised a goal-seeking policy's to 1.38x (it fights the agent inside hazards, where
    the learned prior predicts nearly the same B for every action); ``proposal`` was neutral for
    the goal-seeker (0.99x) and gave up the random policy's benefit (1.29x)."""
    predictor: Literal["prior", "action_barrier"] = "prior"
    """How B after an action is predicted: ``"prior"`` (the paper) rolls the world model's prior
    mean and evaluates B(z'); ``"action_barrier"`` evaluates an :class:`ActionBarrierNet` on the
    current frame's embedding and the action (``condition="barrier"``, ``lookahead=1`` only)."""
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.condition not in ("barrier", "cbf"):
            raise ValueError(
                f"condition: expected 'barrier' or 'cbf', actual {self.condition!r}"
            )
        if not self.dt > 0 or not self.alpha >= 0 or not self.eps >= 0 or not self.local_std >= 0:
            raise ValueError(
                "expected dt > 0, alpha >= 0, eps >= 0, local_std >= 0, actual "
                f"{self.dt}, {self.alpha}, {self.eps}, {self.local_std}"
            )
        counts = (self.num_random_candidates, self.num_local_candidates)
        if min(counts) < 0 or sum(counts) < 1:
            raise ValueError(f"candidate counts: expected >= 0 with a sum >= 1, actual {counts}")
        if self.lookahead < 1:
            raise ValueError(f"lookahead: expected >= 1, actual {self.lookahead}")
        if self.fallback not in ("max_barrier", "proposal"):
            raise ValueError(
                f"fallback: expected 'max_barrier' or 'proposal', actual {self.fallback!r}"
            )
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
        """Take ``dt``, ``alpha`` and ``eps`` from the barrier's training config."""
        kwargs: dict[str, object] = {"dt": config.dt, "alpha": config.alpha, "eps": config.eps}
        kwargs.update(overrides)
        return cls(**kwargs)  # type: ignore[arg-type]


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
    """Shield: substitute the closest action that keeps the barrier condition (vectorised).

    Args:
        dynamics: latent dynamics (only ``action_dim`` and ``img_step`` are used).
        barrier: the barrier network.
        config: :class:`FilterConfig`.
        action_low, action_high: the action box, shape (action_dim,), ``low < high``.
        action_barrier: the network ``predictor="action_barrier"`` uses (required then).
    """

    def __init__(
        self,
        dynamics: LatentDynamics,
        barrier: BarrierNet,
        config: FilterConfig,
        action_low: ArrayLike,
        action_high: ArrayLike,
        action_barrier: ActionBarrierNet | None = None,
    ) -> None:
        if config.predictor == "action_barrier" and action_barrier is None:
            raise ValueError(
                "FilterConfig(predictor='action_barrier') needs the action_barrier network; "
                "pass action_barrier=... or use predictor='prior'"
            )
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

    def _check(
        self, state: LatentState, action: torch.Tensor, b_now: torch.Tensor,
        embed: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Roll ``lookahead`` mean-prior steps repeating ``action`` (or ask the action barrier).

        Returns ``(ok, worst_b, b_first)``: condition held at every step, min B over the steps,
        B after the first step.
        """
        cfg = self.config
        if cfg.predictor == "action_barrier":
            assert self.action_barrier is not None and embed is not None
            b = self.action_barrier(embed, action)
            return b >= cfg.eps, b, b
        ok = torch.ones_like(b_now, dtype=torch.bool)
        prev, worst, first = b_now, None, None
        reached, _ = rollout(self.dynamics, state, cfg.lookahead, lambda _t, _s: action,
                             sample=False)  # the candidate, repeated
        for next_state in reached:
            b = self.barrier.value(next_state)
            if cfg.condition == "barrier":
                ok = ok & (b >= cfg.eps)
            else:
                ok = ok & (decrease_lhs(prev, b, cfg.dt, cfg.alpha) >= cfg.eps)
            worst = b if worst is None else torch.minimum(worst, b)
            first = b if first is None else first
            prev = b
        assert worst is not None and first is not None
        return ok, worst, first

    @torch.no_grad()
    def __call__(
        self, state: LatentState, proposed: ArrayLike, embed: torch.Tensor | None = None,
        scorer: ActionScorer | None = None,
    ) -> FilterResult:
        """Filter proposals (N, A) at latent states (N, ...); see the module docstring.

        ``embed`` (N, E): encoder embeddings of the current frames, required (and only used) with
        ``predictor="action_barrier"``. ``scorer``: how a replaced proposal's substitute is
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
        if self.config.predictor == "action_barrier":
            embed = self._check_embed(embed, n, ref)
        else:
            embed = None  # the prior does not read it (wrappers pass it whatever the predictor)
        b_now = self.barrier.value(state)
        ok, _, b_next_prop = self._check(state, prop, b_now, embed)

        actions, feasible, b_next_exec = prop.clone(), ok.clone(), b_next_prop.clone()
        intervened = ~ok
        rows = torch.nonzero(~ok).squeeze(-1)
        if rows.numel() > 0:
            cand_actions, cand_feasible, cand_b = self._substitute(
                state[rows], prop[rows], b_now[rows], None if embed is None else embed[rows],
                None if scorer is None else lambda cand: scorer(rows, cand),
            )
            if self.config.fallback == "proposal":  # no safe candidate: leave the agent's action
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

    def _check_embed(self, embed: torch.Tensor | None, n: int, ref: torch.Tensor) -> torch.Tensor:
        assert self.action_barrier is not None
        if embed is None:
            raise ValueError(
                "predictor='action_barrier' needs embed=: the world model's embedding of the "
                "current frames (LatentTracker.embed)"
            )
        embed = torch.as_tensor(embed).to(device=ref.device, dtype=ref.dtype)
        expected = (n, self.action_barrier.embed_dim)
        if tuple(embed.shape) != expected:
            raise ValueError(f"embed: expected shape {expected}, actual {tuple(embed.shape)}")
        return embed

    def _substitute(
        self, state: LatentState, prop: torch.Tensor, b_now: torch.Tensor,
        embed: torch.Tensor | None,
        score: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Best candidate per row: the satisfying one with the highest ``score`` (default: the
        closest to the proposal), else the largest worst-case B."""
        cand = self.sample_candidates(prop)  # (m, K, A)
        m, k, a = cand.shape
        if embed is None:  # the prior rolls every candidate from a copy of its row's state
            rep, rep_embed = state.map(lambda t: t.repeat_interleave(k, dim=0)), None
        else:  # the action barrier reads only the embedding
            rep, rep_embed = state, embed.repeat_interleave(k, dim=0)
        ok, worst, first = self._check(rep, cand.reshape(m * k, a), b_now.repeat_interleave(k),
                                       rep_embed)
        ok, worst, first = ok.view(m, k), worst.view(m, k), first.view(m, k)
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
