"""Losses of the latent barrier-like function B(z) and their metrics.

Conditions (margin ``eps``), sign convention ``B >= 0`` safe:

1. safe states: ``B(z) >= eps``
2. unsafe states: ``B(z) <= -eps``
3. transitions z -> z': ``decrease_lhs = (B(z') - B(z)) / dt + alpha * B(z') >= eps``

Two loss forms (``BarrierConfig.loss_form``):

* ``hinge``: ``relu(eps - B)`` on safe, ``relu(B + eps)`` on unsafe,
  ``relu(eps - decrease_lhs)`` on transitions. Every violated condition, margin included,
  has a gradient of magnitude 1 until the margin is met.
* ``paper`` (the authors' terms 1 and 2): ``1[B < eps] * relu(-B)`` on safe and
  ``1[B > -eps] * relu(B)`` on unsafe; ``eps`` enters only the violation indicator, which
  carries no gradient. The value and gradient therefore equal ``relu(-B)`` / ``relu(B)``: a
  state is pushed only while its *sign* is wrong; inside the margin band (``0 <= B < eps`` for
  safe, ``-eps < B <= 0`` for unsafe) it counts as a violation but gets no gradient, so learned
  margins can be arbitrarily thin and the sign flips under small perturbations. Term 3 is the
  same hinge in both forms (the authors gate only terms 1 and 2).

Default, as measured: on a 2-D latent toy with known truth (unsafe disk, ~5 % of states;
paper-size net, 1000 Adam steps of the real + imagined loss, 2-3 seeds, 20k held-out points)
both forms classify equally with labels only (balanced accuracy 0.994), but hinge meets the
margin more often (0.977 vs 0.940). With the decrease term (weight 1) hinge wins clearly:
balanced accuracy 0.99 vs 0.91 on random-walk data (margin met 0.88 vs 0.41: the paper form
leaves unsafe states at B ~ 0, mean -0.001) and 0.99 vs 0.96 on data from a safe policy, hence
``hinge`` is the default. With the authors' decrease weight 100 and dt 0.02, *both* forms
collapse to a near-constant B ~ +0.02 (balanced accuracy 0.5-0.7) whenever transitions can enter
the unsafe set: see ``BarrierConfig.decrease_weight``.

Gradients: all input states are detached by default (``detach_states=True``), and imagined
rollouts then run under ``torch.no_grad()``, so the barrier loss never reaches the encoder,
the world model or a policy. With ``detach_states=False`` (the actor's loss), gradients flow
through ``dynamics.img_step`` into the policy's actions, and also into whatever world-model
parameters ``img_step`` uses: keep those parameters out of the optimiser that steps on this
loss and zero their ``.grad`` before the world model's own update (or freeze them with
``requires_grad_(False)`` around the call).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lbwrap.latent_state import LatentDynamics, LatentState

from . import _random
from .config import BarrierConfig, LossForm
from .network import BarrierNet
from .rollout import Policy, imagine

__all__ = [
    "CostFn",
    "barrier_loss",
    "compute_barrier_loss",
    "decrease_lhs",
    "decrease_term",
    "gradient_penalty",
    "group_loss",
    "safe_term",
    "unsafe_term",
]

CostFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps features cat(deter, stoch) (N, D) to predicted costs (N,) or (N, 1)."""

Pairs = tuple[LatentState, LatentState, torch.Tensor | None]


# ----------------------------------------------------------------------------- condition terms


def decrease_lhs(b: torch.Tensor, b_next: torch.Tensor, dt: float, alpha: float) -> torch.Tensor:
    """``(b_next - b) / dt + alpha * b_next``; the decrease condition holds when ``>= eps``."""
    return (b_next - b) / dt + alpha * b_next


def safe_term(b: torch.Tensor, form: LossForm, eps: float) -> torch.Tensor:
    """Per-state penalty of safe states (see the module docstring for the two forms)."""
    if form == "hinge":
        return F.relu(eps - b)
    if form == "paper":
        return (b < eps).to(b.dtype) * F.relu(-b)
    raise ValueError(f"loss form: expected 'hinge' or 'paper', actual {form!r}")


def unsafe_term(b: torch.Tensor, form: LossForm, eps: float) -> torch.Tensor:
    """Per-state penalty of unsafe states (see the module docstring for the two forms)."""
    if form == "hinge":
        return F.relu(b + eps)
    if form == "paper":
        return (b > -eps).to(b.dtype) * F.relu(b)
    raise ValueError(f"loss form: expected 'hinge' or 'paper', actual {form!r}")


