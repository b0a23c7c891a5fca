"""VecRewardScale and AgentRecipe.reward_scale: the agent learns from scaled rewards, while the
world model, the logs and evaluation keep the env's own units."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tiny_safety
from stable_baselines3.common.vec_env import DummyVecEnv

import lbwrap
from lbwrap.sb3 import VecLatentObservation, VecRewardScale
from lbwrap.sb3.recipes import AgentRecipe, build_safe_agent


def hazard_env():
    return lbwrap.make_pixel_env(lbwrap.PIXEL_HAZARD_ID, size=32, level=2, max_episode_steps=40)


def test_rewards_are_scaled_and_env_reward_is_kept():
    venv = DummyVecEnv([hazard_env, hazard_env])
    safety = make_tiny_safety(venv)
    env = VecRewardScale(VecLatentObservation(venv, safety), 10.0)
    env.seed(0)
    env.reset()
    rng = np.random.default_rng(0)
    nonzero = 0
    for _ in range(30):
        env.step_async(rng.uniform(-1, 1, (2, 2)).astype(np.float32))
        _, rewards, _, infos = env.step_wait()
        raw = np.array([info["env_reward"] for info in infos], np.float32)
        np.testing.assert_allclose(rewards, 10.0 * raw, rtol=1e-6)
        nonzero += int(np.count_nonzero(raw))
    assert nonzero > 0  # progress rewards are non-zero almost every step
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            VecRewardScale(venv, bad)
    with pytest.raises(ValueError, match="reward_scale"):
        AgentRecipe(mode="none", reward_scale=0.0)


def test_recipe_scales_agent_reward_but_world_model_stores_env_units():
    recipe = AgentRecipe(mode="lagrangian", reward_scale=5.0, model_learning_starts=10_000,
                         sac_kwargs={"learning_starts": 50, "buffer_size": 1000})
    env = hazard_env()
    safety = make_tiny_safety(DummyVecEnv([hazard_env]))
    env.close()
    built = build_safe_agent([hazard_env], recipe, safety=safety, seed=0, device="cpu")
    assert isinstance(built.env, VecRewardScale)
    built.agent.learn(60, callback=built.callback())
    stored = built.agent.replay_buffer.rewards[:60, 0]
    replay = safety.replay.stream(0, keys=("reward", "is_first"))
    env_rewards = replay["reward"][~replay["is_first"]][:60]
    # the Lagrangian multiplier starts at 0, so the agent's reward is exactly 5x the env's
    np.testing.assert_allclose(stored, 5.0 * env_rewards, rtol=1e-5, atol=1e-7)
