"""ExecutedActionRelabel: SAC's replay stores the shield's executed action, scaled like SB3 does."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.vec_env import DummyVecEnv
from test_wrappers import make_barrier_negative

import lbwrap
from lbwrap.sb3 import ExecutedActionRelabel, VecBarrierShield, VecLatentObservation


def shielded_stack(scripted_env_cls, tiny_safety, intervention_penalty: float = 0.0):
    """Two scripted envs with a [-2, 2] action box behind an always-intervening shield."""

    class WideBox(scripted_env_cls):
        def __init__(self):
            super().__init__()
            self.action_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)

    inner = [WideBox(), WideBox()]
    venv = DummyVecEnv([lambda e=e: lbwrap.as_pixel_env(e, size=32) for e in inner])
    safety = tiny_safety(venv)
    make_barrier_negative(safety)
    safety.force_ready = True
    return inner, VecBarrierShield(VecLatentObservation(venv, safety), safety,
                                   intervention_penalty=intervention_penalty)


@pytest.mark.parametrize("relabel", [True, False])
def test_replay_holds_the_executed_action(scripted_env_cls, tiny_safety, relabel):
    inner, venv = shielded_stack(scripted_env_cls, tiny_safety)
    agent = SAC("MlpPolicy", venv, learning_starts=1000, buffer_size=100, seed=0,
                policy_kwargs={"net_arch": [8]})
    callback = ExecutedActionRelabel()
    agent.learn(10, callback=[callback] if relabel else [])
    stored = agent.replay_buffer.actions[:5]  # (steps, envs, 2), in [-1, 1]
    executed = np.stack([np.stack(env.received_actions[:5]) for env in inner], axis=1)
    if relabel:
        np.testing.assert_allclose(stored, executed / 2.0, atol=1e-5)  # box [-2, 2] -> [-1, 1]
        assert callback.relabelled == 10  # 5 steps x 2 envs, every proposal was overridden
    else:
        assert not np.allclose(stored, executed / 2.0, atol=1e-3)  # SB3 keeps the proposals


def test_keep_proposal_stores_both_transitions_and_gives_the_penalty_back(scripted_env_cls,
                                                                         tiny_safety):
    inner, venv = shielded_stack(scripted_env_cls, tiny_safety, intervention_penalty=0.25)
    agent = SAC("MlpPolicy", venv, learning_starts=1000, buffer_size=100, seed=0,
                policy_kwargs={"net_arch": [8]})
    callback = ExecutedActionRelabel(keep_proposal=True, intervention_reward=0.25)
    agent.learn(10, callback=callback)  # 5 vector steps of 2 envs
    buf = agent.replay_buffer
    assert buf.pos == 10  # two rows per step: the executed action's, then SB3's proposal
    executed = np.stack([np.stack(env.received_actions[:5]) for env in inner], axis=1)
    np.testing.assert_allclose(buf.actions[0:10:2], executed / 2.0, atol=1e-5)
    assert not np.allclose(buf.actions[1:10:2], executed / 2.0, atol=1e-3)  # the proposals
    np.testing.assert_allclose(buf.observations[0:10:2], buf.observations[1:10:2])
    np.testing.assert_allclose(buf.next_observations[0:10:2], buf.next_observations[1:10:2])
    # every proposal was replaced: its row carries the penalty, the executed row does not
    np.testing.assert_allclose(buf.rewards[0:10:2] - buf.rewards[1:10:2], 0.25, atol=1e-6)
    assert callback.relabelled == 10


def test_keep_proposal_refuses_what_it_cannot_store(scripted_env_cls, tiny_safety):
    with pytest.raises(ValueError, match="keep_proposal=True"):
        ExecutedActionRelabel(intervention_reward=0.1)
    _, venv = shielded_stack(scripted_env_cls, tiny_safety)
    agent = SAC("MlpPolicy", venv, learning_starts=1000, buffer_size=100, seed=0,
                optimize_memory_usage=True, replay_buffer_kwargs={"handle_timeout_termination": False},
                policy_kwargs={"net_arch": [8]})
    with pytest.raises(ValueError, match="optimize_memory_usage"):
        agent.learn(2, callback=ExecutedActionRelabel(keep_proposal=True))


def test_on_policy_algorithms_are_left_alone(scripted_env_cls, tiny_safety):
    _, venv = shielded_stack(scripted_env_cls, tiny_safety)
    agent = PPO("MlpPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, seed=0,
                policy_kwargs={"net_arch": [8]})
    callback = ExecutedActionRelabel()
    with pytest.warns(UserWarning, match="does nothing for PPO"):
        agent.learn(8, callback=callback)
    assert callback.relabelled == 0


def test_recipe_adds_the_relabel_callback_on_request():
    from conftest import TINY_WORLD_MODEL

    from lbwrap.sb3.recipes import AgentRecipe, build_safe_agent

    fns = [lambda: lbwrap.make_pixel_env(lbwrap.PIXEL_HAZARD_ID, size=32)]
    tiny = {"world_model_overrides": TINY_WORLD_MODEL, "replay_capacity": 1000}
    sac = {"buffer_size": 1000}
    built = build_safe_agent(fns, AgentRecipe(mode="shield", learn_from_executed=True,
                                              sac_kwargs=sac), device="cpu", safety_kwargs=tiny)
    assert isinstance(built.callbacks[-1], ExecutedActionRelabel)
    assert not built.callbacks[-1].keep_proposal
    built = build_safe_agent(fns, AgentRecipe(mode="shield", learn_from_executed=True,
                                              keep_proposal=True, intervention_penalty=0.1,
                                              reward_scale=10.0, sac_kwargs=sac),
                             device="cpu", safety_kwargs=tiny)
    relabel = built.callbacks[-1]
    assert isinstance(relabel, ExecutedActionRelabel) and relabel.keep_proposal
    assert relabel.intervention_reward == pytest.approx(1.0)  # the penalty in the agent's units
    with pytest.raises(ValueError, match="needs learn_from_executed"):
        AgentRecipe(mode="shield", keep_proposal=True)
    built = build_safe_agent(fns, AgentRecipe(mode="shield", sac_kwargs=sac), device="cpu",
                             safety_kwargs=tiny)
    assert not any(isinstance(c, ExecutedActionRelabel) for c in built.callbacks)
