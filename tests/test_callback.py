"""CoTrainCallback with real SB3 algorithms: the pixel stream it rebuilds, training, logging, saving."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ScriptedCostEnv, make_tiny_safety
from stable_baselines3 import PPO, SAC, TD3
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import lbwrap
from lbwrap.safety_model import LatentSafetyModel
from lbwrap.sb3 import CoTrainCallback, VecBarrierShield, VecLatentObservation


def scripted_factory(episode_length=4, costs=(0.0, 1.0)):
    def make():
        return lbwrap.as_pixel_env(ScriptedCostEnv(costs=costs, episode_length=episode_length),
                                   size=32)
    return make


def hazard_factory(seed=0):
    def make():
        env = lbwrap.make_pixel_env(lbwrap.PIXEL_HAZARD_ID, size=32, max_episode_steps=60)
        env.reset(seed=seed)
        return env
    return make


def stream(safety: LatentSafetyModel, env_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame number, is_first, cost) of one env's stored stream, oldest first."""
    r = safety.replay
    n = r._size[env_id]
    idx = (r._oldest()[env_id] + np.arange(n)) % r.env_capacity
    d = r._data
    return d["obs"][env_id, idx, 0, 0, 0], d["is_first"][env_id, idx], d["cost"][env_id, idx]


def expected_frames(length: int, steps: int) -> list[int]:
    """Frames of back-to-back episodes of ``length`` steps: 0 (reset), 1, ..., length, 0, 1, ..."""
    out: list[int] = []
    while len(out) < steps:
        out.extend(range(length + 1))
    return out


@pytest.mark.parametrize("path", ["latent", "pixels"])
def test_callback_rebuilds_exact_pixel_stream(path):
    venv = DummyVecEnv([scripted_factory()] * 2)
    safety = make_tiny_safety(venv)
    if path == "latent":
        venv = VecLatentObservation(venv, safety)
        agent = SAC("MlpPolicy", venv, learning_starts=1000, seed=0)
    else:
        agent = PPO("MlpPolicy", venv, n_steps=16, batch_size=16, seed=0)
    callback = CoTrainCallback(safety, learning_starts=10**9)  # capture only
    agent.learn(12, callback=callback)  # 6 vector steps = 1.5 episodes per env
    for env_id in range(2):
        frames, firsts, costs = stream(safety, env_id)
        assert frames.tolist() == expected_frames(4, len(frames))[: len(frames)]
        assert firsts.tolist() == [f == 0 for f in frames.tolist()]
        # the cost stored with frame k is the cost of the step that reached it (script 0, 1, ...)
        assert costs.tolist() == [0.0 if f == 0 else float((f - 1) % 2 == 1) for f in frames]


@pytest.mark.parametrize("algo", [SAC, TD3, PPO])
def test_callback_trains_with_each_algorithm(algo):
    venv = DummyVecEnv([hazard_factory(0), hazard_factory(1)])
    safety = make_tiny_safety(venv)
    venv = VecBarrierShield(VecLatentObservation(venv, safety), safety)
    kwargs = {"n_steps": 32, "batch_size": 32} if algo is PPO else {"learning_starts": 50}
    agent = algo("MlpPolicy", venv, seed=0, **kwargs)
    callback = CoTrainCallback(safety, train_every=40, updates_per_train=2, learning_starts=40)
    agent.learn(200, callback=callback)
    assert safety.wm_trainer.num_updates >= 4 and safety.barrier_trainer.num_updates >= 4
    assert "world_model/loss" in callback.last_metrics and "barrier/loss" in callback.last_metrics
    assert callback.cumulative_violations >= 0 and len(safety.replay) >= 200


def test_callback_with_subproc_vec_env(tmp_path):
    venv = SubprocVecEnv([hazard_factory(0), hazard_factory(1)], start_method="spawn")
    try:
        safety = make_tiny_safety(venv)
        venv = VecLatentObservation(venv, safety)
        agent = SAC("MlpPolicy", venv, learning_starts=40, seed=0)
        callback = CoTrainCallback(safety, train_every=40, updates_per_train=1, learning_starts=40,
                                   save_path=tmp_path, save_freq=100)
        agent.learn(160, callback=callback)
    finally:
        venv.close()
    assert safety.wm_trainer.num_updates >= 2
    assert (tmp_path / "safety_model_final.pt").is_file()
    assert any(p.name.endswith("_steps.pt") for p in tmp_path.iterdir())
    loaded = LatentSafetyModel.load(tmp_path / "safety_model_final.pt", device="cpu")
    for (name, a), b in zip(safety.state_dict().items(), loaded.state_dict().values()):
        assert np.array_equal(a.cpu().numpy(), b.cpu().numpy()), name


