"""VecLagrangianPenalty / LagrangianLoggerCallback: reward - lambda * cost with dual ascent."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import Recorder
from stable_baselines3 import PPO, SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

import lbwrap
from lbwrap.barrier import BarrierConfig
from lbwrap.sb3.callback import CoTrainCallback
from lbwrap.sb3.lagrangian import (
    LagrangianLoggerCallback,
    VecLagrangianPenalty,
    find_vec_lagrangian,
)
from lbwrap.wrappers import LatentObservation


def logged(rec: Recorder, model, key: str) -> list[float]:
    values = [r[key] for r in rec.records if key in r]
    if key in model.logger.name_to_value:
        values.append(model.logger.name_to_value[key])
    return values


class StepRecorder(BaseCallback):
    """Records the rewards the algorithm is about to store and the step infos."""

    def __init__(self) -> None:
        super().__init__()
        self.rewards: list[np.ndarray] = []
        self.infos: list[list[dict]] = []
        self.dones: list[np.ndarray] = []

    def _on_step(self) -> bool:
        self.rewards.append(np.array(self.locals["rewards"], dtype=np.float32, copy=True))
        self.infos.append([dict(i) for i in self.locals["infos"]])
        self.dones.append(np.array(self.locals["dones"], copy=True))
        return True


def step_n(venv, n: int):
    out = []
    venv.reset()
    for _ in range(n):
        actions = np.zeros((venv.num_envs, 2), np.float32)
        out.append(venv.step(actions))
    return out


def replay_rule(ep_costs, limit, lr, lam=0.0, every=1):
    """The documented update rule applied to a list of finished episode costs."""
    pending = []
    for c in ep_costs:
        pending.append(c)
        if len(pending) >= every:
            lam = max(0.0, lam + lr * (float(np.mean(pending)) - limit))
            pending = []
    return lam


# ----------------------------------------------------------------------------- the wrapper


def test_lambda_rises_when_episode_costs_exceed_the_limit(scripted_env_cls):
    venv = VecLagrangianPenalty(
        DummyVecEnv([lambda: scripted_env_cls(costs=(1.0,), episode_length=10)]),
        cost_limit=5.0, lambda_lr=0.1,
    )
    steps = step_n(venv, 30)
    # each episode costs 10 > 5: lambda 0 -> 0.5 -> 1.0 -> 1.5
    assert venv.lagrange_multiplier == pytest.approx(1.5)
    assert venv.num_updates == 3 and venv.last_update_cost == 10.0
    for t, (_, rewards, _, infos) in enumerate(steps):
        lam = 0.5 * (t // 10)
        assert infos[0]["lagrangian_lambda"] == pytest.approx(lam)
        assert infos[0]["env_reward"] == 1.0
        assert rewards[0] == pytest.approx(1.0 - lam * 1.0)
        assert infos[0]["lagrangian_penalty"] == pytest.approx(lam)
    assert list(venv.episode_costs) == [10.0, 10.0, 10.0]
    assert venv.cumulative_violations == 30


def test_lambda_stays_zero_under_the_limit(scripted_env_cls):
    venv = VecLagrangianPenalty(
        DummyVecEnv([lambda: scripted_env_cls(costs=(0.0, 0.0, 0.0, 1.0), episode_length=10)]),
        cost_limit=5.0, lambda_lr=0.1,
    )
    steps = step_n(venv, 40)
    assert venv.lagrange_multiplier == 0.0 and venv.num_updates == 4
    assert all(r[0] == 1.0 for _, r, _, _ in steps)  # rewards untouched


def test_lambda_falls_to_zero_and_respects_max(scripted_env_cls):
    venv = VecLagrangianPenalty(
        DummyVecEnv([lambda: scripted_env_cls(costs=(0.0,), episode_length=10)]),
        cost_limit=5.0, lambda_lr=0.1, initial_lambda=0.8,
    )
    step_n(venv, 10)
    assert venv.lagrange_multiplier == pytest.approx(0.3)
    step_n(venv, 10)
    assert venv.lagrange_multiplier == 0.0  # clipped at zero
    capped = VecLagrangianPenalty(
        DummyVecEnv([lambda: scripted_env_cls(costs=(1.0,), episode_length=10)]),
        cost_limit=0.0, lambda_lr=1.0, max_lambda=3.0,
    )
    step_n(capped, 50)
    assert capped.lagrange_multiplier == 3.0


def test_update_every_k_episodes_and_many_envs(scripted_env_cls):
    costs = [(1.0,), (0.0,)]  # env 0 costs 10 per episode, env 1 costs 0
    venv = VecLagrangianPenalty(
        DummyVecEnv([lambda c=c: scripted_env_cls(costs=c, episode_length=10) for c in costs]),
        cost_limit=2.0, lambda_lr=0.5, update_every=2,
    )
    steps = step_n(venv, 20)
    # two episodes end together each time: one update with mean (10 + 0) / 2 = 5
    assert venv.num_updates == 2 and venv.num_episodes == 4
    assert venv.lagrange_multiplier == pytest.approx(replay_rule([10, 0, 10, 0], 2.0, 0.5, every=2))
    _, rewards, _, infos = steps[-1]
    lam = infos[0]["lagrangian_lambda"]
    np.testing.assert_allclose(rewards, [1.0 - lam, 1.0])
    state = venv.state_dict()
    fresh = VecLagrangianPenalty(DummyVecEnv([lambda: scripted_env_cls()]), cost_limit=2.0)
    fresh.load_state_dict(state)
    assert fresh.lagrange_multiplier == venv.lagrange_multiplier


def test_wrapper_errors(scripted_env_cls):
    no_cost = VecLagrangianPenalty(DummyVecEnv([lambda: scripted_env_cls(cost_key=None)]))
    with pytest.raises(KeyError, match="no 'cost'"):
        step_n(no_cost, 1)
    make = DummyVecEnv([lambda: scripted_env_cls()])
    with pytest.raises(ValueError, match="lambda_lr"):
        VecLagrangianPenalty(make, lambda_lr=0.0)
    with pytest.raises(ValueError, match="initial_lambda"):
        VecLagrangianPenalty(make, initial_lambda=-1.0)
    with pytest.raises(ValueError, match="update_every"):
        VecLagrangianPenalty(make, update_every=0)
    with pytest.raises(ValueError, match="cost_limit"):
        VecLagrangianPenalty(make, cost_limit=math.inf)
    with pytest.raises(TypeError, match="VecEnv"):
        VecLagrangianPenalty(object())
    with pytest.raises(ValueError, match="No VecLagrangianPenalty"):
        find_vec_lagrangian(make)


# ----------------------------------------------------------------------------- with SB3


ALGOS = {
    "SAC": (SAC, {"learning_starts": 30, "batch_size": 16, "policy_kwargs": {"net_arch": [16]}}),
    "TD3": (TD3, {"learning_starts": 30, "batch_size": 16, "policy_kwargs": {"net_arch": [16]}}),
    "PPO": (PPO, {"n_steps": 20, "batch_size": 10, "n_epochs": 1,
                  "policy_kwargs": {"net_arch": [16]}}),
}


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_works_with_sb3_algorithms(algo, scripted_env_cls):
    cls, kwargs = ALGOS[algo]
    venv = VecLagrangianPenalty(
        DummyVecEnv([lambda: scripted_env_cls(costs=(1.0, 0.0), episode_length=10)]),
        cost_limit=2.0, lambda_lr=0.1,
    )
    model = cls("MlpPolicy", venv, seed=0, device="cpu", **kwargs)
    rec = Recorder()
    model.set_logger(Logger(folder=None, output_formats=[rec]))
    steps = StepRecorder()
    model.learn(60, callback=[LagrangianLoggerCallback(), steps])

    # 6 episodes of cost 5 > 2: lambda = 6 * 0.1 * 3
    assert venv.lagrange_multiplier == pytest.approx(1.8)
    lambdas = logged(rec, model, "lagrangian/lambda")
    assert lambdas and lambdas[-1] == pytest.approx(1.8) and max(lambdas) > 0
    assert logged(rec, model, "lagrangian/cost_limit")[-1] == 2.0
    assert logged(rec, model, "lagrangian/ep_cost_mean")[-1] == 5.0
    assert logged(rec, model, "rollout/ep_cost_mean")[-1] == 5.0
    assert logged(rec, model, "rollout/cost_rate")[-1] == pytest.approx(0.5)
    assert logged(rec, model, "safety/cumulative_violations")[-1] == 30

    rewards = np.concatenate(steps.rewards)
    expected = np.array([
        i["env_reward"] - i["lagrangian_lambda"] * i["cost"] for infos in steps.infos
        for i in infos
    ], np.float32)
    np.testing.assert_allclose(rewards, expected, rtol=1e-6)
    assert np.any(rewards < 1.0)
    if hasattr(model, "replay_buffer"):  # what the off-policy algorithm actually stored
        np.testing.assert_allclose(model.replay_buffer.rewards[:60, 0], expected, rtol=1e-6)


def test_ppo_on_pixel_hazard_with_the_latent_stack():
    pix = lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=32, max_episode_steps=40, level=2)
    safety = lbwrap.LatentSafetyModel.for_env(
        pix, seed=0, device="cpu", batch_size=4, seq_len=8,
        world_model_overrides={"cnn_depth": 4, "deter_dim": 16, "stoch_dim": 4, "hidden_dim": 16,
                               "head_hidden_dim": 16},
        barrier=BarrierConfig(hidden_dim=16, imagine_starts=16, imagine_horizon=3),
    )
    venv = VecLagrangianPenalty(LatentObservation(pix, safety), cost_limit=1.0, lambda_lr=0.2)
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    rec = Recorder()
    model.set_logger(Logger(folder=None, output_formats=[rec]))
    steps = StepRecorder()
    cotrain = CoTrainCallback(safety, train_every=64, updates_per_train=1, learning_starts=64)
    model.learn(256, callback=[cotrain, LagrangianLoggerCallback(), steps])

    infos = [i for step in steps.infos for i in step]
    dones = np.concatenate(steps.dones)
    ep_costs, acc = [], 0.0
    for info, done in zip(infos, dones, strict=True):
        acc += info["cost"]
        if done:
            ep_costs.append(acc)
            acc = 0.0
    assert len(ep_costs) == venv.num_episodes >= 10
    assert venv.lagrange_multiplier == pytest.approx(replay_rule(ep_costs, 1.0, 0.2))
    assert max(ep_costs) > 1.0 and venv.lagrange_multiplier > 0  # level 2 has costly episodes
    assert logged(rec, model, "lagrangian/lambda")[-1] == pytest.approx(venv.lagrange_multiplier)
    assert logged(rec, model, "rollout/ep_cost_mean")
    expected = np.array([i["env_reward"] - i["lagrangian_lambda"] * i["cost"] for i in infos])
    np.testing.assert_allclose(np.concatenate(steps.rewards), expected, rtol=1e-6, atol=1e-7)
    assert safety.wm_trainer.num_updates > 0  # the world model co-trained on the same stack


def test_lagrangian_shield_recipe_penalises_the_costs_of_executed_actions():
    from conftest import make_tiny_safety

    from lbwrap.sb3 import VecBarrierShield
    from lbwrap.sb3.recipes import SHIELD_MODES, AgentRecipe, build_safe_agent

    def make():
        return lbwrap.make_pixel_env(lbwrap.PIXEL_HAZARD_ID, size=32, max_episode_steps=40)

    safety = make_tiny_safety(DummyVecEnv([make]))
    safety.force_ready = True  # the shield acts from the first step
    recipe = AgentRecipe(mode="lagrangian+shield", model_learning_starts=10**9, lambda_lr=0.1,
                         cost_limit=0.0, reward_scale=1.0, intervention_penalty=0.0, sac_kwargs={"learning_starts": 10, "batch_size": 8,
                                                     "policy_kwargs": {"net_arch": [16]}})
    built = build_safe_agent([make], recipe, safety=safety, seed=0, device="cpu")
    assert "lagrangian+shield" in SHIELD_MODES
    # the Lagrangian term sits outside the shield: it sees the costs of the executed actions
    assert isinstance(built.env, VecLagrangianPenalty) and isinstance(built.env.venv, VecBarrierShield)
    assert any(isinstance(c, LagrangianLoggerCallback) for c in built.callbacks)
    steps = StepRecorder()
    built.agent.learn(60, callback=built.callback(steps))
    infos = [i for step in steps.infos for i in step]
    assert all(i["shield_active"] for i in infos)
    rewards = np.concatenate(steps.rewards)
    expected = np.array([i["env_reward"] - i["lagrangian_lambda"] * i["cost"] for i in infos],
                        np.float32)
    np.testing.assert_allclose(rewards, expected, rtol=1e-5, atol=1e-6)
    # dual ascent on the episode costs left after shielding (cost limit 0)
    lam, episode_cost, ended = 0.0, 0.0, 0
    for info, done in zip(infos, np.concatenate(steps.dones)):
        episode_cost += info["cost"]
        if done:
            lam, episode_cost, ended = max(0.0, lam + 0.1 * episode_cost), 0.0, ended + 1
    assert ended == 3  # 40 env steps per episode, action repeat 2, 60 agent steps
    assert built.env.lagrange_multiplier == pytest.approx(lam)
