"""Tests of the barrier network, its losses, metrics, gradient routing and trainer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lbwrap.barrier import (
    BarrierConfig,
    BarrierNet,
    BarrierTrainer,
    barrier_loss,
    compute_barrier_loss,
    decrease_lhs,
    group_loss,
)
from lbwrap.barrier.losses import safe_term, unsafe_term
from lbwrap.latent_state import LatentDynamics, LatentState

STOCH, DETER, ACT = 2, 3, 2


class ShiftDynamics(nn.Module):
    """Fake dynamics ``stoch' = stoch + gain * A @ action`` with a learnable ``A``."""

    def __init__(self, gain: float = 0.1) -> None:
        super().__init__()
        self.action_dim = ACT
        self.gain = gain
        self.mix = nn.Parameter(torch.eye(ACT))

    def img_step(
        self, state: LatentState, action: torch.Tensor, sample: bool = True
    ) -> LatentState:
        stoch = state.stoch + self.gain * action @ self.mix.T
        return LatentState(state.deter, stoch, stoch, torch.ones_like(stoch))


class TanhPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(STOCH, ACT)

    def forward(self, state: LatentState) -> torch.Tensor:
        return torch.tanh(self.lin(state.stoch))



def make_state(stoch: torch.Tensor) -> LatentState:
    deter = torch.zeros(*stoch.shape[:-1], DETER)
    return LatentState(deter, stoch, stoch.clone(), torch.ones_like(stoch))


def disk_cost(stoch: torch.Tensor) -> torch.Tensor:
    """Cost 1 inside the disk of radius 0.5 around the origin, else 0."""
    return (stoch.norm(dim=-1) < 0.5).float()