def decrease_term(lhs: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-transition penalty ``relu(eps - decrease_lhs)`` (same in both forms)."""
    return F.relu(eps - lhs)


def gradient_penalty(barrier: BarrierNet, x: torch.Tensor) -> torch.Tensor:
    """``mean ||dB/dx||^2`` at the (detached) inputs ``x`` (N, D); a smoothness regulariser."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(barrier(x).sum(), x, create_graph=True)
    return grad.pow(2).sum(-1).mean()


# ----------------------------------------------------------------------------- one data group


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` divided by ``count`` (NaN-free; 0 when count is 0)."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / count.clamp(min=1)


def _masked_stat(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Like :func:`_masked_mean` but NaN when ``count`` is 0 (for metrics only)."""
    mean = _masked_mean(values.detach().to(torch.float32), mask, count)
    return torch.where(count > 0, mean, torch.full_like(mean, math.nan))


def group_loss(
    config: BarrierConfig,
    *,
    b: torch.Tensor | None = None,
    safe_mask: torch.Tensor | None = None,
    unsafe_mask: torch.Tensor | None = None,
    b_t: torch.Tensor | None = None,
    b_next: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted loss of one data group from barrier values (tensor-level core).

    Args:
        config: supplies form, margins, weights and ``class_balance``.
        b, safe_mask, unsafe_mask: barrier values of labelled states and their class masks
            (any equal shapes); omit ``b`` to skip terms 1-2.
        b_t, b_next, valid: barrier values at both ends of transitions and which are real
            transitions (equal shapes); omit ``b_t`` to skip term 3.

    Returns:
        ``(loss, stats)`` where ``stats`` holds detached 0-d tensors (see :func:`barrier_loss`).
    """
    loss = torch.zeros((), device=_device_of(b, b_t))
    stats: dict[str, torch.Tensor] = {}
    if b is not None:
        if safe_mask is None or unsafe_mask is None:
            raise ValueError("labelled barrier values need both safe_mask and unsafe_mask")
        safe_mask, unsafe_mask = safe_mask.bool(), unsafe_mask.bool()
        n_safe, n_unsafe = safe_mask.sum(), unsafe_mask.sum()
        if config.class_balance:
            den_safe, den_unsafe = n_safe, n_unsafe
        else:
            den_safe = den_unsafe = n_safe + n_unsafe
        l_safe = _masked_mean(safe_term(b, config.loss_form, config.eps), safe_mask, den_safe)
        l_unsafe = _masked_mean(
            unsafe_term(b, config.loss_form, config.eps), unsafe_mask, den_unsafe
        )
        loss = loss + config.safe_weight * l_safe + config.unsafe_weight * l_unsafe
        acc_safe = _masked_stat(b >= 0, safe_mask, n_safe)
        acc_unsafe = _masked_stat(b < 0, unsafe_mask, n_unsafe)
        margin_safe = _masked_stat(b >= config.eps, safe_mask, n_safe)
        margin_unsafe = _masked_stat(b <= -config.eps, unsafe_mask, n_unsafe)
        stats.update(
            loss_safe=l_safe.detach(),
            loss_unsafe=l_unsafe.detach(),
            balanced_accuracy=(acc_safe + acc_unsafe) / 2,
            margin_satisfied=(margin_safe + margin_unsafe) / 2,
            n_safe=n_safe,
            n_unsafe=n_unsafe,
            b_mean_safe=_masked_stat(b, safe_mask, n_safe),
            b_mean_unsafe=_masked_stat(b, unsafe_mask, n_unsafe),
        )
    if b_t is not None:
        if b_next is None:
            raise ValueError("transition barrier values need b_next")
        valid = torch.ones_like(b_t, dtype=torch.bool) if valid is None else valid.bool()
        n_pairs = valid.sum()
        lhs = decrease_lhs(b_t, b_next, config.dt, config.alpha)
        l_dec = _masked_mean(decrease_term(lhs, config.eps), valid, n_pairs)
        loss = loss + config.decrease_weight * l_dec
        stats.update(
            loss_decrease=l_dec.detach(),
            decrease_satisfied=_masked_stat(lhs >= config.eps, valid, n_pairs),
            n_pairs=n_pairs,
        )
    return loss, stats


def _device_of(*tensors: torch.Tensor | None) -> torch.device:
    for t in tensors:
        if t is not None:
            return t.device
    raise ValueError("nothing to compute: give labelled values and/or transition values")


def _to_floats(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """One device sync for all metrics."""
    if not stats:
        return {}
    values = torch.stack([v.detach().to(torch.float32).reshape(()) for v in stats.values()])
    return dict(zip(stats.keys(), values.cpu().tolist(), strict=True))


def barrier_loss(
    barrier: BarrierNet,
    config: BarrierConfig,
    *,
    labelled_states: LatentState | None = None,
    safe_mask: torch.Tensor | None = None,
    unsafe_mask: torch.Tensor | None = None,
    pairs: Pairs | None = None,
    detach_states: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Barrier loss of one group of data.

    Args:
        barrier: the network B.
        config: loss form, margins and weights.
        labelled_states: states (any leading shape) with boolean ``safe_mask``/``unsafe_mask``
            of that leading shape (states in neither are ignored).
        pairs: ``(states_t, states_next, valid_mask)``, transitions z -> z' with a boolean mask
            of real transitions (``valid_mask`` may be None: all valid).
        detach_states: detach the states first so no gradient reaches what produced them.

    Returns:
        ``(loss, metrics)``; metrics (floats): ``loss``, ``loss_safe``, ``loss_unsafe``,
        ``balanced_accuracy`` (mean of the fractions of safe states with B >= 0 and of unsafe
        states with B < 0; NaN when a class is absent), ``margin_satisfied`` (same with the
        margins), ``n_safe``, ``n_unsafe``, ``b_mean_safe``, ``b_mean_unsafe`` (NaN when the
        class is absent), ``loss_decrease``, ``decrease_satisfied`` (fraction of valid pairs with
        ``decrease_lhs >= eps``; NaN without pairs), ``n_pairs``. Keys of an omitted part are
        absent; add ``grad_penalty`` when ``config.grad_penalty > 0``.
    """
    b = b_t = b_next = valid = None
    inputs: list[torch.Tensor] = []
    if labelled_states is not None:
        states = labelled_states.detach() if detach_states else labelled_states
        b = barrier.value(states)
        inputs.append(barrier.barrier_input(states, barrier.input_kind).flatten(0, -2))
    if pairs is not None:
        s_t, s_next, valid = pairs
        if detach_states:
            s_t, s_next = s_t.detach(), s_next.detach()
        b_t, b_next = barrier.value(s_t), barrier.value(s_next)
        inputs.append(barrier.barrier_input(s_t, barrier.input_kind).flatten(0, -2))
    loss, stats = group_loss(
        config, b=b, safe_mask=safe_mask, unsafe_mask=unsafe_mask, b_t=b_t, b_next=b_next,
        valid=valid,
    )
    loss = _add_grad_penalty(barrier, config, loss, stats, inputs)
    stats["loss"] = loss.detach()
    return loss, _to_floats(stats)


def _add_grad_penalty(
    barrier: BarrierNet,
    config: BarrierConfig,
    loss: torch.Tensor,
    stats: dict[str, torch.Tensor],
    inputs: list[torch.Tensor],
) -> torch.Tensor:
    if config.grad_penalty <= 0 or not inputs:
        return loss
    gp = gradient_penalty(barrier, torch.cat(inputs, dim=0))
    stats["grad_penalty"] = gp.detach()
    return loss + config.grad_penalty * gp


# ----------------------------------------------------------------------------- full batch


def _check_batch(posts: LatentState, cost: torch.Tensor, is_first: torch.Tensor) -> None:
    lead = tuple(posts.stoch.shape[:2])
    if posts.stoch.dim() != 3:
        shape = tuple(posts.stoch.shape)
        raise ValueError(f"posts.stoch: expected shape (B, T, Z), actual {shape}")
    if tuple(cost.shape) != lead or tuple(is_first.shape) != lead:
        raise ValueError(
            f"cost and is_first: expected shape {lead}, actual {tuple(cost.shape)} and "
            f"{tuple(is_first.shape)}"
        )


def _labels(cost: torch.Tensor, kappa: float) -> tuple[torch.Tensor, torch.Tensor]:
    cost = cost.detach()
    return cost < kappa, cost > kappa


def _predict_cost(cost_fn: CostFn, states: LatentState) -> torch.Tensor:
    lead = states.stoch.shape[:-1]
    with torch.no_grad():
        c = cost_fn(states.features.flatten(0, -2))
    if c.dim() == 2 and c.shape[-1] == 1:
        c = c.squeeze(-1)
    if c.numel() != lead.numel():
        raise ValueError(f"cost_fn: expected {lead.numel()} costs, actual shape {tuple(c.shape)}")
    return c.reshape(lead)


def compute_barrier_loss(
    barrier: BarrierNet,
    config: BarrierConfig,
    posts: LatentState,
    cost: torch.Tensor,
    is_first: torch.Tensor,
    dynamics: LatentDynamics | None = None,
    cost_fn: CostFn | None = None,
    policy: Policy | None = None,
    generator: torch.Generator | None = None,
    detach_states: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Barrier loss of a world-model batch: real data plus imagined rollouts.

    Parts (each switched by ``config``): (a) ``use_real_labels``: posterior states labelled by
    the observed ``cost``; (b) ``real_decrease``: pairs ``posts[:, t] -> posts[:, t + 1]``
    where ``not is_first[:, t + 1]``; (c) ``imagined_*``: ``config.imagine_starts`` posterior
    states drawn at random (with ``generator``) are rolled ``config.imagine_horizon`` steps
    through ``dynamics.img_step`` (sampled prior), with actions ``policy(state)`` or uniform in
    [-1, 1]; the imagined states are labelled by ``cost_fn(features)`` and consecutive imagined
    states form the imagined transitions. The loss is the sum of both groups' losses plus the
    gradient penalty.

    Args:
        barrier: the network B.
        config: :class:`BarrierConfig`.
        posts: posterior states, shape (B, T, ...).
        cost: observed costs (B, T); cost[t] labels posts[:, t].
        is_first: (B, T) bool; True where an episode starts.
        dynamics: needed when imagination is enabled.
        cost_fn: predicted cost of features, needed when ``use_imagined_labels``.
        policy: actor for the imagined rollouts (default: uniform random actions).
        generator: randomness for the start states and random actions.
        detach_states: see the module docstring ("Gradients").

    Returns:
        ``(loss, metrics)``: ``loss`` plus the per-group metrics of :func:`barrier_loss`
        suffixed ``_real`` / ``_imagined`` (e.g. ``balanced_accuracy_real``,
        ``decrease_satisfied_imagined``, ``n_safe_real``) and ``grad_penalty`` if enabled.
    """
    _check_batch(posts, cost, is_first)
    if detach_states:
        posts = posts.detach()
    stats: dict[str, torch.Tensor] = {}
    loss = torch.zeros((), device=posts.stoch.device)
    inputs: list[torch.Tensor] = []

    if config.use_real_labels or config.real_decrease:
        b_real = barrier.value(posts)
        inputs.append(barrier.barrier_input(posts, barrier.input_kind).flatten(0, 1))
        kwargs: dict[str, torch.Tensor] = {}
        if config.use_real_labels:
            safe, unsafe = _labels(cost, config.kappa)
            kwargs.update(b=b_real, safe_mask=safe, unsafe_mask=unsafe)
        if config.real_decrease and b_real.shape[1] > 1:
            kwargs.update(
                b_t=b_real[:, :-1], b_next=b_real[:, 1:], valid=~is_first[:, 1:].bool()
            )
        if kwargs:
            part, part_stats = group_loss(config, **kwargs)
            loss = loss + part
            stats.update({f"{k}_real": v for k, v in part_stats.items()})

    if config.uses_imagination:
        if dynamics is None:
            raise ValueError(
                "imagined labels/transitions are enabled but dynamics is None: pass a "
                "LatentDynamics or set use_imagined_labels=imagined_decrease=False"
            )
        if config.use_imagined_labels and cost_fn is None:
            raise ValueError("use_imagined_labels=True needs cost_fn (features -> cost)")
        traj = _imagine_from(dynamics, posts, config, policy, generator, detach_states)
        b_img = barrier.value(traj)
        inputs.append(barrier.barrier_input(traj, barrier.input_kind).flatten(0, 1))
        kwargs = {}
        if config.use_imagined_labels:
            assert cost_fn is not None
            safe, unsafe = _labels(_predict_cost(cost_fn, traj[:, 1:]), config.kappa)
            kwargs.update(b=b_img[:, 1:], safe_mask=safe, unsafe_mask=unsafe)
        if config.imagined_decrease:
            kwargs.update(b_t=b_img[:, :-1], b_next=b_img[:, 1:])
        part, part_stats = group_loss(config, **kwargs)
        loss = loss + part
        stats.update({f"{k}_imagined": v for k, v in part_stats.items()})

    loss = _add_grad_penalty(barrier, config, loss, stats, inputs)
    stats["loss"] = loss.detach()
    return loss, _to_floats(stats)


def _imagine_from(
    dynamics: LatentDynamics,
    posts: LatentState,
    config: BarrierConfig,
    policy: Policy | None,
    generator: torch.Generator | None,
    detach_states: bool,
) -> LatentState:
    flat = posts.flatten(1)
    idx = _random.randint(
        flat.stoch.shape[0], config.imagine_starts, device=flat.stoch.device, generator=generator
    )
    start = flat[idx]
    if detach_states:
        with torch.no_grad():
            return imagine(dynamics, start, config.imagine_horizon, policy, generator)
    return imagine(dynamics, start, config.imagine_horizon, policy, generator)
