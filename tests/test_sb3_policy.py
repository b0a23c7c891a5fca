"""BarrierSAC: barrier term in the actor loss, the policy owning the safety model, save/load."""

from __future__ import annotations

import copy
import json
import math
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import Recorder
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.torch_layers import FlattenExtractor

import lbwrap
from lbwrap.barrier import BarrierConfig
from lbwrap.barrier.losses import decrease_lhs
from lbwrap.latent_state import LatentState
from lbwrap.sb3.callback import CoTrainCallback
from lbwrap.sb3.policy import (
    BarrierSAC,
    BarrierSACPolicy,
    barrier_actor_loss,
    scale_actions,
    split_features,
)
from lbwrap.wrappers import BarrierShield, LatentObservation

TINY_WM = {"cnn_depth": 4, "deter_dim": 16, "stoch_dim": 4, "hidden_dim": 16,
           "head_hidden_dim": 16}
FEAT = TINY_WM["deter_dim"] + TINY_WM["stoch_dim"]



def pixel_env(**kwargs) -> gym.Env:
    return lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=32, max_episode_steps=40, **kwargs)


def tiny_safety(env: gym.Env, seed: int = 0) -> lbwrap.LatentSafetyModel:
    return lbwrap.LatentSafetyModel.for_env(
        env, seed=seed, device="cpu", batch_size=4, seq_len=8, world_model_overrides=TINY_WM,
        barrier=BarrierConfig(hidden_dim=16, imagine_starts=16, imagine_horizon=3),
    )


def make_stack(shield: bool = True, seed: int = 0):
    pix = pixel_env()
    safety = tiny_safety(pix, seed)
    env = LatentObservation(pix, safety)
    if shield:
        env = BarrierShield(env, safety)
    return env, safety


SAC_KW = {"learning_starts": 40, "batch_size": 16, "policy_kwargs": {"net_arch": [32, 32]},
          "device": "cpu", "seed": 0}


def record_logs(model) -> Recorder:
    rec = Recorder()
    model.set_logger(Logger(folder=None, output_formats=[rec]))
    return rec


def logged(rec: Recorder, model, key: str) -> list[float]:
    values = [r[key] for r in rec.records if key in r]
    if key in model.logger.name_to_value:
        values.append(model.logger.name_to_value[key])
    return values


def active_barrier(safety: lbwrap.LatentSafetyModel) -> None:
    """Shift B below the margin everywhere so every hinge of the term is active."""
    with torch.no_grad():
        safety.barrier.net[-1].bias.fill_(-1.0)


# ----------------------------------------------------------------------------- pure loss


def test_split_and_scale():
    feats = torch.arange(2 * FEAT, dtype=torch.float32).reshape(2, FEAT)
    state = split_features(feats, 16)
    assert torch.equal(state.features, feats)
    assert torch.equal(state.mean, state.stoch) and torch.equal(state.std, torch.ones(2, 4))
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 4.0])
    a = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]], requires_grad=True)
    out = scale_actions(a, low, high)
    assert torch.allclose(out, torch.tensor([[-2.0, 0.0], [2.0, 4.0], [0.0, 2.0]]))
    out.sum().backward()
    assert torch.allclose(a.grad, torch.tensor([[2.0, 2.0]] * 3))


def test_barrier_loss_matches_formula_and_only_the_actor_gets_gradients():
    safety = tiny_safety(pixel_env())
    active_barrier(safety)
    torch.manual_seed(0)
    actor = torch.nn.Sequential(torch.nn.Linear(FEAT, 2), torch.nn.Tanh())
    feats = torch.randn(8, FEAT)
    loss, metrics = barrier_actor_loss(safety, actor, feats, horizon=3)

    # the same quantity, written out, with B's own margin (not the action-barrier shield's 2.0)
    cfg = safety.config.barrier
    assert safety.shield_filter.margin != cfg.eps  # so that the two cannot be confused
    with torch.no_grad():
        state = LatentState(feats[:, :16], feats[:, 16:], feats[:, 16:], torch.ones(8, 4))
        b = safety.barrier.value(state)
        dec, margin = [], []
        for _ in range(3):
            a = actor(state.features)
            state = safety.world_model.img_step(state, a, sample=False)
            b_next = safety.barrier.value(state)
            dec.append(torch.relu(cfg.eps - decrease_lhs(b, b_next, cfg.dt, cfg.alpha)))
            margin.append(torch.relu(cfg.eps - b_next))
            b = b_next
        expected = torch.stack(dec).mean() + torch.stack(margin).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["barrier_actor_loss"] == pytest.approx(loss.item())
    assert loss.item() > 0 and metrics["barrier_unsafe_fraction"] == 1.0

    loss.backward()
    grads = [p.grad for p in actor.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in safety.parameters())
    assert all(p.requires_grad for p in safety.parameters())  # unfrozen again


