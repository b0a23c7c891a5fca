"""Action-conditioned barrier: the sign of B at the *next* state, predicted from a frame and an action.

Why it exists (measured with ``benchmarks/shield_diagnostics.py`` on PixelHazard, CPU preset):
the shield must tell, at a hazard's edge, an action that enters the hazard from one that moves
away. The paper's predictor, B at the world model's one-step prior, could not: it flagged 26 % of
hazard entries with the action taken and 21 % with the *opposite* action. Retraining B on the
prior states themselves, a prior-side cost loss, more updates, free nats 1 and KL balancing did
not change that; the compact latent (deter + 30-d z) keeps whether the robot *is* in a hazard,
not precisely where the nearest hazard edge lies. The encoder's embedding of the frame does keep
it: in an exploratory check (30k random steps, script not kept), a classifier on ``[embedding,
action]`` flagged 72 % of held-out entries with the action taken and 3 % with the opposite one;
``benchmarks/shield_diagnostics.py`` measures this network the same way.

So :class:`ActionBarrierNet` ``B_next(e, a)`` is trained on real transitions
``(embedding of obs[t], action[t + 1])`` with a class-balanced logistic loss. Its target
(:func:`unsafe_targets`) is the discounted share of unsafe states among the next ``horizon``
states (default 3, discount 0.5); with ``horizon=1`` it is ``cost[t + 1] > kappa``. The horizon
matters inside a hazard: there every action keeps the next state unsafe, so a one-step label
cannot rank them, while most violating steps are spent there rather than entering. The shield
(``FilterConfig(predictor="action_barrier")``) tests ``B_next(e, a) >= margin`` for the proposal and
its candidates and, when none passes, takes the candidate with the largest ``B_next``, i.e. the
quickest way out. Its values are logits (``B_next = -logit`` of the unsafe share), not on B(z)'s
scale; only their sign and order are used, so the shield's margin on them is its own
(:attr:`ActionBarrierConfig.margin`, 2), never B(z)'s (``BarrierConfig.eps``, 0.01). The shield
reads it through :class:`~lbwrap.barrier.predictors.ActionBarrierPredictor`. Pure PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ActionBarrierConfig", "ActionBarrierNet", "action_barrier_loss", "transitions",
           "unsafe_targets"]

#: The default of :attr:`ActionBarrierConfig.margin` (its measurement: docs/design-decisions.md,
#: "The action barrier's margin is 2 on its logit scale").
_DEFAULT_MARGIN = 2.0

#: Fields of :class:`ActionBarrierConfig` that the network and its training never read (a
#: checkpoint loads into a model whose values differ).
DECISION_ONLY_FIELDS = ("margin",)


@dataclass
class ActionBarrierConfig:
    """Size and optimiser of :class:`ActionBarrierNet` (a part of ``SafetyModelConfig``)."""

    hidden_dim: int = 256
    """Width of each hidden ELU layer."""
    num_layers: int = 2
    """Number of hidden layers."""
    lr: float = 1e-3
    """Adam learning rate."""
    steps_per_batch: int = 4
    """Gradient steps on each world-model batch's transitions. Telling the action apart takes
    ~1000+ steps (exploratory check on PixelHazard with a fixed encoder, 6000 random steps:
    held-out entries flagged with the taken / opposite action 0.41 / 0.38 after 300 steps,
    0.53 / 0.14 after 1200); the network is small, so extra steps cost little next to a
    world-model update."""
    grad_clip: float = 100.0
    """Max global gradient norm."""
    horizon: int = 3
    """Steps of outcome in the label: 1 trains on "is the next state unsafe"; H > 1 on the
    discounted fraction of unsafe states among the next H (see :func:`unsafe_targets`). A one-step
    label cannot rank actions inside a hazard (every action keeps the next state unsafe), and
    most violating steps are spent inside, not entering; H > 1 ranks them by how soon they leave.
    Measured on PixelHazard with a fixed encoder (6000 random steps; eps=2; scripted random /
    greedy / noisy-greedy policies; violations vs unshielded;
    ``benchmarks/results/shield_diagnostics/horizons``): H=1: 0.27x / 0.50x / 0.50x; H=2: 0.01x /
    0.15x / 0.16x; H=3, discount 0.5: 0.03x / 0.14x / 0.15x at the same return; H=5, discount
    0.7: 0.05x / 0.46x / 0.34x at lower return (more interventions)."""
    discount: float = 0.5
    """Weight ratio between consecutive steps of the ``horizon`` (ignored when it is 1)."""
    margin: float = _DEFAULT_MARGIN
    """The shield's margin on B_next's logit scale: with
    ``FilterConfig(predictor="action_barrier")`` a proposal passes when ``B_next(e, a) >= margin``
    (``FilterConfig.eps``, when set, overrides it). Not B(z)'s margin (``BarrierConfig.eps``):
    the two live on different scales. Training never reads it, so
    :meth:`~lbwrap.safety_model.LatentSafetyModel.load_checkpoint` does not compare it."""

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "num_layers", "steps_per_batch", "horizon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ActionBarrierConfig.{name}: expected an int >= 1, actual {value!r}")
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"ActionBarrierConfig.{name}: expected a number > 0, actual {value!r}")
        if isinstance(self.discount, bool) or not isinstance(self.discount, (int, float)) \
                or not 0.0 < self.discount <= 1.0:
            raise ValueError(f"ActionBarrierConfig.discount: expected a number in (0, 1], actual "
                             f"{self.discount!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) \
                or not math.isfinite(self.margin) or self.margin < 0:
            raise ValueError(f"ActionBarrierConfig.margin: expected a finite number >= 0, actual "
                             f"{self.margin!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for logging and checkpoints)."""
        return asdict(self)


