"""Gymnasium and VecEnv wrappers: latent observations, the shield, the penalty."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

import lbwrap
from lbwrap.sb3 import VecBarrierPenalty, VecBarrierShield, VecLatentObservation
from lbwrap.wrappers import BarrierPenalty, BarrierShield, LatentObservation


def pixel_hazard(size=32, **kw):
    return lbwrap.make_pixel_env(lbwrap.PIXEL_HAZARD_ID, size=size, **kw)


def make_barrier_negative(safety) -> None:
    """Force B(z) < 0 and B_next(e, a) < 0 everywhere: every proposal fails (whichever predictor
    the shield uses), so an active shield always intervenes."""
    nets = [safety.barrier] + ([safety.action_barrier] if safety.action_barrier is not None else [])
    for net in nets:
        last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(-1.0)


def test_wrapped_envs_pass_checkers(tiny_safety):
    base = pixel_hazard()
    safety = tiny_safety(base)
    latent = LatentObservation(base, safety)
    assert latent.observation_space.shape == (safety.world_model.feature_dim,)
    for env in (latent, BarrierShield(latent, safety), BarrierPenalty(latent, safety)):
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env)


def test_latent_observation_info_contract(scripted_env_cls, tiny_safety):
    env = lbwrap.as_pixel_env(scripted_env_cls(episode_length=3), size=32)
    safety = tiny_safety(env)
    env = LatentObservation(env, safety)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and info["pixels"].shape == (3, 32, 32)
    _, _, _, _, info1 = env.step(np.zeros(2, np.float32))
    assert (info1["episode_start_pixels"] == 0).all() and (info1["pixels"] == 1).all()
    _, _, _, _, info2 = env.step(np.zeros(2, np.float32))
    assert "episode_start_pixels" not in info2 and (info2["pixels"] == 2).all()


@pytest.mark.parametrize("predictor", ["action_barrier", "prior"])
def test_shield_executed_action_reaches_env_and_world_model(scripted_env_cls, tiny_safety,
                                                            predictor):
    inner = scripted_env_cls()
    pixel_env = lbwrap.as_pixel_env(inner, size=32)
    extra = {} if predictor == "action_barrier" else {"action_barrier": None}
    safety = tiny_safety(pixel_env, **extra)
    assert safety.shield_filter.config.predictor == predictor
    make_barrier_negative(safety)
    safety.force_ready = True
    env = BarrierShield(LatentObservation(pixel_env, safety), safety)
    env.reset(seed=0)
    latent = env.latent
    for _ in range(5):
        proposal = np.array([0.9, -0.9], np.float32)
        state_before = latent.latent_state
        _, _, _, _, info = env.step(proposal)
        assert info["shield_active"] and info["shield_intervened"]
        executed = info["executed_action"]
        assert not np.allclose(executed, proposal)
        np.testing.assert_allclose(inner.received_actions[-1], executed)
        # the world model was stepped with the executed action, not the proposal
        with torch.no_grad():
            expected = safety.world_model.observe_step(
                state_before, torch.as_tensor(executed[None]), torch.as_tensor(info["pixels"][None]),
                torch.zeros(1, dtype=torch.bool), sample=False)
        torch.testing.assert_close(latent.latent_state.deter, expected.deter)


def test_shield_inactive_until_ready(tiny_safety):
    base = pixel_hazard()
    safety = tiny_safety(base)
    assert not safety.ready
    env = BarrierShield(LatentObservation(base, safety), safety)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([3.0, -0.5], np.float32))
    assert not info["shield_active"] and not info["shield_intervened"]
    np.testing.assert_allclose(info["executed_action"], [1.0, -0.5])  # clipped, otherwise untouched


@pytest.mark.parametrize("ready", [False, True])
def test_shield_infos_compare_equal_to_themselves(tiny_safety, ready):
    """No NaN in the shield's infos (Gymnasium 1.x's determinism checks compare infos with ==):
    the barrier values appear only while the shield is active."""
    from gymnasium.utils.env_checker import data_equivalence

    base = pixel_hazard()
    safety = tiny_safety(base)
    safety.force_ready = ready
    env = BarrierShield(LatentObservation(base, safety), safety)
    venv = VecBarrierShield(VecLatentObservation(DummyVecEnv([pixel_hazard]), safety), safety)
    env.reset(seed=0)
    venv.reset()
    action = np.array([0.3, -0.5], np.float32)
    _, _, _, _, info = env.step(action)
    _, _, _, infos = venv.step(action[None])
    for one in (info, infos[0]):
        assert data_equivalence(one, dict(one)), one.keys()
        assert one["shield_active"] is ready
        assert ("barrier_now" in one) is ready
        assert all(np.isfinite(one[k]) for k in ("barrier_now", "barrier_next_proposed",
                                                 "barrier_next_executed") if k in one)
    env.close()
    venv.close()


@pytest.mark.parametrize("ready", [False, True])
def test_shield_never_leaves_action_box(scripted_env_cls, tiny_safety, ready):
    class Asymmetric(scripted_env_cls):
        def __init__(self):
            super().__init__()
            self.action_space = gym.spaces.Box(np.array([-0.5, 0.0], np.float32),
                                               np.array([1.0, 2.0], np.float32))

    inner = Asymmetric()
    pixel_env = lbwrap.as_pixel_env(inner, size=32)
    safety = tiny_safety(pixel_env)
    safety.force_ready = ready
    env = BarrierShield(LatentObservation(pixel_env, safety), safety)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        env.step(rng.uniform(-10, 10, 2).astype(np.float32))
    received = np.stack(inner.received_actions)
    assert (received >= [-0.5, 0.0]).all() and (received <= [1.0, 2.0]).all()


def test_intervention_penalty_and_env_reward(scripted_env_cls, tiny_safety):
    pixel_env = lbwrap.as_pixel_env(scripted_env_cls(), size=32)
    safety = tiny_safety(pixel_env)
    make_barrier_negative(safety)
    safety.force_ready = True
    env = BarrierShield(LatentObservation(pixel_env, safety), safety, intervention_penalty=0.5)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["env_reward"] == 1.0 and reward == pytest.approx(0.5)


def test_vec_intervention_penalty_only_when_the_shield_replaces(scripted_env_cls, tiny_safety):
    from stable_baselines3.common.vec_env import DummyVecEnv

    from lbwrap.sb3 import VecBarrierShield, VecLatentObservation

    venv = DummyVecEnv([lambda: lbwrap.as_pixel_env(scripted_env_cls(), size=32)] * 2)
    safety = tiny_safety(venv)
    make_barrier_negative(safety)
    env = VecBarrierShield(VecLatentObservation(venv, safety), safety, intervention_penalty=0.5)
    env.reset()
    actions = np.zeros((2, 2), np.float32)
    _, rewards, _, infos = env.step(actions)  # not ready: no shield, no penalty
    assert rewards.tolist() == [1.0, 1.0] and not any(i["shield_intervened"] for i in infos)
    safety.force_ready = True
    _, rewards, _, infos = env.step(actions)
    assert all(i["shield_intervened"] for i in infos)
    assert rewards == pytest.approx([0.5, 0.5]) and [i["env_reward"] for i in infos] == [1.0, 1.0]
    with pytest.raises(ValueError, match="intervention_penalty"):
        VecBarrierShield(VecLatentObservation(venv, safety), safety, intervention_penalty=-1.0)


def test_barrier_penalty_reshapes_reward(scripted_env_cls, tiny_safety):
    pixel_env = lbwrap.as_pixel_env(scripted_env_cls(), size=32)
    safety = tiny_safety(pixel_env)
    make_barrier_negative(safety)  # B = -1 everywhere: margin penalty eps - B = 1.01
    env = BarrierPenalty(LatentObservation(pixel_env, safety), safety, scale=2.0, mode="margin")
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["barrier_penalty"] == 0.0 and reward == 1.0  # not ready: inactive
    safety.force_ready = True
    _, reward, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["barrier_penalty"] == pytest.approx(1.01, abs=1e-5)
    assert reward == pytest.approx(1.0 - 2.0 * 1.01, abs=1e-4) and info["env_reward"] == 1.0


def test_bad_inputs(scripted_env_cls, tiny_safety):
    base = pixel_hazard(size=32)
    safety = tiny_safety(base)
    with pytest.raises(ValueError, match="uint8 RGB image"):
        LatentObservation(gym.make("Pendulum-v1"), safety)
    with pytest.raises(ValueError, match=r"built for \(3, 32, 32\) images"):
        LatentObservation(pixel_hazard(size=64), safety)
    with pytest.raises(ValueError, match="LatentObservation inside"):
        BarrierShield(base, safety)
    other = tiny_safety(base)
    with pytest.raises(ValueError, match="share one"):
        BarrierShield(LatentObservation(base, safety), other)
    with pytest.raises(TypeError, match="LatentSafetyModel"):
        LatentObservation(base, object())


# ----------------------------------------------------------------------------- VecEnv versions
def test_vec_latent_transforms_terminal_observation(scripted_env_cls, tiny_safety):
    venv = DummyVecEnv([lambda: lbwrap.as_pixel_env(scripted_env_cls(episode_length=3), size=32)] * 2)
    safety = tiny_safety(venv)
    venv = VecBarrierShield(VecLatentObservation(venv, safety), safety)
    obs = venv.reset()
    assert obs.shape == (2, safety.world_model.feature_dim)
    infos_seen = []
    for _ in range(4):
        obs, _, dones, infos = venv.step(np.zeros((2, 2), np.float32))
        infos_seen.append(infos)
    # step 1 carries the reset frame; step 3 ends the episode with the terminal frame 3
    assert (infos_seen[0][0]["episode_start_pixels"] == 0).all()
    assert dones.shape == (2,)
    end = infos_seen[2][0]
    assert end["terminal_observation"].shape == (safety.world_model.feature_dim,)
    assert (end["pixels"] == 3).all()
    assert (infos_seen[3][0]["episode_start_pixels"] == 0).all()  # the next episode's reset frame
    assert (infos_seen[3][0]["pixels"] == 1).all()


def test_vec_shield_and_penalty_match_gym_semantics(scripted_env_cls, tiny_safety):
    inner = [scripted_env_cls(), scripted_env_cls()]
    venv = DummyVecEnv([lambda e=e: lbwrap.as_pixel_env(e, size=32) for e in inner])
    safety = tiny_safety(venv)
    make_barrier_negative(safety)
    safety.force_ready = True
    latent = VecLatentObservation(venv, safety)
    venv = VecBarrierPenalty(VecBarrierShield(latent, safety), safety, mode="margin")
    venv.reset()
    proposal = np.full((2, 2), 0.7, np.float32)
    _, rewards, _, infos = venv.step(proposal)
    for i in range(2):
        assert infos[i]["shield_intervened"]
        np.testing.assert_allclose(inner[i].received_actions[-1], infos[i]["executed_action"])
        assert infos[i]["barrier_penalty"] == pytest.approx(1.01, abs=1e-5)
    np.testing.assert_allclose(rewards, 1.0 - 1.01, atol=1e-4)


def test_penalty_shield_mode_stacks_the_penalty_outside_the_shield(tiny_safety):
    """penalty+shield: the shield filters the action, the barrier penalty reshapes the reward of
    the executed transition, and the intervention penalty still applies."""
    from lbwrap.sb3.recipes import SHIELD_MODES, AgentRecipe, build_safe_agent

    def make():
        return pixel_hazard(max_episode_steps=40)

    safety = tiny_safety(make())
    safety.force_ready = True
    recipe = AgentRecipe(mode="penalty+shield", model_learning_starts=10**9,
                         intervention_penalty=0.05, penalty_scale=2.0, reward_scale=1.0,
                         sac_kwargs={"learning_starts": 10, "batch_size": 8,
                                     "policy_kwargs": {"net_arch": [16]}})
    built = build_safe_agent([make], recipe, safety=safety, seed=0, device="cpu")
    assert "penalty+shield" in SHIELD_MODES
    assert isinstance(built.env, VecBarrierPenalty) and built.env.scale == 2.0
    assert isinstance(built.env.venv, VecBarrierShield)
    assert built.settings().shield
    obs = built.env.reset()
    for _ in range(5):
        action, _ = built.agent.predict(obs)
        obs, rewards, _, infos = built.env.step(action)
        info = infos[0]
        expected = info["env_reward"] - 2.0 * info["barrier_penalty"] - (
            0.05 if info["shield_intervened"] else 0.0)
        assert info["shield_active"] and rewards[0] == pytest.approx(expected, abs=1e-6)
    built.env.close()


def test_record_video_works_on_the_shielded_stack(tiny_safety, tmp_path):
    """Gymnasium's RecordVideo on BarrierShield(LatentObservation(pixel env)): the wrappers'
    render() gives the camera frame, and their infos compare equal to themselves."""
    pytest.importorskip("moviepy")
    from gymnasium.wrappers import RecordVideo

    base = pixel_hazard(max_episode_steps=20)
    safety = tiny_safety(base)
    safety.force_ready = True
    env = RecordVideo(BarrierShield(LatentObservation(base, safety), safety), str(tmp_path),
                      episode_trigger=lambda episode: True, disable_logger=True)
    env.reset(seed=0)
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
        done = terminated or truncated
    env.close()
    videos = list(tmp_path.glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