def test_barrier_loss_uses_the_barrier_margin_not_the_action_barrier_shields():
    # B = 1 everywhere: safe by B's margin (0.01) and never decreasing, so the term is zero. With
    # the action-barrier shield's logit-scale margin (2.0) it would push every step towards B >= 2.
    safety = tiny_safety(pixel_env())
    assert safety.config.filter_config.predictor == "action_barrier"
    assert safety.shield_filter.margin == 2.0 and safety.config.barrier.eps == 0.01
    with torch.no_grad():
        for p in safety.barrier.net[-1].parameters():
            p.zero_()
        safety.barrier.net[-1].bias.fill_(1.0)
    actor = torch.nn.Sequential(torch.nn.Linear(FEAT, 2), torch.nn.Tanh())
    loss, metrics = barrier_actor_loss(safety, actor, torch.randn(8, FEAT), horizon=3)
    assert torch.allclose(safety.barrier.value(split_features(torch.randn(4, FEAT), 16)),
                          torch.ones(4))
    assert loss.item() == 0.0 and metrics["barrier_decrease_violation"] == 0.0


def test_barrier_loss_descends_for_the_actor():
    safety = tiny_safety(pixel_env())
    active_barrier(safety)
    torch.manual_seed(0)
    actor = torch.nn.Sequential(torch.nn.Linear(FEAT, 2), torch.nn.Tanh())
    opt = torch.optim.Adam(actor.parameters(), lr=0.05)
    feats = torch.randn(32, FEAT)
    losses = []
    for _ in range(30):
        loss, _ = barrier_actor_loss(safety, actor, feats, horizon=3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_first_actions_are_used_for_step_one():
    safety = tiny_safety(pixel_env())
    active_barrier(safety)
    feats = torch.randn(4, FEAT)
    first = torch.zeros(4, 2, requires_grad=True)
    calls = []

    def actor(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return torch.zeros(x.shape[0], 2)

    loss, _ = barrier_actor_loss(safety, actor, feats, horizon=2, first_actions=first)
    assert len(calls) == 1  # steps 2..H only
    loss.backward()
    assert first.grad is not None
    with pytest.raises(ValueError, match="horizon"):
        barrier_actor_loss(safety, actor, feats, horizon=0)
    with pytest.raises(ValueError, match="features"):
        barrier_actor_loss(safety, actor, torch.randn(4, FEAT + 1), horizon=1)


# ----------------------------------------------------------------------------- the algorithm


def test_policy_owns_safety_but_no_optimizer_or_extractor_sees_it():
    env, safety = make_stack()
    model = BarrierSAC("MlpPolicy", env, safety=safety, **SAC_KW)
    policy = model.policy
    assert isinstance(policy, BarrierSACPolicy)
    assert policy.safety is safety and model.safety is safety
    keys = policy.state_dict().keys()
    assert any(k.startswith("safety.world_model.") for k in keys)
    assert any(k.startswith("safety.barrier.") for k in keys)
    safety_ids = {id(p) for p in safety.parameters()}
    for opt in (model.actor.optimizer, model.critic.optimizer):
        opt_ids = {id(p) for group in opt.param_groups for p in group["params"]}
        assert opt_ids and not opt_ids & safety_ids
    for net in (model.actor, model.critic, model.critic_target):
        assert not any("safety" in name for name, _ in net.named_parameters())
        assert not {id(p) for p in net.parameters()} & safety_ids
        assert isinstance(net.features_extractor, FlattenExtractor)


def test_learns_with_cotrain_and_shield_barrier_inactive_until_ready():
    env, safety = make_stack()
    model = BarrierSAC("MlpPolicy", env, safety=safety, barrier_horizon=3, **SAC_KW)
    rec = record_logs(model)
    cb = CoTrainCallback(safety, train_every=40, updates_per_train=1, learning_starts=40)
    model.learn(160, callback=cb)
    assert not safety.ready
    assert set(logged(rec, model, "train/barrier_active")) == {0.0}
    assert not logged(rec, model, "train/barrier_actor_loss")
    assert safety.barrier_trainer.num_updates > 0
    assert logged(rec, model, "safety/cumulative_violations")


def test_barrier_term_when_ready_with_active_shield():
    env, safety = make_stack()
    safety.force_ready = True  # the shield filters and the barrier term is on
    model = BarrierSAC("MlpPolicy", env, safety=safety, barrier_horizon=3, **SAC_KW)
    rec = record_logs(model)
    cb = CoTrainCallback(safety, train_every=40, updates_per_train=1, learning_starts=40)
    model.learn(120, callback=cb)
    assert set(logged(rec, model, "train/barrier_active")) == {1.0}
    values = logged(rec, model, "train/barrier_actor_loss")
    assert values and all(math.isfinite(v) for v in values)
    assert cb.shielded_steps > 0


def test_barrier_always_computes_term_and_leaves_safety_grads_alone():
    env, safety = make_stack(shield=False)
    active_barrier(safety)
    model = BarrierSAC("MlpPolicy", env, safety=safety, barrier_always=True, barrier_horizon=2,
                       **SAC_KW)
    rec = record_logs(model)
    model.learn(80)  # no co-training: the safety model is untouched by the agent
    assert not safety.ready
    values = logged(rec, model, "train/barrier_actor_loss")
    assert values and all(math.isfinite(v) and v > 0 for v in values)
    assert all(p.grad is None for p in safety.parameters())


def _one_train_step(model: BarrierSAC, snapshot: dict, weight: float):
    model.policy.load_state_dict(snapshot["policy"])
    model.actor.optimizer.load_state_dict(snapshot["actor_opt"])
    model.critic.optimizer.load_state_dict(snapshot["critic_opt"])
    model.barrier_weight = weight
    torch.manual_seed(123)
    np.random.seed(123)
    model.train(gradient_steps=1, batch_size=16)
    actor_opt = model.actor.optimizer.state_dict()["state"]
    exp_avg = torch.cat([s["exp_avg"].flatten() for s in actor_opt.values()])
    critic = torch.cat([p.detach().flatten() for p in model.critic.parameters()])
    return exp_avg.clone(), critic.clone()


def test_barrier_term_changes_the_actor_gradient_only():
    env, safety = make_stack(shield=False)
    active_barrier(safety)
    model = BarrierSAC("MlpPolicy", env, safety=safety, barrier_always=True, barrier_horizon=3,
                       ent_coef=0.1, **{**SAC_KW, "learning_starts": 1000})
    record_logs(model)
    model.learn(60)  # fills the replay, no training yet
    snapshot = copy.deepcopy({
        "policy": model.policy.state_dict(),
        "actor_opt": model.actor.optimizer.state_dict(),
        "critic_opt": model.critic.optimizer.state_dict(),
    })
    g0, critic0 = _one_train_step(model, snapshot, 0.0)
    g0_again, _ = _one_train_step(model, snapshot, 0.0)
    g1, critic1 = _one_train_step(model, snapshot, 10.0)
    assert torch.equal(g0, g0_again)  # the comparison is deterministic
    assert torch.equal(critic0, critic1)  # the critic step is SAC's, untouched
    assert not torch.allclose(g0, g1)  # the barrier term reaches the actor's gradient


def test_save_load_round_trip(tmp_path):
    env, safety = make_stack()
    model = BarrierSAC("MlpPolicy", env, safety=safety, barrier_horizon=3, **SAC_KW)
    record_logs(model)
    cb = CoTrainCallback(safety, train_every=40, updates_per_train=2, learning_starts=40)
    model.learn(120, callback=cb)
    safety.force_ready = True
    path = tmp_path / "agent.zip"
    model.save(path)

    assert path.stat().st_size < 2_000_000
    with zipfile.ZipFile(path) as zf:
        data = zf.read("data").decode()
        names = zf.namelist()
    saved = json.loads(data)
    assert "safety" not in saved and "replay_buffer" not in saved  # no live objects pickled
    assert set(saved["safety_spec"]) >= {"config", "action_low", "action_high", "seed"}
    assert len(data) < 100_000
    assert "policy.safety.wm_trainer.optimizer.pth" in names

    loaded = BarrierSAC.load(path, device="cpu")
    ls = loaded.safety
    assert isinstance(ls, lbwrap.LatentSafetyModel) and ls is not safety
    assert loaded.policy.safety is ls
    assert ls.config.to_dict() == safety.config.to_dict()
    for mine, theirs in ((safety.world_model, ls.world_model), (safety.barrier, ls.barrier)):
        for (k, v), (k2, v2) in zip(mine.state_dict().items(), theirs.state_dict().items(),
                                    strict=True):
            assert k == k2 and torch.equal(v, v2), k
    assert ls.barrier_trainer.num_updates == safety.barrier_trainer.num_updates > 0
    assert ls.wm_trainer.num_updates == safety.wm_trainer.num_updates
    assert torch.equal(ls.unsafe_seen, safety.unsafe_seen)
    assert ls.ready and len(ls.replay) == 0
    opt_a = safety.wm_trainer.optimizer.state_dict()["state"]
    opt_b = ls.wm_trainer.optimizer.state_dict()["state"]
    assert opt_a.keys() == opt_b.keys() and all(
        torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a
    )
    assert (loaded.barrier_weight, loaded.barrier_horizon) == (1.0, 3)

    obs = np.random.default_rng(0).normal(size=(16, FEAT)).astype(np.float32)
    a1, _ = model.predict(obs, deterministic=True)
    a2, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a1, a2)

    # keep training the loaded agent on an env built around its own safety model
    pix = pixel_env()
    loaded.set_env(BarrierShield(LatentObservation(pix, ls), ls))
    record_logs(loaded)
    loaded.learn(40, callback=CoTrainCallback(ls, train_every=20, updates_per_train=1,
                                              learning_starts=0), reset_num_timesteps=False)
    assert ls.barrier_trainer.num_updates > safety.barrier_trainer.num_updates

    # load into an existing safety model of the same configuration
    other = tiny_safety(pixel_env(), seed=1)
    again = BarrierSAC.load(path, device="cpu", safety=other)
    assert again.safety is other and again.policy.safety is other
    assert torch.equal(other.barrier.net[0].weight, safety.barrier.net[0].weight)
    assert other.ready  # readiness counters and force_ready restored too

    # load with an env: the agent adopts the env's safety model and loads the weights into it
    env2, safety2 = make_stack(seed=2)
    with_env = BarrierSAC.load(path, env=env2, device="cpu")
    assert with_env.safety is safety2
    assert torch.equal(safety2.world_model.gru.weight_hh, safety.world_model.gru.weight_hh)
    a3, _ = with_env.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a1, a3)

    # a safety model of other sizes cannot take the weights
    bigger = lbwrap.LatentSafetyModel.for_env(
        pixel_env(), seed=0, device="cpu", world_model_overrides={**TINY_WM, "hidden_dim": 24},
        barrier=BarrierConfig(hidden_dim=16),
    )
    with pytest.raises(ValueError, match="world_model.hidden_dim: saved 16, given 24"):
        BarrierSAC.load(path, device="cpu", safety=bigger)


