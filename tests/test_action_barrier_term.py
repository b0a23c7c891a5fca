"""The action form of BarrierSAC's barrier term and the latent action barrier it reads.

``SafetyModelConfig(latent_action_barrier=True)`` trains ``B_next(z, a)`` on the agent's latent
features; ``BarrierSAC(barrier_term="action")`` adds ``relu(margin - B_next(z, pi(z)))`` to the
actor's loss. Checked here: the term is zero where the shield would pass, its gradient reaches
the actor only, BarrierSAC adds exactly ``barrier_weight`` times it to SAC's actor gradient, the
network trains in ``update`` and survives checkpoints, and every misuse gets a clear error.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TINY_WORLD_MODEL, Recorder, make_tiny_safety
from stable_baselines3 import SAC
from stable_baselines3.common.logger import Logger

import lbwrap
from lbwrap.barrier import ActionBarrierConfig
from lbwrap.safety_model import IncompatibleCheckpointError, LatentSafetyModel, SafetyModelConfig
from lbwrap.sb3.policy import BarrierSAC, action_barrier_actor_loss
from lbwrap.wrappers import LatentObservation

SAC_KW: dict[str, Any] = {"learning_starts": 1000, "batch_size": 16, "device": "cpu", "seed": 0,
                          "policy_kwargs": {"net_arch": [32, 32]}}
BATCH = 16


def pixel_env() -> gym.Env:
    return lbwrap.make_pixel_env("lbwrap/PixelHazardRun-v0", size=32, max_episode_steps=40)


def set_bias(safety: LatentSafetyModel, value: float) -> None:
    """Shift the latent action barrier's output (negative: every action below the margin)."""
    assert safety.latent_action_barrier is not None
    with torch.no_grad():
        last = safety.latent_action_barrier.net[-1]
        last.weight.mul_(0.1)
        last.bias.fill_(value)


def agent_with_replay(**kw: Any) -> BarrierSAC:
    pix = pixel_env()
    safety = make_tiny_safety(pix, latent_action_barrier=True)
    set_bias(safety, -1.0)
    agent = BarrierSAC("MlpPolicy", LatentObservation(pix, safety), safety=safety,
                       barrier_term="action", **kw, **SAC_KW)
    agent.set_logger(Logger(folder=None, output_formats=[Recorder()]))
    agent.learn(60)  # fills the replay; learning_starts keeps it from training
    return agent


def test_term_is_zero_where_the_shield_passes_and_its_gradient_reaches_the_actions_only():
    safety = make_tiny_safety(pixel_env(), latent_action_barrier=True)
    feats = torch.randn(8, safety.config.world_model.feature_dim)
    actions = torch.rand(8, safety.action_dim, requires_grad=True)
    set_bias(safety, 10.0)  # B_next far above the margin 2: the shield would pass every action
    loss, metrics = action_barrier_actor_loss(safety, feats, actions)
    assert float(loss.detach()) == 0.0 and metrics["barrier_below_margin"] == 0.0
    set_bias(safety, -1.0)  # below 0: unsafe, and below the margin
    loss, metrics = action_barrier_actor_loss(safety, feats, actions)
    assert float(loss.detach()) > 2.0 and metrics["barrier_unsafe_fraction"] == 1.0
    loss.backward()
    assert actions.grad is not None and float(actions.grad.abs().sum()) > 0
    assert safety.latent_action_barrier is not None
    assert all(p.grad is None and p.requires_grad
               for p in safety.latent_action_barrier.parameters())  # frozen only during the call


def test_descending_the_term_raises_the_latent_action_barrier_of_the_action():
    safety = make_tiny_safety(pixel_env(), latent_action_barrier=True)
    feats = torch.randn(32, safety.config.world_model.feature_dim)
    raw = torch.zeros(32, safety.action_dim, requires_grad=True)
    optimizer = torch.optim.SGD([raw], lr=0.5)
    first, _ = action_barrier_actor_loss(safety, feats, torch.tanh(raw))
    for _ in range(20):
        optimizer.zero_grad()
        loss, _ = action_barrier_actor_loss(safety, feats, torch.tanh(raw))
        loss.backward()
        optimizer.step()
    last, _ = action_barrier_actor_loss(safety, feats, torch.tanh(raw))
    assert float(first.detach()) > 0 and float(last.detach()) < float(first.detach())


def test_barrier_sac_adds_the_weighted_action_term_to_sacs_actor_gradient():
    weight = 5.0
    agent = agent_with_replay(barrier_weight=weight, barrier_always=True)
    plain = SAC("MlpPolicy", agent.env, **SAC_KW)
    plain.set_logger(Logger(folder=None, output_formats=[Recorder()]))
    plain.policy.load_state_dict({k: v for k, v in agent.policy.state_dict().items()
                                  if not k.startswith("safety.")})
    plain.actor.optimizer.load_state_dict(agent.actor.optimizer.state_dict())
    plain.critic.optimizer.load_state_dict(agent.critic.optimizer.state_dict())
    assert agent.log_ent_coef is not None and plain.log_ent_coef is not None
    with torch.no_grad():
        plain.log_ent_coef.copy_(agent.log_ent_coef)
    plain.replay_buffer = copy.deepcopy(agent.replay_buffer)

    np.random.seed(7)  # the batch and sample SAC.train draws with these seeds
    batch = agent.replay_buffer.sample(BATCH)
    torch.manual_seed(7)
    actions_pi, _ = agent.actor.action_log_prob(batch.observations)
    agent.actor.zero_grad()
    loss, _ = action_barrier_actor_loss(agent.safety, batch.observations, actions_pi)
    loss.backward()
    term = [p.grad.detach().clone() for p in agent.actor.parameters()]
    agent.actor.zero_grad()
    assert sum(float(g.norm()) for g in term) > 1e-3

    def grads_of_one_step(model: SAC) -> list[torch.Tensor]:
        grads: list[torch.Tensor] = []
        handle = model.actor.optimizer.register_step_pre_hook(
            lambda *_: grads.extend(p.grad.detach().clone() for p in model.actor.parameters()))
        try:
            torch.manual_seed(7)
            np.random.seed(7)
            model.train(gradient_steps=1, batch_size=BATCH)
        finally:
            handle.remove()
        return grads

    sac_grads, barrier_grads = grads_of_one_step(plain), grads_of_one_step(agent)
    for g_sac, g_term, g_barrier in zip(sac_grads, term, barrier_grads, strict=True):
        assert torch.allclose(g_barrier, g_sac + weight * g_term, rtol=1e-4, atol=1e-6)
    logged = agent.logger.name_to_value
    assert logged["train/barrier_active"] == 1.0 and logged["train/barrier_below_margin"] == 1.0


