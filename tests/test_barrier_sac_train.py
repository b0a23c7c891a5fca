"""BarrierSAC.train against plain SAC.train on the same weights, replay data and seeds.

Inactive, BarrierSAC must train exactly like SAC; active, the actor's gradient must be SAC's
plus ``barrier_weight`` times the gradient of :func:`barrier_actor_loss` on the same minibatch
with SAC's ``actions_pi`` as the first imagined action, and everything else must stay SAC's.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import Recorder
from stable_baselines3 import SAC
from stable_baselines3.common.logger import Logger

import lbwrap
from lbwrap.barrier import BarrierConfig
from lbwrap.sb3.policy import BarrierSAC, barrier_actor_loss
from lbwrap.wrappers import LatentObservation

TINY_WM = {"cnn_depth": 4, "deter_dim": 16, "stoch_dim": 4, "hidden_dim": 16,
           "head_hidden_dim": 16}
SAC_KW: dict[str, Any] = {"learning_starts": 1000, "batch_size": 16, "device": "cpu", "seed": 0,
                          "policy_kwargs": {"net_arch": [32, 32]}}
HORIZON = 3
BATCH = 16


def latent_env() -> tuple[gym.Env, lbwrap.LatentSafetyModel]:
    pix = lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=32, max_episode_steps=40)
    safety = lbwrap.LatentSafetyModel.for_env(
        pix, seed=0, device="cpu", batch_size=4, seq_len=8, world_model_overrides=TINY_WM,
        barrier=BarrierConfig(hidden_dim=16, imagine_starts=16, imagine_horizon=3),
    )
    with torch.no_grad():  # B below its margin everywhere: every hinge of the term is active
        safety.barrier.net[-1].bias.fill_(-1.0)
    return LatentObservation(pix, safety), safety


def quiet(model: SAC) -> SAC:
    model.set_logger(Logger(folder=None, output_formats=[Recorder()]))
    return model


def twins(**barrier_kw: Any) -> tuple[BarrierSAC, SAC]:
    """A BarrierSAC with 60 transitions in its replay, and a plain SAC in the same state."""
    env, safety = latent_env()
    agent = BarrierSAC("MlpPolicy", env, safety=safety, barrier_horizon=HORIZON,
                       **barrier_kw, **SAC_KW)
    quiet(agent)
    agent.learn(60)  # fills the replay; learning_starts keeps it from training
    plain = quiet(SAC("MlpPolicy", env, **SAC_KW))
    weights = {k: v for k, v in agent.policy.state_dict().items() if not k.startswith("safety.")}
    plain.policy.load_state_dict(weights)
    plain.actor.optimizer.load_state_dict(agent.actor.optimizer.state_dict())
    plain.critic.optimizer.load_state_dict(agent.critic.optimizer.state_dict())
    assert agent.log_ent_coef is not None and plain.log_ent_coef is not None  # ent_coef="auto"
    assert agent.ent_coef_optimizer is not None and plain.ent_coef_optimizer is not None
    with torch.no_grad():
        plain.log_ent_coef.copy_(agent.log_ent_coef)
    plain.ent_coef_optimizer.load_state_dict(agent.ent_coef_optimizer.state_dict())
    plain.replay_buffer = copy.deepcopy(agent.replay_buffer)
    plain._n_updates = agent._n_updates
    return agent, plain


def trainable(model: SAC) -> torch.Tensor:
    """Actor, critic and target-critic parameters and the entropy coefficient, flattened."""
    nets = (model.actor, model.critic, model.critic_target)
    flat = [p.detach().flatten() for net in nets for p in net.parameters()]
    assert model.log_ent_coef is not None
    return torch.cat([*flat, model.log_ent_coef.detach().flatten()]).clone()


def train_seeded(model: SAC, gradient_steps: int, seed: int = 7) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # ReplayBuffer.sample draws its indices from numpy's global RNG
    model.train(gradient_steps=gradient_steps, batch_size=BATCH)


def actor_grads_at_step(model: SAC) -> list[torch.Tensor]:
    """Train one seeded gradient step; the actor's gradient the optimizer stepped with."""
    grads: list[torch.Tensor] = []

    def grab(_opt: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        grads[:] = [p.grad.detach().clone() for p in model.actor.parameters()]

    handle = model.actor.optimizer.register_step_pre_hook(grab)
    try:
        train_seeded(model, gradient_steps=1)
    finally:
        handle.remove()
    return grads


@pytest.mark.parametrize("barrier_kw", [
    {"barrier_weight": 0.0, "barrier_always": True},   # weight 0 disables the term
    {"barrier_weight": 1.0},                           # safety not ready: the term waits
], ids=["weight0", "not-ready"])
def test_inactive_barrier_trains_exactly_like_sac(barrier_kw):
    agent, plain = twins(**barrier_kw)
    assert not agent._barrier_active()
    before = trainable(agent)
    assert torch.equal(before, trainable(plain))
    train_seeded(agent, gradient_steps=3)
    train_seeded(plain, gradient_steps=3)
    after = trainable(agent)
    assert not torch.equal(after, before)  # the steps did train
    # the inactive path is SAC.train itself: bitwise equal, not merely close
    assert torch.equal(after, trainable(plain))
    assert agent._n_updates == plain._n_updates == 3


def test_active_barrier_adds_weighted_term_gradient_to_sacs_actor_gradient():
    weight = 10.0
    agent, plain = twins(barrier_weight=weight, barrier_always=True)
    actor_state = copy.deepcopy(agent.actor.state_dict())

    # the term's gradient, computed here from the batch and sample SAC.train draws (seed 7):
    # numpy picks the indices, then torch's first draw is actions_pi, the second next_actions
    np.random.seed(7)
    batch = agent.replay_buffer.sample(BATCH)
    torch.manual_seed(7)
    actions_pi, _ = agent.actor.action_log_prob(batch.observations)
    with torch.no_grad():
        agent.actor.action_log_prob(batch.next_observations)
    agent.actor.zero_grad()
    loss, _ = barrier_actor_loss(
        agent.safety, lambda f: agent.actor.action_log_prob(f)[0], batch.observations, HORIZON,
        first_actions=actions_pi)
    loss.backward()
    term_grads = [p.grad.detach().clone() for p in agent.actor.parameters()]
    agent.actor.zero_grad()
    assert sum(float(g.norm()) for g in term_grads) > 1e-3  # the check below is not vacuous

    sac_grads = actor_grads_at_step(plain)
    barrier_grads = actor_grads_at_step(agent)
    for g_sac, g_term, g_barrier in zip(sac_grads, term_grads, barrier_grads, strict=True):
        assert not torch.allclose(g_barrier, g_sac)
        assert torch.allclose(g_barrier, g_sac + weight * g_term, rtol=1e-4, atol=1e-6)
    # a single actor step (Adam's step count) moved every actor weight
    assert {int(s["step"]) for s in agent.actor.optimizer.state_dict()["state"].values()} == {1}
    assert not any(torch.equal(actor_state[k], p) for k, p in agent.actor.named_parameters())
    # the critic, its target and the entropy coefficient took SAC's steps
    n_actor = sum(p.numel() for p in agent.actor.parameters())
    assert torch.equal(trainable(agent)[n_actor:], trainable(plain)[n_actor:])


def test_hooks_exist_only_during_train_and_refuse_a_step_without_the_term():
    agent, _ = twins(barrier_weight=1.0, barrier_always=True)
    actor, optimizer = agent.actor, agent.actor.optimizer
    train_seeded(agent, gradient_steps=2)
    assert "action_log_prob" not in vars(actor) and "zero_grad" not in vars(optimizer)
    optimizer.zero_grad()
    optimizer.step()  # no hook left behind
    with agent._barrier_in_actor_step([]):
        with pytest.raises(RuntimeError, match="zero_grad"):
            optimizer.zero_grad()  # no actor-loss sample recorded yet
        with pytest.raises(RuntimeError, match="without the barrier gradient"):
            optimizer.step()
    assert "action_log_prob" not in vars(actor) and "zero_grad" not in vars(optimizer)