# ----------------------------------------------------------------------------- errors


def test_errors_are_clear():
    env, safety = make_stack()
    with pytest.raises(ValueError, match="needs safety=LatentSafetyModel"):
        BarrierSAC("MlpPolicy", env, **SAC_KW)
    with pytest.raises(TypeError, match="LatentSafetyModel"):
        BarrierSAC("MlpPolicy", env, safety=object(), **SAC_KW)
    with pytest.raises(ValueError, match=r"LatentObservation\(env, safety\)"):
        BarrierSAC("MlpPolicy", pixel_env(), safety=safety, **SAC_KW)
    other = lbwrap.LatentSafetyModel.for_env(
        pixel_env(), seed=0, device="cpu", world_model_overrides={**TINY_WM, "stoch_dim": 6},
    )
    with pytest.raises(ValueError, match=f"shape \\({FEAT + 2},\\)"):
        BarrierSAC("MlpPolicy", env, safety=other, **SAC_KW)
    with pytest.raises(ValueError, match="another LatentSafetyModel"):
        BarrierSAC("MlpPolicy", env, safety=tiny_safety(pixel_env()), **SAC_KW)
    model = BarrierSAC("MlpPolicy", env, safety=safety, **SAC_KW)
    with pytest.raises(ValueError, match="another LatentSafetyModel"):
        model.set_env(make_stack()[0])
    assert model.get_env().envs[0].env is env  # the agent's env (in Monitor) is unchanged
    rescaled = gym.wrappers.RescaleAction(env, -2.0, 2.0)
    with pytest.raises(ValueError, match="action space"):
        BarrierSAC("MlpPolicy", rescaled, safety=safety, **SAC_KW)
    with pytest.raises(ValueError, match="barrier_horizon"):
        BarrierSAC("MlpPolicy", env, safety=safety, barrier_horizon=0, **SAC_KW)
    with pytest.raises(ValueError, match="barrier_weight"):
        BarrierSAC("MlpPolicy", env, safety=safety, barrier_weight=-1.0, **SAC_KW)