def test_latent_action_barrier_trains_in_update_and_round_trips_through_checkpoints(tmp_path):
    from lbwrap.sb3 import CoTrainCallback

    agent = agent_with_replay(barrier_always=True)
    safety = agent.safety
    assert safety is not None and safety.latent_action_barrier is not None
    before = copy.deepcopy(safety.latent_action_barrier.state_dict())
    agent.learn(40, callback=CoTrainCallback(safety, train_every=20, updates_per_train=2,
                                             learning_starts=10, pretrain_updates=0))
    metrics = safety.update(1)
    assert np.isfinite(metrics["latent_action_barrier/loss"])
    after = safety.latent_action_barrier.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert safety.skipped_updates["latent_action_barrier"] == 0

    safety.save(tmp_path / "safety.pt")
    loaded = LatentSafetyModel.load(tmp_path / "safety.pt", device="cpu")
    assert loaded.latent_action_barrier is not None
    for key, value in safety.state_dict().items():
        torch.testing.assert_close(value, loaded.state_dict()[key], rtol=0, atol=0,
                                   equal_nan=True, msg=key)
    without = make_tiny_safety(pixel_env())
    with pytest.raises(IncompatibleCheckpointError, match="latent_action_barrier"):
        without.load_checkpoint(tmp_path / "safety.pt")

    agent.save(tmp_path / "agent.zip")
    again = BarrierSAC.load(tmp_path / "agent.zip", device="cpu")
    assert again.barrier_term == "action" and again.safety is not None
    assert again.safety.latent_action_barrier is not None


def test_off_by_default_and_the_other_weights_do_not_depend_on_it():
    env = pixel_env()
    plain, extra = make_tiny_safety(env), make_tiny_safety(env, latent_action_barrier=True)
    assert plain.latent_action_barrier is None and not SafetyModelConfig().latent_action_barrier
    extra_state = extra.state_dict()
    for key, value in plain.state_dict().items():  # same seed: the same initial weights
        torch.testing.assert_close(value, extra_state[key], rtol=0, atol=0, equal_nan=True,
                                   msg=key)
    assert BarrierSAC("MlpPolicy", LatentObservation(env, plain), safety=plain,
                      **SAC_KW).barrier_term == "imagined"


def test_misuse_gets_clear_errors():
    env = pixel_env()
    plain = make_tiny_safety(env)
    with pytest.raises(ValueError, match="latent_action_barrier=True"):
        BarrierSAC("MlpPolicy", LatentObservation(env, plain), safety=plain,
                   barrier_term="action", **SAC_KW)
    with pytest.raises(ValueError, match="barrier_term"):
        BarrierSAC("MlpPolicy", LatentObservation(env, plain), safety=plain,
                   barrier_term="imagine", **SAC_KW)
    with pytest.raises(ValueError, match="latent_action_barrier=True"):
        action_barrier_actor_loss(plain, torch.zeros(2, plain.config.world_model.feature_dim),
                                  torch.zeros(2, plain.action_dim))
    with pytest.raises(ValueError, match="action_barrier is None"):
        SafetyModelConfig(action_barrier=None, latent_action_barrier=True)
    with_it = make_tiny_safety(env, latent_action_barrier=True)
    with pytest.raises(ValueError, match="expected features"):
        action_barrier_actor_loss(with_it, torch.zeros(2, 3), torch.zeros(2, with_it.action_dim))
    assert ActionBarrierConfig().margin == 2.0  # the margin the term's docs and tests assume


def test_recipe_builds_the_latent_action_barrier_for_the_action_term():
    from lbwrap.sb3.recipes import AgentRecipe, build_safe_agent

    fns = [lambda: lbwrap.make_pixel_env("lbwrap/PixelHazardRun-v0", size=32)]
    tiny = {"world_model_overrides": TINY_WORLD_MODEL, "replay_capacity": 1000}
    sac = {"buffer_size": 1000}
    built = build_safe_agent(fns, AgentRecipe(mode="barrier+shield", barrier_term="action",
                                              sac_kwargs=sac), device="cpu", safety_kwargs=tiny)
    assert isinstance(built.agent, BarrierSAC) and built.agent.barrier_term == "action"
    assert built.safety.latent_action_barrier is not None
    built = build_safe_agent(fns, AgentRecipe(mode="barrier+shield", sac_kwargs=sac),
                             device="cpu", safety_kwargs=tiny)
    assert built.agent.barrier_term == "imagined" and built.safety.latent_action_barrier is None
    with pytest.raises(ValueError, match="barrier_term"):
        AgentRecipe(mode="barrier", barrier_term="both")  # type: ignore[arg-type]
    for weight in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="barrier_weight must be a finite number >= 0"):
            AgentRecipe(mode="barrier", barrier_weight=weight)