class ActionBarrierNet(nn.Module):
    """``B_next(embedding, action)``: LayerNorm(embedding), concatenated with the action, then an MLP.

    ``B_next >= 0`` predicts a safe next state, ``< 0`` an unsafe one.

    Args:
        embed_dim: size of the world model's frame embedding.
        action_dim: size of an action.
        hidden_dim, num_layers: the MLP.
    """

    def __init__(self, embed_dim: int, action_dim: int, hidden_dim: int = 256,
                 num_layers: int = 2) -> None:
        super().__init__()
        if min(embed_dim, action_dim, hidden_dim, num_layers) < 1:
            raise ValueError(
                "expected embed_dim, action_dim, hidden_dim, num_layers >= 1, actual "
                f"{embed_dim}, {action_dim}, {hidden_dim}, {num_layers}"
            )
        self.embed_dim, self.action_dim = int(embed_dim), int(action_dim)
        self.norm = nn.LayerNorm(self.embed_dim)
        layers: list[nn.Module] = []
        width = self.embed_dim + self.action_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ELU()]
            width = hidden_dim
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, config: ActionBarrierConfig, embed_dim: int,
                    action_dim: int) -> ActionBarrierNet:
        """Build the network described by ``config``."""
        return cls(embed_dim, action_dim, config.hidden_dim, config.num_layers)

    def forward(self, embed: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``embed`` (..., E) and ``action`` (..., A) -> predicted B of the next state (...)."""
        if embed.shape[-1] != self.embed_dim or action.shape[-1] != self.action_dim:
            raise ValueError(
                f"action barrier: expected embed (..., {self.embed_dim}) and action "
                f"(..., {self.action_dim}), actual {tuple(embed.shape)} and {tuple(action.shape)}"
            )
        x = torch.cat([self.norm(embed), action.to(embed.dtype)], dim=-1)
        return self.net(x).squeeze(-1)


def transitions(
    embed: torch.Tensor, action: torch.Tensor, cost: torch.Tensor, is_first: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training pairs of a (B, T) replay batch in the Dreamer convention.

    ``action[t]`` led into ``obs[t]``, so the action taken at frame ``t`` is ``action[t + 1]``
    and its outcome is ``cost[t + 1]``. Returns ``(embed[:, :-1], action[:, 1:], cost[:, 1:],
    valid)`` where ``valid`` is False for pairs that cross into a new episode.
    """
    if embed.dim() != 3 or action.dim() != 3 or embed.shape[:2] != action.shape[:2]:
        raise ValueError(
            f"expected embed (B, T, E) and action (B, T, A), actual {tuple(embed.shape)} and "
            f"{tuple(action.shape)}"
        )
    if tuple(cost.shape) != tuple(embed.shape[:2]) or tuple(is_first.shape) != tuple(cost.shape):
        raise ValueError(
            f"expected cost and is_first of shape {tuple(embed.shape[:2])}, actual "
            f"{tuple(cost.shape)} and {tuple(is_first.shape)}"
        )
    return embed[:, :-1], action[:, 1:], cost[:, 1:], ~is_first[:, 1:].bool()


def unsafe_targets(
    next_cost: torch.Tensor, valid: torch.Tensor, kappa: float, horizon: int = 1,
    discount: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft "unsafe" targets of the pairs of :func:`transitions` and which pairs are labelled.

    ``next_cost`` and ``valid`` are (B, T) in time order (pair ``t`` leads to ``next_cost[:, t]``).
    The target of pair ``t`` is ``sum_j discount**j * u[t + j] / sum_j discount**j`` over
    ``j < horizon``, where ``u = next_cost > kappa``, counting only the steps that stay in the
    chunk and in the episode (every ``valid[t..t + j]``). With ``horizon=1`` it is the 0/1 label
    ``next_cost[t] > kappa``. A pair is labelled when it is valid and ``next_cost[t] != kappa``.
    """
    if next_cost.dim() != 2 or tuple(valid.shape) != tuple(next_cost.shape):
        raise ValueError(
            f"expected next_cost and valid of the same (B, T) shape, actual "
            f"{tuple(next_cost.shape)} and {tuple(valid.shape)}"
        )
    if horizon < 1 or not 0.0 < discount <= 1.0:
        raise ValueError(f"expected horizon >= 1 and discount in (0, 1], actual {horizon}, {discount}")
    valid = valid.bool()
    unsafe = (next_cost > kappa).to(torch.float32)
    labelled = valid & (next_cost != kappa)
    if horizon == 1:
        return unsafe, labelled
    def ahead(x: torch.Tensor, j: int) -> torch.Tensor:  # x[:, t + j], zeros past the chunk
        return torch.cat([x[:, j:], x.new_zeros(x.shape[0], j)], dim=1)

    alive = valid  # pair t still looks ahead: every pair t..t + j stays in the episode
    num, den = unsafe * alive, alive.to(torch.float32)
    for j in range(1, min(horizon, next_cost.shape[1])):
        alive = alive & ahead(valid, j)
        num = num + discount ** j * ahead(unsafe, j) * alive
        den = den + discount ** j * alive
    return num / den.clamp(min=1e-8), labelled


def action_barrier_loss(
    net: ActionBarrierNet,
    embed: torch.Tensor,
    action: torch.Tensor,
    next_cost: torch.Tensor,
    valid: torch.Tensor,
    kappa: float,
    horizon: int = 1,
    discount: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Class-balanced logistic loss of ``B_next`` on labelled transitions, and its metrics.

    Targets ``y`` from :func:`unsafe_targets` (with ``horizon=1``, labels as
    :class:`~lbwrap.barrier.BarrierConfig`: ``next_cost > kappa`` unsafe, ``< kappa`` safe, equal
    unlabelled). Loss: ``sum(y * softplus(B_next)) / sum(y)`` plus
    ``sum((1 - y) * softplus(-B_next)) / sum(1 - y)`` over labelled pairs (a class without mass
    contributes 0), so rare unsafe outcomes weigh as much as the common safe ones. ``embed`` is
    detached: this loss never trains the encoder. With soft targets the optimum of ``B_next`` is
    ``-logit(y)`` up to the class weights.

    Metrics: ``loss``, ``balanced_accuracy`` of the sign of ``B_next`` against ``y >= 0.5``
    (NaN unless both classes are present), ``n_unsafe``, ``n_safe`` (counts of those labels).
    """
    b = net(embed.detach(), action)
    target, labelled = unsafe_targets(next_cost, valid, kappa, horizon, discount)
    lab = labelled.to(b.dtype)
    y = target.to(b.dtype) * lab
    not_y = (1.0 - target.to(b.dtype)) * lab
    loss_unsafe = (y * F.softplus(b)).sum() / y.sum().clamp(min=1e-8)
    loss_safe = (not_y * F.softplus(-b)).sum() / not_y.sum().clamp(min=1e-8)
    loss = loss_unsafe + loss_safe
    with torch.no_grad():
        unsafe = labelled & (target >= 0.5)
        safe = labelled & (target < 0.5)
        n_unsafe, n_safe = unsafe.sum(), safe.sum()
        tpr = ((b < 0) & unsafe).sum() / n_unsafe.clamp(min=1)
        tnr = ((b >= 0) & safe).sum() / n_safe.clamp(min=1)
        stats = torch.stack([loss.detach(), (tpr + tnr) / 2, n_unsafe.float(), n_safe.float()])
    values = stats.cpu().tolist()  # one device sync
    both = values[2] > 0 and values[3] > 0
    return loss, {"loss": values[0], "balanced_accuracy": values[1] if both else math.nan,
                  "n_unsafe": values[2], "n_safe": values[3]}
