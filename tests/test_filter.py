"""Known-answer tests of the safe-action filter with fake linear dynamics and a linear barrier.

Dynamics: ``z' = z + 0.1 * a`` in ``stoch`` (2-D), ``deter`` unused. Barrier: ``B(z) = 1 - z[0]``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lbwrap.barrier import BarrierConfig, BarrierNet, FilterConfig, SafeActionFilter
from lbwrap.experimental import FilterExperimental
from lbwrap.latent_state import LatentDynamics, LatentState

EPS, DT, ALPHA = 0.01, 0.02, 1.0


class LinearDynamics:
    """``stoch' = stoch + 0.1 * action``; records every ``img_step`` call's batch size."""

    action_dim = 2

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.samples: list[bool] = []

    def img_step(
        self, state: LatentState, action: torch.Tensor, sample: bool = True
    ) -> LatentState:
        self.calls.append(action.shape[0])
        self.samples.append(sample)
        stoch = state.stoch + 0.1 * action
        return LatentState(state.deter, stoch, stoch, torch.ones_like(stoch))



def barrier() -> BarrierNet:
    net = BarrierNet(2, num_layers=0)
    with torch.no_grad():
        net.net[0].weight.copy_(torch.tensor([[-1.0, 0.0]]))
        net.net[0].bias.fill_(1.0)
    return net


def states(*z0: float) -> LatentState:
    stoch = torch.tensor([[v, 0.0] for v in z0])
    return LatentState(torch.zeros(len(z0), 1), stoch, stoch.clone(), torch.ones_like(stoch))


def make(
    condition: str = "barrier",
    low: tuple[float, float] = (-1.0, -1.0),
    high: tuple[float, float] = (1.0, 1.0),
    dynamics: LinearDynamics | None = None,
    **kw: object,
) -> SafeActionFilter:
    kw.setdefault("dt", 0.02)  # the known-answer cases below are worked out for dt = 0.02
    cfg = FilterConfig(condition=condition, seed=kw.pop("seed", 0), **kw)  # type: ignore[arg-type]
    return SafeActionFilter(dynamics or LinearDynamics(), barrier(), cfg, low, high)


def b_after(z0: float, a0: float, steps: int = 1) -> float:
    return 1.0 - (z0 + 0.1 * steps * a0)


def holds(condition: str, b: float, b_next: float) -> bool:
    if condition == "barrier":
        return b_next >= EPS - 1e-6
    return (b_next - b) / DT + ALPHA * b_next >= EPS - 1e-6


def test_protocol() -> None:
    assert isinstance(LinearDynamics(), LatentDynamics)


@pytest.mark.parametrize(
    "condition,z0,action", [("barrier", 0.0, (1.0, 0.3)), ("cbf", 0.5, (-1.0, 0.2))]
)
def test_safe_proposal_untouched(condition: str, z0: float, action: tuple[float, float]) -> None:
    dyn = LinearDynamics()
    out = make(condition, dynamics=dyn)(states(z0), torch.tensor([action]))
    torch.testing.assert_close(out.actions, torch.tensor([action]))
    assert not out.intervened.item() and out.feasible.item()
    assert out.b_next_executed.item() == pytest.approx(b_after(z0, action[0]))
    assert out.b_now.item() == pytest.approx(1.0 - z0)
    assert dyn.calls == [1] and dyn.samples == [False]  # proposal only, prior mean


@pytest.mark.parametrize("condition,z0", [("barrier", 0.95), ("cbf", 0.5)])
def test_unsafe_proposal_replaced_by_closest_satisfying(condition: str, z0: float) -> None:
    proposal = torch.tensor([[1.0, 0.5]])
    out = make(condition, seed=3)(states(z0), proposal)
    assert out.intervened.item() and out.feasible.item()
    assert not holds(condition, 1 - z0, out.b_next_proposed.item())
    a = out.actions[0]
    assert holds(condition, 1 - z0, b_after(z0, a[0].item()))
    assert out.b_next_executed.item() == pytest.approx(b_after(z0, a[0].item()))
    # the same seed reproduces the candidate set: the answer is the closest satisfying one
    cand = make(condition, seed=3).sample_candidates(proposal)[0]
    ok = torch.tensor([holds(condition, 1 - z0, b_after(z0, c[0].item())) for c in cand])
    dist = (cand - proposal).norm(dim=-1)
    best = cand[ok][dist[ok].argmin()]
    torch.testing.assert_close(a, best)


def test_infeasible_returns_max_b_candidate() -> None:
    proposal = torch.tensor([[0.5, 0.0]])
    out = make("barrier", seed=5)(states(2.0), proposal)  # B = -1: no action reaches B >= eps
    assert out.intervened.item() and not out.feasible.item()
    cand = make("barrier", seed=5).sample_candidates(proposal)[0]
    best = cand[cand[:, 0].argmin()]  # B' = 1 - (2 + 0.1 a0) is largest for the smallest a0
    torch.testing.assert_close(out.actions[0], best)
    assert out.b_next_executed.item() == pytest.approx(b_after(2.0, best[0].item()))


def test_proposal_fallback_keeps_infeasible_proposal_but_still_replaces_fixable_ones() -> None:
    proposals = torch.tensor([[0.5, 0.0], [1.0, 0.5]])
    keep = FilterExperimental(proposal_fallback=True)
    out = make("barrier", seed=5, experimental=keep)(states(2.0, 0.95), proposals)
    # row 0: B = -1, nothing reaches B >= eps -> the proposal is executed, not counted as replaced
    torch.testing.assert_close(out.actions[0], proposals[0])
    assert not out.intervened[0].item() and not out.feasible[0].item()
    assert out.b_next_executed[0].item() == pytest.approx(b_after(2.0, 0.5))
    # row 1: fixable -> replaced by a satisfying action exactly as with the default fallback
    default = make("barrier", seed=5)(states(2.0, 0.95), proposals)
    assert out.intervened[1].item() and out.feasible[1].item()
    torch.testing.assert_close(out.actions[1], default.actions[1])
    with pytest.raises(ValueError, match="fallback"):
        FilterConfig(fallback="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="proposal_fallback must be a bool"):
        FilterExperimental(proposal_fallback="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("condition", ["barrier", "cbf"])
def test_actions_in_bounds_with_asymmetric_box(condition: str) -> None:
    low, high = (-0.2, -1.0), (1.0, 0.5)
    proposals = torch.tensor([[5.0, -5.0], [-5.0, 5.0], [0.3, 0.1], [1e6, -1e6], [0.0, 0.0]])
    z = states(0.0, 0.95, 0.5, 2.0, 0.99)
    out = make(condition, low=low, high=high, local_std=2.0)(z, proposals)
    lo, hi = torch.tensor(low), torch.tensor(high)
    assert ((out.actions >= lo) & (out.actions <= hi)).all()
    # row 0 is safe once clipped: the clipped proposal is kept, not flagged
    if condition == "barrier":
        torch.testing.assert_close(out.actions[0], torch.tensor([1.0, -1.0]))
        assert not out.intervened[0].item()


def test_lookahead_rejects_action_unsafe_later() -> None:
    proposal = torch.tensor([[1.0, 0.0]])  # from z0 = 0.75: B = 0.15, 0.05, -0.05 over 3 steps
    one = make("barrier", lookahead=1)(states(0.75), proposal)
    assert not one.intervened.item()
    three = make("barrier", lookahead=3)(states(0.75), proposal)
    assert three.intervened.item() and three.feasible.item()
    a0 = three.actions[0, 0].item()
    assert all(b_after(0.75, a0, k) >= EPS - 1e-6 for k in (1, 2, 3))


def test_cbf_lookahead_compares_consecutive_steps() -> None:
    out = make("cbf", lookahead=2, seed=1)(states(0.2), torch.tensor([[0.6, 0.0]]))
    a0 = out.actions[0, 0].item()
    b0, b1, b2 = 0.8, b_after(0.2, a0, 1), b_after(0.2, a0, 2)
    assert out.intervened.item() and out.feasible.item()
    assert holds("cbf", b0, b1) and holds("cbf", b1, b2)


def test_rows_independent_and_batched() -> None:
    dyn = LinearDynamics()
    filt = make("barrier", dynamics=dyn, lookahead=2, num_random_candidates=16,
                num_local_candidates=8)
    z0 = [0.0, 0.95, -0.5, 0.9, 0.1, 2.0]
    proposals = torch.tensor([[1.0, 0.0]] * 6)
    out = filt(states(*z0), proposals)
    expected_unsafe = [b_after(z, 1.0, 2) < EPS or b_after(z, 1.0, 1) < EPS for z in z0]
    assert out.intervened.tolist() == expected_unsafe
    for i, z in enumerate(z0):
        if not expected_unsafe[i]:
            torch.testing.assert_close(out.actions[i], proposals[i])
        elif z < 1.0:
            a0 = out.actions[i, 0].item()
            assert out.feasible[i].item() and b_after(z, a0, 2) >= EPS - 1e-6
    assert out.feasible.tolist() == [True] * 5 + [False]
    n_bad = sum(expected_unsafe)
    # one img_step per lookahead step for the proposals, one per step for all N*K candidates
    assert dyn.calls == [6, 6, n_bad * 24, n_bad * 24]
    assert set(dyn.samples) == {False}


def test_reproducible_with_seed_and_accepts_numpy() -> None:
    z = states(0.95, 0.97, 0.5)
    prop = np.array([[1.0, 0.5], [0.2, -0.3], [1.0, 1.0]], dtype=np.float64)
    a = make("barrier", seed=7)(z, prop).actions
    b = make("barrier", seed=7)(z, prop).actions
    torch.testing.assert_close(a, b)
    filt = make("barrier", seed=7)
    first = filt(z, prop).actions
    filt.reset(7)
    torch.testing.assert_close(filt(z, prop).actions, first)


def test_validation() -> None:
    dyn, net = LinearDynamics(), barrier()
    with pytest.raises(ValueError, match="action_dim"):
        SafeActionFilter(dyn, net, FilterConfig(), [-1.0], [1.0])
    with pytest.raises(ValueError, match="low < high"):
        SafeActionFilter(dyn, net, FilterConfig(), [-1.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="proposed"):
        make()(states(0.0), torch.zeros(1, 3))
    for kw in ({"condition": "qp"}, {"dt": 0.0}, {"lookahead": 0},
               {"num_random_candidates": 0, "num_local_candidates": 0}):
        with pytest.raises(ValueError):
            FilterConfig(**kw)  # type: ignore[arg-type]


def test_from_barrier_config() -> None:
    cfg = FilterConfig.from_barrier_config(BarrierConfig(dt=0.1, alpha=2.0, eps=0.05), lookahead=3)
    assert (cfg.dt, cfg.alpha, cfg.eps, cfg.lookahead, cfg.condition) == (0.1, 2.0, 0.05, 3, "cbf")


def test_scorer_picks_the_best_rated_passing_candidate_never_a_failing_one() -> None:
    # At z0 = 0.95 a candidate passes when B(z') = 1 - 0.95 - 0.1 a0 >= eps, i.e. a0 <= 0.4.
    filt = make("barrier")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def prefer_large_a1(rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        seen.append((rows.clone(), cand.clone()))
        return cand[..., 1] + 10.0 * cand[..., 0]  # would love a0 = 1 (which fails)

    state = states(0.0, 0.95)
    res = filt(state, torch.tensor([[0.5, 0.0], [1.0, 0.0]]), scorer=prefer_large_a1)
    assert res.intervened.tolist() == [False, True]
    rows, cand = seen[0]
    assert rows.tolist() == [1]  # only the replaced row is scored
    chosen = res.actions[1]
    assert b_after(0.95, float(chosen[0])) >= EPS - 1e-6  # it passes
    passing = cand[0][1.0 - (0.95 + 0.1 * cand[0][:, 0]) >= EPS]
    best = passing[torch.argmax(passing[:, 1] + 10.0 * passing[:, 0])]
    assert torch.allclose(chosen, best)
    closest = make("barrier")(state, torch.tensor([[0.5, 0.0], [1.0, 0.0]])).actions[1]
    assert not torch.allclose(chosen, closest)  # the default rule chooses differently


def test_scorer_non_finite_scores_rank_last_and_bad_shapes_are_refused() -> None:
    state = states(0.95)
    nan_scores = make("barrier")(state, torch.tensor([[1.0, 0.0]]),
                                 scorer=lambda rows, cand: torch.full(cand.shape[:2], float("nan")))
    assert bool(nan_scores.feasible[0]) and b_after(0.95, float(nan_scores.actions[0, 0])) >= EPS - 1e-6
    with pytest.raises(ValueError, match="scorer: expected scores of shape"):
        make("barrier")(state, torch.tensor([[1.0, 0.0]]), scorer=lambda rows, cand: cand)