def batch(b: int = 4, t: int = 10, seed: int = 0) -> tuple[LatentState, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(b, 1, STOCH, generator=g) * 3 - 1.5
    steps = 0.1 * torch.randn(b, t, STOCH, generator=g)
    stoch = start + steps.cumsum(1)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[0, 5] = True
    return make_state(stoch), disk_cost(stoch), is_first


def features_cost_fn(features: torch.Tensor) -> torch.Tensor:
    return disk_cost(features[..., DETER:])


def linear_barrier(weight: list[float], bias: float) -> BarrierNet:
    net = BarrierNet(len(weight), num_layers=0)
    with torch.no_grad():
        net.net[0].weight.copy_(torch.tensor([weight]))
        net.net[0].bias.fill_(bias)
    return net


# ----------------------------------------------------------------------------- config / network


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input": "pixels"},
        {"loss_form": "square"},
        {"hidden_dim": 0},
        {"num_layers": -1},
        {"dt": 0.0},
        {"eps": -0.1},
        {"alpha": -1.0},
        {"decrease_weight": -1.0},
        {"imagine_horizon": 0},
        {"imagine_starts": 0},
        {"lr": 0.0},
        {"kappa": math.nan},
        {"grad_clip": 0.0},
        {"use_real_labels": False, "use_imagined_labels": False, "real_decrease": False,
         "imagined_decrease": False},
    ],
)
def test_config_rejects_invalid(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        BarrierConfig(**kwargs)


def test_config_defaults() -> None:
    cfg = BarrierConfig()
    assert (cfg.hidden_dim, cfg.num_layers, cfg.input) == (200, 3, "stoch")
    margins = (cfg.kappa, cfg.eps, cfg.dt, cfg.alpha, cfg.decrease_weight)
    assert margins == (0.01, 0.01, 1.0, 1.0, 1.0)
    assert cfg.loss_form == "hinge"  # chosen by measurement, see lbwrap.barrier.losses
    paper = BarrierConfig.paper()
    assert (paper.loss_form, paper.dt, paper.decrease_weight, paper.lr) == ("paper", 0.02, 100.0, 8e-5)
    assert cfg.to_dict()["imagine_horizon"] == 15


@pytest.mark.parametrize("kind,dim", [("stoch", STOCH), ("features", STOCH + DETER)])
def test_network_shapes_and_checkpoint(kind: str, dim: int) -> None:
    cfg = BarrierConfig(input=kind, hidden_dim=16)
    net = BarrierNet.from_config(cfg, stoch_dim=STOCH, deter_dim=DETER)
    assert net.input_dim == dim and len([m for m in net.net if isinstance(m, nn.Linear)]) == 4
    posts, _, _ = batch()
    assert net.value(posts).shape == (4, 10)
    assert net(torch.zeros(7, dim)).shape == (7,)
    clone = BarrierNet.from_checkpoint(net.checkpoint())
    torch.testing.assert_close(clone.value(posts), net.value(posts))
    with pytest.raises(ValueError):
        net(torch.zeros(7, dim + 1))


# ----------------------------------------------------------------------------- condition terms


def test_decrease_lhs_value() -> None:
    b, b_next = torch.tensor([1.0]), torch.tensor([0.9])
    torch.testing.assert_close(decrease_lhs(b, b_next, dt=0.02, alpha=1.0), torch.tensor([-4.1]))


def test_paper_form_has_no_gradient_inside_margin() -> None:
    eps = 0.01
    b = torch.tensor([-0.5, 0.005, 0.5], requires_grad=True)  # wrong sign, in band, fine
    safe_term(b, "paper", eps).sum().backward()
    assert b.grad.tolist() == [-1.0, 0.0, 0.0]
    b.grad = None
    safe_term(b, "hinge", eps).sum().backward()
    assert b.grad.tolist() == [-1.0, -1.0, 0.0]
    u = torch.tensor([0.5, -0.005, -0.5], requires_grad=True)
    unsafe_term(u, "paper", eps).sum().backward()
    assert u.grad.tolist() == [1.0, 0.0, 0.0]
    u.grad = None
    unsafe_term(u, "hinge", eps).sum().backward()
    assert u.grad.tolist() == [1.0, 1.0, 0.0]


# ----------------------------------------------------------------------------- training behaviour


def separable_set(n: int = 128) -> tuple[LatentState, torch.Tensor, torch.Tensor]:
    """1-D-ish toy: safe where stoch[0] > 0.2, unsafe where stoch[0] < -0.2."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, STOCH, generator=g) * 2 - 1
    x[:, 0] = torch.where(x[:, 0] >= 0, x[:, 0] * 0.8 + 0.2, x[:, 0] * 0.8 - 0.2)
    return make_state(x), x[:, 0] > 0, x[:, 0] < 0


@pytest.mark.parametrize("form", ["hinge", "paper"])
def test_each_form_decreases(form: str) -> None:
    torch.manual_seed(0)
    cfg = BarrierConfig(loss_form=form, hidden_dim=32, num_layers=2)
    net = BarrierNet.from_config(cfg, STOCH, DETER)
    states, safe, unsafe = separable_set()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        loss, metrics = barrier_loss(
            net, cfg, labelled_states=states, safe_mask=safe, unsafe_mask=unsafe
        )
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["loss"] < first or metrics["loss"] == 0.0
    assert metrics["balanced_accuracy"] == 1.0


def test_hinge_reaches_margin_paper_only_the_sign() -> None:
    """Hinge meets both margins; the paper form stops pushing once the sign is right.

    On this data the paper form also ends with zero loss and a perfect sign, but its margin
    terms gave no gradient once B had the right sign, so ``margin_satisfied`` may be < 1
    (thin margins); only the hinge form guarantees ``margin_satisfied == 1``.
    """
    states, safe, unsafe = separable_set()
    results = {}
    for form in ("hinge", "paper"):
        torch.manual_seed(0)
        cfg = BarrierConfig(loss_form=form, hidden_dim=32, num_layers=2)
        net = BarrierNet.from_config(cfg, STOCH, DETER)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(300):
            loss, _ = barrier_loss(
                net, cfg, labelled_states=states, safe_mask=safe, unsafe_mask=unsafe
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        _, results[form] = barrier_loss(
            net, cfg, labelled_states=states, safe_mask=safe, unsafe_mask=unsafe
        )
        b = net.value(states).detach()
        if form == "hinge":
            assert (b[safe] >= cfg.eps).all() and (b[unsafe] <= -cfg.eps).all()
    assert results["hinge"]["margin_satisfied"] == 1.0 and results["hinge"]["loss"] == 0.0
    assert results["paper"]["balanced_accuracy"] == 1.0
    assert results["paper"]["loss"] == 0.0


# ----------------------------------------------------------------------------- metrics


def test_balanced_accuracy_perfect_and_constant() -> None:
    states, safe, unsafe = separable_set()
    cfg = BarrierConfig()
    perfect = linear_barrier([1.0, 0.0], 0.0)  # B = stoch[0]
    _, m = barrier_loss(perfect, cfg, labelled_states=states, safe_mask=safe, unsafe_mask=unsafe)
    assert m["balanced_accuracy"] == 1.0 and m["margin_satisfied"] == 1.0
    assert m["n_safe"] == safe.sum().item() and m["n_unsafe"] == unsafe.sum().item()
    assert m["b_mean_safe"] > 0 > m["b_mean_unsafe"]
    constant = linear_barrier([0.0, 0.0], 1.0)
    _, m = barrier_loss(constant, cfg, labelled_states=states, safe_mask=safe, unsafe_mask=unsafe)
    assert m["balanced_accuracy"] == pytest.approx(0.5)


def test_metrics_with_absent_class_are_nan_and_loss_finite() -> None:
    cfg = BarrierConfig()
    b = torch.tensor([0.5, 0.2, -0.1])
    safe = torch.tensor([True, True, True])
    loss, stats = group_loss(cfg, b=b, safe_mask=safe, unsafe_mask=~safe)
    assert torch.isfinite(loss)
    assert math.isnan(stats["balanced_accuracy"].item()) and stats["n_unsafe"].item() == 0
    assert math.isnan(stats["b_mean_unsafe"].item())


def test_decrease_satisfied_on_hand_made_pairs() -> None:
    cfg = BarrierConfig(dt=0.1, alpha=1.0, eps=0.01)
    b_t = torch.tensor([1.0, 1.0, 0.5, 0.5, -1.0])
    b_next = torch.tensor([1.0, 0.5, 0.6, 0.4, 5.0])
    valid = torch.tensor([True, True, True, True, False])
    # lhs: 1.0 (ok), -4.5 (no), 1.6 (ok), -0.6 (no); the last pair is masked out
    _, stats = group_loss(cfg, b_t=b_t, b_next=b_next, valid=valid)
    assert stats["decrease_satisfied"].item() == pytest.approx(0.5)
    assert stats["n_pairs"].item() == 4
    assert stats["loss_decrease"].item() == pytest.approx((0.0 + 4.51 + 0.0 + 0.61) / 4)


def test_class_balance_weights() -> None:
    b = torch.tensor([-1.0, -1.0, -1.0, 1.0])  # three misclassified safe, one wrong unsafe
    safe = torch.tensor([True, True, True, False])
    for balance, expected in ((True, 1.01 + 1.01), (False, (3 * 1.01 + 1.01) / 4)):
        cfg = BarrierConfig(class_balance=balance)
        loss, _ = group_loss(cfg, b=b, safe_mask=safe, unsafe_mask=~safe)
        assert loss.item() == pytest.approx(expected)


# ----------------------------------------------------------------------------- full batch


def small_config(**kw: object) -> BarrierConfig:
    base = {"hidden_dim": 16, "num_layers": 2, "imagine_starts": 8, "imagine_horizon": 4}
    base.update(kw)
    return BarrierConfig(**base)  # type: ignore[arg-type]


def test_compute_loss_parts_and_is_first() -> None:
    posts, cost, is_first = batch()
    dyn = ShiftDynamics()
    assert isinstance(dyn, LatentDynamics)
    cfg = small_config()
    net = BarrierNet.from_config(cfg, STOCH, DETER)
    g = torch.Generator().manual_seed(0)
    loss, m = compute_barrier_loss(net, cfg, posts, cost, is_first, dyn, features_cost_fn, None, g)
    assert torch.isfinite(loss) and m["loss"] == pytest.approx(loss.item())
    # 4 x 9 candidate pairs minus the one crossing the episode start at is_first[0, 5]
    assert m["n_pairs_real"] == 4 * 9 - 1
    assert m["n_safe_real"] + m["n_unsafe_real"] == 40
    assert m["n_safe_imagined"] + m["n_unsafe_imagined"] == 8 * 4
    assert m["n_pairs_imagined"] == 8 * 4
    for key in ("balanced_accuracy_real", "decrease_satisfied_real", "decrease_satisfied_imagined",
                "b_mean_safe_real", "loss_decrease_imagined"):
        assert key in m


def test_compute_loss_switches_and_errors() -> None:
    posts, cost, is_first = batch()
    net = BarrierNet.from_config(small_config(), STOCH, DETER)
    real_only = small_config(use_imagined_labels=False, imagined_decrease=False)
    _, m = compute_barrier_loss(net, real_only, posts, cost, is_first)
    assert not any(k.endswith("_imagined") for k in m)
    with pytest.raises(ValueError, match="dynamics"):
        compute_barrier_loss(net, small_config(), posts, cost, is_first)
    with pytest.raises(ValueError, match="cost_fn"):
        compute_barrier_loss(net, small_config(), posts, cost, is_first, ShiftDynamics())
    no_labels = small_config(use_imagined_labels=False, imagine_starts=100)  # > B*T: replacement
    _, m = compute_barrier_loss(net, no_labels, posts, cost, is_first, ShiftDynamics())
    assert m["n_pairs_imagined"] == 100 * 4 and "n_safe_imagined" not in m
    with pytest.raises(ValueError, match="expected shape"):
        compute_barrier_loss(net, real_only, posts, cost[:, :-1], is_first)


def test_grad_penalty_metric() -> None:
    posts, cost, is_first = batch()
    cfg = small_config(grad_penalty=0.1, use_imagined_labels=False, imagined_decrease=False)
    net = BarrierNet.from_config(cfg, STOCH, DETER)
    loss, m = compute_barrier_loss(net, cfg, posts, cost, is_first)
    assert m["grad_penalty"] > 0 and math.isfinite(m["grad_penalty"])
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


# ----------------------------------------------------------------------------- gradient routing


def test_detached_states_get_no_gradient() -> None:
    posts, cost, is_first = batch()
    posts = posts.map(lambda t: t.clone().requires_grad_(True))
    dyn, policy = ShiftDynamics(), TanhPolicy()
    cfg = small_config()
    net = BarrierNet.from_config(cfg, STOCH, DETER)
    loss, _ = compute_barrier_loss(net, cfg, posts, cost, is_first, dyn, features_cost_fn, policy)
    loss.backward()
    assert posts.stoch.grad is None and posts.deter.grad is None
    assert policy.lin.weight.grad is None and dyn.mix.grad is None
    assert all(p.grad is not None for p in net.parameters())


def test_undetached_policy_actions_get_gradient() -> None:
    posts, cost, is_first = batch()
    dyn, policy = ShiftDynamics(), TanhPolicy()
    cfg = small_config()
    net = linear_barrier([1.0, 0.0], 0.0)  # B = stoch[0]: many imagined pairs violate term 3
    loss, m = compute_barrier_loss(
        net, cfg, posts, cost, is_first, dyn, features_cost_fn, policy, detach_states=False
    )
    assert m["decrease_satisfied_imagined"] < 1.0
    loss.backward()
    assert policy.lin.weight.grad is not None and policy.lin.weight.grad.abs().sum() > 0
    # world-model parameters receive .grad too: they must simply not be in this optimiser
    assert dyn.mix.grad is not None


# ----------------------------------------------------------------------------- trainer


def test_trainer_learns_and_skips_nonfinite() -> None:
    torch.manual_seed(0)
    posts, cost, is_first = batch(b=8, t=20)
    cfg = small_config(lr=3e-3, hidden_dim=32)
    net = BarrierNet.from_config(cfg, STOCH, DETER)
    trainer = BarrierTrainer(net, cfg)
    dyn, g = ShiftDynamics(), torch.Generator().manual_seed(0)
    first = trainer.update(posts, cost, is_first, dyn, features_cost_fn, generator=g)
    for _ in range(60):
        last = trainer.update(posts, cost, is_first, dyn, features_cost_fn, generator=g)
    assert last["loss"] < first["loss"] and last["step_skipped"] == 0.0
    assert last["num_updates"] == 61 and math.isfinite(last["grad_norm"])

    before = [p.detach().clone() for p in net.parameters()]
    out = trainer.step(net(torch.zeros(1, STOCH)).sum() * math.nan)
    assert out["step_skipped"] == 1.0 and trainer.num_skipped == 1
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
    state = trainer.state_dict()
    other = BarrierTrainer(BarrierNet.from_config(cfg, STOCH, DETER), cfg, lr=1e-3)
    other.load_state_dict(state)
    assert other.num_skipped == trainer.num_skipped
    assert other.num_updates == trainer.num_updates


def test_trainer_skips_nonfinite_gradients() -> None:
    cfg = small_config()
    net = BarrierNet.from_config(cfg, STOCH, DETER)
    trainer = BarrierTrainer(net, cfg)
    loss = net(torch.zeros(1, STOCH)).sum()
    loss.register_hook(lambda g: g * math.inf)
    out = trainer.step(loss)
    assert out["step_skipped"] == 1.0 and out["nonfinite_skipped"] == 1.0


def test_one_guarded_step_and_one_counter_name_for_every_trainer():
    """World model, barrier and action barrier share GuardedAdam: the same counter name, and
    barrier optimiser states saved under the older name still load."""
    import torch

    from lbwrap._optim import GuardedAdam

    net = torch.nn.Linear(3, 1)
    guard = GuardedAdam(net.parameters(), lr=1e-2, grad_clip=1.0)
    ok = guard.step(net(torch.ones(2, 3)).sum())
    bad = guard.step(net(torch.ones(2, 3)).sum() * float("nan"))
    assert (ok["step_skipped"], bad["step_skipped"]) == (0.0, 1.0)
    assert (guard.num_updates, guard.num_skipped) == (1, 1)
    state = guard.state_dict()
    old = {"optimizer": state["optimizer"], "num_updates": 1, "nonfinite_skipped": 4}
    other = GuardedAdam(net.parameters(), lr=1e-2)
    other.load_state_dict(old)
    assert other.num_skipped == 4
    with pytest.raises(ValueError, match="grad_clip must be > 0"):
        GuardedAdam(net.parameters(), lr=1e-2, grad_clip=0.0)
