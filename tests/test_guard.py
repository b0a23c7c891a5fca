"""Non-finite weights are found and named (agent parts and safety models); the guard callback
stops SB3's learn with that name; skipped updates are counted per model."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import make_tiny_safety
from stable_baselines3 import SAC

import lbwrap
from lbwrap.sb3 import (
    NonFiniteGuard,
    NonFiniteWeightsError,
    check_finite,
    explain_nonfinite,
    nonfinite_models,
)


def poison(module: torch.nn.Module, value: float = float("inf")) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.view(-1)[0] = value


@pytest.fixture
def parts():
    pixel_env = lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=32)
    safety = make_tiny_safety(pixel_env)
    agent = SAC("MlpPolicy", gym.make("Pendulum-v1"), learning_starts=10, batch_size=8,
                policy_kwargs={"net_arch": [8]}, device="cpu")
    pixel_env.close()
    return agent, safety


def test_finite_models_pass_and_each_poisoned_model_is_named(parts):
    agent, safety = parts
    assert nonfinite_models(agent, safety) == []
    check_finite(agent, safety)
    assert safety.skipped_updates == {"world_model": 0, "barrier": 0, "action_barrier": 0}
    poison(agent.policy.critic)
    poison(safety.world_model)
    poison(safety.action_barrier)
    assert nonfinite_models(agent, safety) == ["SAC.critic", "safety.world_model",
                                               "safety.action_barrier"]
    with pytest.raises(NonFiniteWeightsError, match="SAC.critic, safety.world_model") as info:
        check_finite(agent, safety)
    assert "last checkpoint" in str(info.value)


def test_guard_stops_learn_with_the_model_named(parts):
    agent, safety = parts

    class PoisonActor(NonFiniteGuard):  # reuse the callback plumbing: poison, then let it check
        def _on_step(self) -> bool:
            if self.num_timesteps == 30:
                poison(self.model.policy.actor)
            return super()._on_step()

    with pytest.raises(NonFiniteWeightsError, match="SAC.actor") as info:
        agent.learn(200, callback=PoisonActor(safety, check_every=1))
    assert info.value.step == 30


def test_an_sb3_crash_from_nonfinite_weights_is_explained(parts):
    """Between two guard checks SB3 itself fails on NaN weights (its Normal distribution refuses
    NaN means); explain_nonfinite turns that into the error that names the model."""
    agent, safety = parts

    class PoisonActor(NonFiniteGuard):
        def _on_step(self) -> bool:
            if self.num_timesteps == 30:
                poison(self.model.policy.actor, float("nan"))
            return super()._on_step()

    with pytest.raises(NonFiniteWeightsError, match="SAC.actor") as info, \
            explain_nonfinite(agent, safety):
        agent.learn(200, callback=PoisonActor(safety, check_every=1000))
    assert isinstance(info.value.__cause__, ValueError)  # SB3's own error, kept as the cause
    assert info.value.step < 200
    with pytest.raises(KeyError, match="unrelated"), explain_nonfinite(None, safety):
        raise KeyError("unrelated")
    with pytest.raises(ValueError, match="check_every must be >= 1"):
        NonFiniteGuard(safety, check_every=0)


def test_skipped_updates_are_counted_per_model(parts):
    _, safety = parts
    loss = torch.tensor(float("nan"), requires_grad=True)
    safety.barrier_trainer.step(loss * sum(p.sum() for p in safety.barrier.parameters()))
    assert safety.skipped_updates["barrier"] == 1
    assert np.isfinite([p.detach().sum() for p in safety.barrier.parameters()]).all()
