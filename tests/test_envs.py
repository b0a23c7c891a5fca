"""The pixel + cost env layer: adapters, make_pixel_env, the safety-gymnasium loader."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import lbwrap
from lbwrap.envs import NoCostSignalError, as_pixel_env, make_pixel_env
from lbwrap.envs.adapters import resize_image
from lbwrap.envs.safety_gym import _ndarray_defaults_as_factories


# ----------------------------------------------------------------------------- action repeat
def test_action_repeat_sums_reward_and_cost_and_counts_violations(scripted_env_cls):
    env = as_pixel_env(scripted_env_cls(costs=[0.0, 1.0, 0.5, 0.0]), size=16, action_repeat=2)
    env.reset(seed=0)
    _, r1, _, _, i1 = env.step(np.zeros(2, np.float32))  # sub-steps with cost 0, 1
    _, r2, _, _, i2 = env.step(np.zeros(2, np.float32))  # sub-steps with cost 0.5, 0
    assert (r1, i1["cost"], i1["violations"]) == (2.0, 1.0, 1)
    assert (r2, i2["cost"], i2["violations"]) == (2.0, 0.5, 1)


def test_action_repeat_stops_at_episode_end(scripted_env_cls):
    inner = scripted_env_cls(costs=[1.0], terminate_at=3)
    env = as_pixel_env(inner, size=16, action_repeat=2)
    env.reset(seed=0)
    env.step(np.zeros(2, np.float32))
    _, reward, terminated, _, info = env.step(np.zeros(2, np.float32))
    assert terminated and reward == 1.0 and info["cost"] == 1.0 and info["violations"] == 1
    assert len(inner.received_actions) == 3  # never stepped past the end


def test_six_tuple_cost_is_read_from_step(scripted_env_cls):
    env = as_pixel_env(scripted_env_cls(costs=[1.0, 0.0], six_tuple=True), size=16, action_repeat=2)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["cost"] == 1.0 and info["violations"] == 1


def test_cost_function_and_custom_key(scripted_env_cls):
    env = as_pixel_env(scripted_env_cls(costs=[3.0], cost_key="hazard"), size=16, cost="hazard")
    env.reset(seed=0)
    assert env.step(np.zeros(2, np.float32))[-1]["cost"] == 3.0
    env = as_pixel_env(scripted_env_cls(), size=16, cost=lambda obs, r, info: float(obs.mean() > 0))
    env.reset(seed=0)
    assert env.step(np.zeros(2, np.float32))[-1]["cost"] == 1.0


def test_missing_cost_key_is_a_clear_error(scripted_env_cls):
    env = as_pixel_env(scripted_env_cls(cost_key=""), size=16)
    env.reset(seed=0)
    with pytest.raises(NoCostSignalError, match="cost=<the info key"):
        env.step(np.zeros(2, np.float32))


# ----------------------------------------------------------------------------- pixel sources
def test_observation_layouts_and_resize(scripted_env_cls):
    env = as_pixel_env(scripted_env_cls(), size=32)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (3, 32, 32) and obs.shape == (3, 32, 32)
    env = as_pixel_env(scripted_env_cls(), size=16, channel_first=False)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (16, 16, 3) and obs.dtype == np.uint8


def test_resize_image_area_and_nearest():
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    small = resize_image(img, 2)
    assert small.shape == (2, 2, 3)
    assert small[0, 0, 0] == round(img[:2, :2, 0].mean())
    assert resize_image(img, 3).shape == (3, 3, 3)


def test_dict_key_and_render_sources():
    class DictEnv(gym.Env):
        observation_space = gym.spaces.Dict({
            "vision": gym.spaces.Box(0, 255, (20, 20, 3), np.uint8),
            "lidar": gym.spaces.Box(0, 1, (16,), np.float64),
        })
        action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 0.0, False, False, {"cost": 0.0}

    env = as_pixel_env(DictEnv(), size=20)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 20, 20)  # only the image, the lidar is dropped

    pend = gym.make("Pendulum-v1", render_mode="rgb_array")
    env = as_pixel_env(pend, size=32, cost=lambda obs, r, info: float(abs(obs[2]) > 4.0))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 32, 32) and obs.std() > 0  # a real rendered frame
    gym_check_env(env, skip_render_check=True)
    env.close()


def test_bad_inputs_raise_clear_errors(scripted_env_cls):
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        as_pixel_env(gym.make("Pendulum-v1"), cost=lambda *a: 0.0)  # vector obs, no rendering
    with pytest.raises(TypeError, match="Box action space"):
        as_pixel_env(gym.make("CartPole-v1", render_mode="rgb_array"))
    with pytest.raises(ValueError, match="size"):
        as_pixel_env(scripted_env_cls(), size=3)
    with pytest.raises(ValueError, match="size"):
        make_pixel_env("lbwrap/PixelHazard-v0", size=0)
    with pytest.raises(ValueError, match="action_repeat"):
        as_pixel_env(scripted_env_cls(), action_repeat=0)
    with pytest.raises(ValueError, match="pixels="):
        as_pixel_env(scripted_env_cls(), pixels="camera")
    with pytest.raises(gym.error.NameNotFound, match="Unknown env id"):
        make_pixel_env("NoSuchEnv-v0")
    with pytest.raises(ValueError, match="SafetyPointGoal1Vision-v0"):
        make_pixel_env("SafetyPointGoal1-v0")  # a vector task: suggest its vision twin


def test_adapter_passes_checkers(scripted_env_cls):
    env = as_pixel_env(scripted_env_cls(), size=16, action_repeat=2)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env)


# ----------------------------------------------------------------------------- PixelHazard
def test_pixel_hazard_through_make_pixel_env():
    env = make_pixel_env(lbwrap.PIXEL_HAZARD_ID, size=64, action_repeat=2)
    assert env.observation_space == gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env)
    obs_a, _ = env.reset(seed=7)
    obs_b, _ = env.reset(seed=7)
    obs_c, _ = env.reset(seed=8)
    assert np.array_equal(obs_a, obs_b) and not np.array_equal(obs_a, obs_c)
    env.close()


def test_pixel_hazard_cost_sums_under_action_repeat():
    env = make_pixel_env(lbwrap.PIXEL_HAZARD_ID, action_repeat=3)
    env.reset(seed=0)
    base = env.unwrapped
    hazard = base.hazards[0]
    base.robot_pos = hazard.copy()  # inside the hazard: every sub-step costs 1
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["cost"] == 3.0 and info["violations"] == 3
    env.close()


# ----------------------------------------------------------------------------- safety-gymnasium
def test_dataclass_patch_is_scoped():
    @dataclasses.dataclass
    class Plain:
        x: int = 0

    original = dataclasses._get_field
    with _ndarray_defaults_as_factories():
        @dataclasses.dataclass
        class WithArray:
            a: np.ndarray = np.zeros(2)  # noqa: RUF009 (the point of the test)

        one, two = WithArray(), WithArray()
        one.a[0] = 5.0
        assert two.a[0] == 0.0  # each instance gets its own copy
    assert dataclasses._get_field is original
    if sys.version_info >= (3, 11):
        with pytest.raises(ValueError, match="mutable default"):
            @dataclasses.dataclass
            class Rejected:
                a: np.ndarray = np.zeros(2)  # noqa: RUF009


def test_importing_safety_gymnasium_leaves_dataclasses_unpatched():
    code = (
        "import dataclasses; orig = dataclasses._get_field\n"
        "from lbwrap.envs import import_safety_gymnasium\n"
        "sg = import_safety_gymnasium()\n"
        "assert dataclasses._get_field is orig, 'dataclasses left patched'\n"
        "import os; print(os.environ['MUJOCO_GL'])\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "MUJOCO_GL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "egl"  # chosen when the user set no backend
    assert "reward functions were updated" not in out.stderr  # import is quiet


@pytest.fixture(scope="module")
def safety_env():
    env = make_pixel_env("SafetyPointGoal1Vision-v0", size=64, action_repeat=2)
    yield env
    env.close()


def test_safety_gym_vision_slice(safety_env):
    env = safety_env
    assert env.observation_space == gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)
    assert env.unwrapped.task.vision_env_conf.vision_size == (64, 64)  # rendered at 64 directly
    obs, info = env.reset(seed=3)
    assert obs.shape == (3, 64, 64) and obs.std() > 0 and info["cost"] == 0.0
    env.action_space.seed(0)
    for _ in range(30):
        obs, reward, _, _, info = env.step(env.action_space.sample())
        assert obs.shape == (3, 64, 64) and isinstance(reward, float)
        assert 0 <= info["violations"] <= 2 and info["cost"] >= 0.0
        assert (info["cost"] > 0) == (info["violations"] > 0)


def test_safety_gym_seeding_reproduces_layout(safety_env):
    first, _ = safety_env.reset(seed=11)
    again, _ = safety_env.reset(seed=11)
    other, _ = safety_env.reset(seed=12)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_safety_gym_passes_checkers(safety_env):
    gym_check_env(safety_env, skip_render_check=True)
    sb3_check_env(safety_env)


def test_safety_gym_cost_equals_sum_of_substeps():
    """Against the raw env stepped by hand with the same seed and actions."""
    from lbwrap.envs.safety_gym import make_safety_vision_env

    wrapped = make_pixel_env("SafetyPointGoal1Vision-v0", size=32, action_repeat=2)
    raw = make_safety_vision_env("SafetyPointGoal1Vision-v0", size=32)
    wrapped.reset(seed=5)
    raw.reset(seed=5)
    actions = np.random.default_rng(0).uniform(-1, 1, (40, 2))
    for a in actions:
        expected = 0.0
        for _ in range(2):
            _, _, c, _, _, _ = raw.step(a)
            expected += c
        _, _, _, _, info = wrapped.step(a)
        assert info["cost"] == pytest.approx(expected)
    wrapped.close()
    raw.close()