def test_callback_logs_safety_metrics():
    venv = DummyVecEnv([hazard_factory(0)])
    safety = make_tiny_safety(venv)
    venv = VecLatentObservation(venv, safety)
    agent = SAC("MlpPolicy", venv, learning_starts=20, seed=0)
    callback = CoTrainCallback(safety, train_every=20, updates_per_train=1, learning_starts=20)
    agent.learn(130, callback=callback)  # 60 env steps = 30 agent steps per episode
    assert len(callback.episode_costs) == 4
    values = agent.logger.name_to_value
    # SB3 clears its logger after each dump; check what the callback recorded last
    assert "safety/cumulative_violations" in values or callback.cumulative_violations >= 0


def test_callback_pretrain_updates_once_and_not_again_after_resume():
    venv = DummyVecEnv([hazard_factory(0)])
    safety = make_tiny_safety(venv)
    venv = VecLatentObservation(venv, safety)
    agent = SAC("MlpPolicy", venv, learning_starts=1000, seed=0)
    callback = CoTrainCallback(safety, train_every=20, updates_per_train=2, learning_starts=20,
                               pretrain_updates=5)
    agent.learn(60, callback=callback)  # training calls at agent steps 20, 40, 60
    assert safety.num_updates == (2 + 5) + 2 + 2
    # a resumed run (the safety model has been updated) does not pre-train again
    resumed = CoTrainCallback(safety, train_every=20, updates_per_train=2, learning_starts=0,
                              pretrain_updates=5)
    agent.learn(20, callback=resumed, reset_num_timesteps=False)
    assert safety.num_updates == 11 + 2


def test_callback_defers_pretrain_until_the_replay_holds_unsafe_steps():
    costs = (0.0,) * 25 + (1.0,) * 5  # cost steps at agent steps 26-30 of each 30-step episode
    venv = DummyVecEnv([scripted_factory(episode_length=30, costs=costs)])
    safety = make_tiny_safety(venv)
    venv = VecLatentObservation(venv, safety)
    calls: list[tuple[int, int]] = []  # (updates asked for, unsafe steps stored) per training call
    real_update = safety.update

    def spy(num_updates=1):
        calls.append((num_updates, safety.replay.num_cost_steps))
        return real_update(num_updates)

    safety.update = spy
    agent = SAC("MlpPolicy", venv, learning_starts=1000, seed=0)
    callback = CoTrainCallback(safety, train_every=10, updates_per_train=2, learning_starts=10,
                               pretrain_updates=5, pretrain_min_unsafe=3)
    agent.learn(50, callback=callback)
    assert calls == [(2, 0), (2, 0), (2 + 5, 5), (2, 5), (2, 5)]  # burst once, at step 30
    assert int(safety.unsafe_seen) > 0
    # a resumed run whose barrier has trained on unsafe states does not pre-train again
    calls.clear()
    resumed = CoTrainCallback(safety, train_every=10, updates_per_train=2, learning_starts=0,
                              pretrain_updates=5, pretrain_min_unsafe=3)
    agent.learn(20, callback=resumed, reset_num_timesteps=False)
    assert [n for n, _ in calls] == [2, 2]
    with pytest.raises(ValueError, match="pretrain_min_unsafe"):
        CoTrainCallback(safety, pretrain_min_unsafe=-1)


def test_callback_errors():
    venv = DummyVecEnv([hazard_factory(0)] * 2)
    safety = make_tiny_safety(DummyVecEnv([hazard_factory(0)]))  # built for 1 env stream
    agent = SAC("MlpPolicy", VecLatentObservation(venv, safety), learning_starts=10, seed=0)
    with pytest.raises(ValueError, match="2"):
        agent.learn(10, callback=CoTrainCallback(safety))
    with pytest.raises(ValueError, match="train_every"):
        CoTrainCallback(safety, train_every=0)
    with pytest.raises(ValueError, match="pretrain_updates"):
        CoTrainCallback(safety, pretrain_updates=-1)
    with pytest.raises(TypeError, match="LatentSafetyModel"):
        CoTrainCallback(object())


def test_callback_requires_cost_signal():
    venv = DummyVecEnv([lambda: lbwrap.as_pixel_env(ScriptedCostEnv(cost_key=""), size=32,
                                                    cost=lambda *a: 0.0)])
    safety = make_tiny_safety(venv)

    class DropCost(VecLatentObservation):
        def step_wait(self):
            obs, rew, dones, infos = super().step_wait()
            for info in infos:
                info.pop("cost", None)
            return obs, rew, dones, infos

    agent = SAC("MlpPolicy", DropCost(venv, safety), learning_starts=10, seed=0)
    with pytest.raises(KeyError, match="no 'cost'"):
        agent.learn(4, callback=CoTrainCallback(safety))
