"""The action-conditioned barrier: network, training pairs, loss, its use in the filter, and its
place in LatentSafetyModel (training, readiness, checkpoints, trackers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_safety_model import fill, hazard

import lbwrap
from lbwrap.barrier import BarrierNet, FilterConfig, SafeActionFilter
from lbwrap.barrier.action_barrier import (
    ActionBarrierConfig,
    ActionBarrierNet,
    action_barrier_loss,
    transitions,
    unsafe_targets,
)
from lbwrap.experimental import FilterExperimental
from lbwrap.latent_state import LatentState
from lbwrap.latent_tracker import LatentTracker
from lbwrap.safety_model import IncompatibleCheckpointError, LatentSafetyModel, shield_decision


class NoDynamics:
    """The action-barrier predictor must never roll the prior."""

    action_dim = 2

    def img_step(self, state, action, sample=True):
        raise AssertionError("img_step called with predictor='action_barrier'")


def right_is_unsafe() -> ActionBarrierNet:
    """``B_next(e, a) = -a[0]`` exactly: moving right (a[0] > 0) is predicted unsafe."""
    net = ActionBarrierNet(embed_dim=3, action_dim=2, hidden_dim=4, num_layers=1)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        lin1, lin2 = net.net[0], net.net[2]
        lin1.weight[0, 3] = 1.0  # h0 = a0
        lin1.bias[1] = 10.0  # h1 = 10 (ELU identity on positives)
        lin2.weight[0, 0] = -1.0
        lin2.weight[0, 1] = 0.0
        # ELU(a0) = a0 for a0 > 0 and > -1 otherwise: sign(B_next) = -sign(a0) either way
    return net


def states(n: int) -> LatentState:
    z = torch.zeros(n, 2)
    return LatentState(torch.zeros(n, 1), z, z.clone(), torch.ones_like(z))


def make_filter(**kw) -> SafeActionFilter:
    cfg = FilterConfig(condition="barrier", eps=0.0, predictor="action_barrier", seed=0, **kw)
    return SafeActionFilter(NoDynamics(), BarrierNet(2, num_layers=0), cfg, (-1, -1), (1, 1),
                            action_barrier=right_is_unsafe())


# ----------------------------------------------------------------------------- the network


def test_network_shapes_and_errors():
    net = ActionBarrierNet(8, 2, hidden_dim=16, num_layers=2)
    assert net(torch.zeros(5, 7, 8), torch.zeros(5, 7, 2)).shape == (5, 7)
    with pytest.raises(ValueError, match="embed"):
        net(torch.zeros(5, 9), torch.zeros(5, 2))
    with pytest.raises(ValueError, match=">= 1"):
        ActionBarrierNet(0, 2)
    with pytest.raises(ValueError, match="hidden_dim"):
        ActionBarrierConfig(hidden_dim=0)
    with pytest.raises(ValueError, match="lr"):
        ActionBarrierConfig(lr=-1.0)
    with pytest.raises(ValueError, match="steps_per_batch"):
        ActionBarrierConfig(steps_per_batch=0)


def test_transitions_pair_frame_t_with_the_action_taken_there():
    b, t = 2, 4
    embed = torch.arange(b * t, dtype=torch.float32).reshape(b, t, 1)
    action = 100 + torch.arange(b * t, dtype=torch.float32).reshape(b, t, 1)
    cost = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    is_first = torch.tensor([[True, False, True, False], [False, False, False, False]])
    e, a, c, valid = transitions(embed, action, cost, is_first)
    # frame t is followed by action[t + 1] (which led into frame t + 1) and its cost
    assert e[0, :, 0].tolist() == [0, 1, 2] and a[0, :, 0].tolist() == [101, 102, 103]
    assert c[0].tolist() == [1.0, 0.0, 0.0]
    assert valid[0].tolist() == [True, False, True]  # frame 1 -> 2 crosses an episode start
    assert valid[1].all()
    with pytest.raises(ValueError, match="cost"):
        transitions(embed, action, cost[:, :3], is_first)


def test_loss_is_class_balanced_and_leaves_the_embedding_alone():
    net = ActionBarrierNet(3, 2, hidden_dim=8, num_layers=1)
    embed = torch.randn(1, 101, 3, requires_grad=True)
    action = torch.randn(1, 101, 2)
    cost = torch.zeros(1, 101)
    cost[0, 0] = 1.0  # 1 unsafe, 100 safe
    valid = torch.ones(1, 101, dtype=torch.bool)
    with torch.no_grad():
        net.net[-1].weight.zero_()
        net.net[-1].bias.fill_(2.0)  # everything predicted safe
    loss, metrics = action_barrier_loss(net, embed, action, cost, valid, kappa=0.01)
    # mean softplus(2) over the unsafe class + mean softplus(-2) over the safe one
    expected = torch.nn.functional.softplus(torch.tensor(2.0)) + torch.nn.functional.softplus(
        torch.tensor(-2.0))
    torch.testing.assert_close(loss, expected)
    assert metrics["balanced_accuracy"] == pytest.approx(0.5)
    assert metrics["n_unsafe"] == 1 and metrics["n_safe"] == 100
    loss.backward()
    assert embed.grad is None  # detached: this head never trains the encoder
    _, one_class = action_barrier_loss(net, embed, action, torch.zeros(1, 101), valid, 0.01)
    assert np.isnan(one_class["balanced_accuracy"])


def test_unsafe_targets_discount_the_next_steps_within_chunk_and_episode():
    cost = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    valid = torch.tensor([[True, True, True, True], [True, True, False, True]])
    hard, labelled = unsafe_targets(cost, valid, kappa=0.5)  # horizon 1: the 0/1 label
    assert hard.tolist() == [[0, 0, 1, 0], [0, 1, 0, 1]]
    assert labelled.tolist() == valid.tolist()
    soft, labelled = unsafe_targets(cost, valid, kappa=0.5, horizon=3, discount=0.5)
    expected_row0 = [0.25 / 1.75, 0.5 / 1.75, 1.0 / 1.5, 0.0]  # the chunk ends after t = 3
    # row 1: pair 2 crosses an episode start, so pairs 0 and 1 stop looking ahead there
    expected_row1 = [0.5 / 1.5, 1.0, 0.0, 1.0]
    torch.testing.assert_close(soft, torch.tensor([expected_row0, expected_row1]))
    assert labelled.tolist() == valid.tolist()
    # a cost equal to kappa leaves the pair unlabelled
    _, labelled = unsafe_targets(torch.full((1, 2), 0.5), torch.ones(1, 2, dtype=torch.bool), 0.5)
    assert not labelled.any()
    with pytest.raises(ValueError, match="horizon"):
        unsafe_targets(cost, valid, 0.5, horizon=0)
    with pytest.raises(ValueError, match="shape"):
        unsafe_targets(cost, valid[:, :3], 0.5)


def test_soft_target_loss_ranks_the_faster_exit_higher():
    """Inside a hazard both actions keep the next state unsafe; only a horizon > 1 separates the
    action after which the robot is out from the one after which it stays in."""
    chunks = 100  # episodes of 4 pairs; frame 0 is inside the hazard
    out_costs, in_costs = [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]
    embed, action, cost = [], [], []
    for k in range(2 * chunks):
        leaves = k % 2 == 0
        for t in range(4):
            e = torch.zeros(7)
            e[0 if t == 0 else (t if leaves else 3 + t)] = 1.0  # frame 0 looks the same in both
            embed.append(e)
            # only the action taken inside differs; the later ones are the same in both
            action.append(torch.full((2,), (1.0 if leaves else -1.0) if t == 0 else 0.0))
            cost.append((out_costs if leaves else in_costs)[t])
    embed, action = torch.stack(embed)[None], torch.stack(action)[None]
    cost = torch.tensor(cost)[None]
    valid = torch.ones_like(cost, dtype=torch.bool)
    valid[0, 3::4] = False  # the pair after each chunk's last one starts a new episode
    gap = {}
    for horizon in (1, 4):
        torch.manual_seed(0)
        net = ActionBarrierNet(7, 2, hidden_dim=16, num_layers=1)
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        for _ in range(300):
            loss, _ = action_barrier_loss(net, embed, action, cost, valid, 0.5, horizon=horizon,
                                          discount=0.5)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            inside = embed[0, :1]
            gap[horizon] = float(net(inside, torch.ones(1, 2)) - net(inside, -torch.ones(1, 2)))
    assert gap[4] > 1.0  # the exiting action is ranked clearly safer
    assert abs(gap[1]) < 0.5 * gap[4]  # the one-step label cannot tell them apart


def test_loss_learns_an_action_dependent_rule():
    """Unsafe iff the action points towards a direction encoded in the embedding."""
    gen = torch.Generator().manual_seed(0)
    embed = torch.randn(1, 2000, 4, generator=gen)
    action = torch.rand(1, 2000, 2, generator=gen) * 2 - 1
    towards = (embed[..., :2] * action).sum(-1) > 0.5  # rare-ish and action dependent
    cost = towards.float()
    valid = torch.ones_like(cost, dtype=torch.bool)
    net = ActionBarrierNet(4, 2, hidden_dim=64, num_layers=2)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    first, _ = action_barrier_loss(net, embed, action, cost, valid, 0.01)
    for _ in range(600):
        loss, metrics = action_barrier_loss(net, embed, action, cost, valid, 0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * float(first.detach())
    assert metrics["balanced_accuracy"] > 0.9
    # the same frame with the opposite action flips the prediction where it matters
    with torch.no_grad():
        flagged = net(embed[towards], action[towards]) < 0
        opposite = net(embed[towards], -action[towards]) < 0
    assert flagged.float().mean() > 0.85 and opposite.float().mean() < 0.15


# ----------------------------------------------------------------------------- the filter


def test_filter_keeps_safe_and_replaces_unsafe_proposals():
    filt = make_filter()
    proposals = torch.tensor([[-0.5, 0.3], [0.8, 0.2]])
    result = filt(states(2), proposals, embed=torch.zeros(2, 3))
    torch.testing.assert_close(result.actions[0], proposals[0])  # safe: untouched
    assert result.intervened.tolist() == [False, True]
    assert result.actions[1, 0] <= 0.0 and bool(result.feasible[1])
    assert result.b_next_executed[1] >= 0 and result.b_next_proposed[1] < 0
    # closest safe candidate: a[0] barely <= 0, a[1] near the proposal's
    assert float((result.actions[1] - proposals[1]).norm()) < 0.95
    assert (result.actions.abs() <= 1).all()


def test_filter_needs_embeddings_and_a_network():
    filt = make_filter()
    with pytest.raises(ValueError, match="embed="):
        filt(states(1), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="embed: expected shape"):
        filt(states(1), torch.zeros(1, 2), embed=torch.zeros(1, 5))
    cfg = FilterConfig(condition="barrier", predictor="action_barrier")
    with pytest.raises(ValueError, match="action_barrier network"):
        SafeActionFilter(NoDynamics(), BarrierNet(2, num_layers=0), cfg, (-1, -1), (1, 1))
    with pytest.raises(ValueError, match="condition='barrier' and lookahead=1"):
        FilterConfig(predictor="action_barrier")  # default condition is cbf
    with pytest.raises(ValueError, match="condition='barrier' and lookahead=1"):
        FilterConfig(condition="barrier", predictor="action_barrier", lookahead=2)
    with pytest.raises(ValueError, match="predictor"):
        FilterConfig(predictor="oracle")  # type: ignore[arg-type]


def test_filter_fallback_when_every_action_is_unsafe():
    net = right_is_unsafe()
    with torch.no_grad():
        net.net[2].bias.fill_(-5.0)  # B_next = -a0 - 5 < 0 for every action in the box
    cfg = FilterConfig(condition="barrier", eps=0.0, predictor="action_barrier", seed=0)
    filt = SafeActionFilter(NoDynamics(), BarrierNet(2, num_layers=0), cfg, (-1, -1), (1, 1),
                            action_barrier=net)
    result = filt(states(1), torch.tensor([[0.9, 0.0]]), embed=torch.zeros(1, 3))
    assert not bool(result.feasible[0]) and bool(result.intervened[0])
    assert result.actions[0, 0] < -0.5  # the least unsafe candidate: as far left as possible
    keep = FilterConfig(condition="barrier", eps=0.0, predictor="action_barrier", seed=0,
                        experimental=FilterExperimental(proposal_fallback=True))
    filt = SafeActionFilter(NoDynamics(), BarrierNet(2, num_layers=0), keep, (-1, -1), (1, 1),
                            action_barrier=net)
    result = filt(states(1), torch.tensor([[0.9, 0.0]]), embed=torch.zeros(1, 3))
    torch.testing.assert_close(result.actions, torch.tensor([[0.9, 0.0]]))
    assert not bool(result.intervened[0])


# ----------------------------------------------------------------------------- the safety model


def test_safety_model_trains_it_by_default(tiny_safety):
    env = hazard()
    safety = tiny_safety(env)
    assert isinstance(safety.action_barrier, ActionBarrierNet)
    assert safety.action_barrier.embed_dim == safety.world_model.embed_dim
    assert safety.shield_filter.config.predictor == "action_barrier"
    fill(safety, env, steps=60)
    before = [p.detach().clone() for p in safety.action_barrier.parameters()]
    metrics = safety.update(3)
    steps = safety.config.action_barrier.steps_per_batch
    assert safety.action_barrier_trainer.num_updates == 3 * steps
    assert any(not torch.equal(a, b) for a, b in zip(before, safety.action_barrier.parameters()))
    assert {"action_barrier/loss", "action_barrier/balanced_accuracy",
            "action_barrier/accuracy_ema"} <= set(metrics)


def test_checkpoints_keep_the_action_barrier(tmp_path, tiny_safety):
    env = hazard()
    safety = tiny_safety(env)
    fill(safety, env, steps=60)
    safety.update(2)
    path = tmp_path / "safety.pt"
    safety.save(path)
    loaded = LatentSafetyModel.load(path, device="cpu")
    for a, b in zip(safety.action_barrier.state_dict().values(),
                    loaded.action_barrier.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.action_barrier_trainer.num_updates == 2 * safety.config.action_barrier.steps_per_batch
    other = tiny_safety(env, action_barrier=ActionBarrierConfig(hidden_dim=8))
    with pytest.raises(IncompatibleCheckpointError, match="action-barrier hidden_dim"):
        other.load_checkpoint(path)


def test_checkpoints_from_before_the_action_barrier_still_load(tmp_path, tiny_safety):
    env = hazard()
    safety = tiny_safety(env, action_barrier=None)
    path = tmp_path / "old.pt"
    payload = safety.checkpoint()
    del payload["config"]["action_barrier"]  # what lbwrap wrote before the field existed
    torch.save(payload, path)
    loaded = LatentSafetyModel.load(path, device="cpu")
    assert loaded.action_barrier is None
    assert loaded.shield_filter.config.predictor == "prior"


def test_checkpoints_from_before_the_label_horizon_keep_one_step_labels(tmp_path, tiny_safety):
    env = hazard()
    safety = tiny_safety(env)
    assert safety.config.action_barrier.horizon == 3  # the default
    payload = safety.checkpoint()
    for key in ("horizon", "discount"):  # what lbwrap wrote before the fields existed
        del payload["config"]["action_barrier"][key]
    path = tmp_path / "old.pt"
    torch.save(payload, path)
    loaded = LatentSafetyModel.load(path, device="cpu")
    assert loaded.config.action_barrier.horizon == 1  # what its network was trained on
    with pytest.raises(IncompatibleCheckpointError, match="action-barrier horizon: checkpoint 1"):
        safety.load_checkpoint(path)


def test_config_refuses_an_action_filter_without_the_network(tiny_safety):
    cfg = FilterConfig(condition="barrier", predictor="action_barrier")
    with pytest.raises(ValueError, match="action_barrier is None"):
        tiny_safety(hazard(), action_barrier=None, filter=cfg)


def test_tracker_keeps_the_embeddings_of_the_latest_frames(tiny_safety):
    env = hazard()
    safety = tiny_safety(env)
    wm = safety.world_model
    tracker = LatentTracker(wm, 2)
    assert tracker.embed.shape == (2, wm.embed_dim) and not tracker.embed.any()
    frames = np.stack([env.reset(seed=s)[0] for s in (0, 1)])
    tracker.observe(frames, None, np.ones(2, bool))
    with torch.no_grad():
        torch.testing.assert_close(tracker.embed, wm.embed(torch.as_tensor(frames)))
    new = env.reset(seed=5)[0][None]
    tracker.observe(new, None, np.ones(1, bool), rows=np.array([1]))
    with torch.no_grad():
        torch.testing.assert_close(tracker.embed[1:], wm.embed(torch.as_tensor(new)))
        torch.testing.assert_close(tracker.embed[:1], wm.embed(torch.as_tensor(frames[:1])))
    decision = shield_decision(safety, tracker.state, np.zeros((2, 2), np.float32))
    assert not decision.active  # not ready: passes through without needing embeddings
    safety.force_ready = True
    with pytest.raises(ValueError, match="embed="):
        shield_decision(safety, tracker.state, np.zeros((2, 2), np.float32))
    decision = shield_decision(safety, tracker.state, np.zeros((2, 2), np.float32),
                               embed=tracker.embed)
    assert decision.active and decision.executed.shape == (2, 2)
    tracker.reset_all()
    assert not tracker.embed.any()


# ----------------------------------------------------------------------------- the real thing


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_action_barrier_learns_which_action_enters_a_hazard():
    """PixelHazard level 1, 64x64, CPU preset, 30k random-policy agent steps, 600 updates.

    On held-out layouts, at each hazard entry, B_next must be lower for the action that was taken
    (and entered) than for the opposite action. Measured 2026-11-26 (seed 0, one thread, ~5 min):
    0.97 of 58 entries; the same with 1 instead of 4 steps per batch: 0.57, and the prior-based
    predictor cannot rank them at all (benchmarks/shield_diagnostics.py).
    """
    from lbwrap.eval.barrier_accuracy import add_episodes, random_episodes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        env = lbwrap.make_pixel_env(lbwrap.PIXEL_HAZARD_ID, size=64, action_repeat=2, level=1)
        safety = LatentSafetyModel.for_env(env, seed=0, device="cpu")
        add_episodes(safety, random_episodes(env, 30_000, 0))
        safety.update(600)
        heldout = random_episodes(env, 3000, 20_000)
        lower = []
        with torch.no_grad():
            for ep in heldout:
                embed = safety.world_model.embed(torch.as_tensor(ep["obs"][:-1]))
                action = torch.as_tensor(ep["action"][1:])
                unsafe = torch.as_tensor(ep["cost"] > safety.config.barrier.kappa)
                entry = ~unsafe[:-1] & unsafe[1:]
                b_taken = safety.action_barrier(embed, action)[entry]
                b_opposite = safety.action_barrier(embed, -action)[entry]
                lower.append(b_taken < b_opposite)
    finally:
        torch.set_num_threads(threads)
    ranked = torch.cat(lower).float()
    assert ranked.numel() > 30
    assert float(ranked.mean()) > 0.8, f"entering action ranked lower at {float(ranked.mean()):.2f}"
