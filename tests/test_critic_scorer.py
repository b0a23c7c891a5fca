"""The shield choosing substitutes by the agent's critic (``critic_scorer``, ``shield_selection``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_WORLD_MODEL
from stable_baselines3 import PPO, SAC

import lbwrap
from lbwrap.sb3 import critic_scorer
from lbwrap.sb3.recipes import AgentRecipe, build_safe_agent

TINY = {"world_model_overrides": TINY_WORLD_MODEL, "replay_capacity": 1000,
        "ready_min_updates": 1, "ready_min_unsafe": 0, "ready_accuracy": 0.0}
SAC_KW = {"buffer_size": 1000, "learning_starts": 0, "policy_kwargs": {"net_arch": [16]}}


def run_env():
    return lbwrap.make_pixel_env(lbwrap.PIXEL_HAZARD_RUN_ID, size=32)


def test_scores_are_the_pessimistic_q_of_the_rescaled_candidates():
    built = build_safe_agent([run_env], AgentRecipe(mode="none", sac_kwargs=SAC_KW), seed=0,
                             device="cpu", safety_kwargs=TINY)
    agent = built.agent
    obs = built.env.reset()
    cand = torch.rand(1, 5, 2) * 2 - 1
    scores = critic_scorer(agent)(obs, cand)
    assert scores.shape == (1, 5)
    with torch.no_grad():
        q1, q2 = agent.critic(torch.as_tensor(obs).repeat(5, 1), cand[0])  # box is [-1, 1]
    assert torch.allclose(scores[0], torch.minimum(q1, q2)[:, 0], atol=1e-6)
    with pytest.raises(TypeError, match="off-policy agent with a Q critic"):
        critic_scorer(PPO("MlpPolicy", built.env, n_steps=8, batch_size=8, device="cpu"))


def test_recipe_binds_the_critic_and_the_shield_executes_its_favourite_safe_action():
    recipe = AgentRecipe(mode="shield", shield_selection="critic", sac_kwargs=SAC_KW)
    built = build_safe_agent([run_env], recipe, seed=0, device="cpu", safety_kwargs=TINY)
    assert built.action_scorer is not None
    assert build_safe_agent([run_env], AgentRecipe(mode="shield", sac_kwargs=SAC_KW), seed=0,
                            device="cpu", safety_kwargs=TINY).action_scorer is None
    # Gate forced open; B_next(e, a) = 10 * (0.5 - a_x) passes the margin 2 iff a_x <= 0.3.
    safety = built.safety
    safety.force_ready = True
    ab = safety.action_barrier
    original = ab.forward
    ab.forward = lambda embed, action: 10.0 * (0.5 - action[..., 0])  # type: ignore[method-assign]
    try:
        obs = built.env.reset()
        seen = {}

        def spy(observations, cand):
            seen["obs"], seen["cand"] = observations.copy(), cand.clone()
            return cand[..., 1]  # the critic stand-in prefers the largest a_y

        shield = lbwrap.sb3.vec_wrappers.find_vec_shield(built.env)
        shield.action_scorer = spy
        _, _, _, infos = built.env.step(np.array([[1.0, 0.0]], np.float32))
        assert infos[0]["shield_intervened"]
        np.testing.assert_array_equal(seen["obs"], obs)  # the agent's observation of this step
        cand = seen["cand"][0]
        passing = cand[cand[:, 0] <= 0.3]
        np.testing.assert_allclose(infos[0]["executed_action"], passing[passing[:, 1].argmax()],
                                   rtol=1e-6)
        # a replaced agent gets the scorer re-bound to it
        other = SAC("MlpPolicy", built.env, device="cpu", **SAC_KW)
        built.set_agent(other)
        assert built.agent is other and shield.action_scorer is not spy
    finally:
        ab.forward = original  # type: ignore[method-assign]


def test_reward_scorer_rates_candidates_by_the_world_models_next_reward():
    """shield_selection="reward": each candidate's score is the reward head at the prior-mean
    next state from the agent's latent features; the recipe and a loaded agent bind it."""
    from lbwrap.latent_state import LatentState
    from lbwrap.safety_model import reward_scorer
    from lbwrap.sb3 import SafePixelAgent

    built = build_safe_agent([run_env], AgentRecipe(mode="shield", shield_selection="reward",
                                                    sac_kwargs=SAC_KW),
                             seed=0, device="cpu", safety_kwargs=TINY)
    safety = built.safety
    obs = built.env.reset()
    cand = torch.rand(1, 6, 2) * 2 - 1
    scores = reward_scorer(safety)(obs, cand)
    assert scores.shape == (1, 6)
    wm = safety.world_model
    feats = torch.as_tensor(obs, dtype=torch.float32)
    d = wm.config.deter_dim
    for j in range(6):
        state = LatentState(deter=feats[:, :d], stoch=feats[:, d:], mean=feats[:, d:],
                            std=torch.zeros_like(feats[:, d:]))
        expected = wm.predict_reward(wm.img_step(state, cand[:, j], sample=False).features)
        assert scores[0, j].item() == pytest.approx(expected.item(), abs=1e-5)
    assert built.action_scorer is not None  # bound to the shield by the recipe
    settings = built.settings()
    assert settings.shield_selection == "reward"
    assert SafePixelAgent(built.agent, safety, settings).action_scorer is not None
    with pytest.raises(ValueError, match="latent features"):
        reward_scorer(safety)(np.zeros((1, 3), np.float32), cand)
    built.env.close()
