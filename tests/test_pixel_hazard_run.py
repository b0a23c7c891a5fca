"""Tests of the run task :mod:`lbwrap.envs.pixel_hazard_run` and its scripted references."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from test_pixel_hazard import _run_checkers  # the same env checkers as PixelHazard's

import lbwrap
from lbwrap.envs.pixel_hazard import HAZARD_COLOUR, ROBOT_COLOUR, WALL_COLOUR
from lbwrap.envs.pixel_hazard_run import PixelHazardRunConfig, PixelHazardRunEnv
from lbwrap.eval.run_reference import HazardAvoider, StraightRunner, run_reference_episode


@pytest.mark.parametrize("level", [0, 1, 2])
def test_env_checkers_pass(level: int) -> None:
    assert _run_checkers(PixelHazardRunEnv(render_mode="rgb_array", level=level)) == []


def test_registered_id_and_pixel_contract() -> None:
    env = gym.make(lbwrap.PIXEL_HAZARD_RUN_ID, render_mode="rgb_array", level=2)
    assert isinstance(env.unwrapped, PixelHazardRunEnv)
    assert _run_checkers(env.unwrapped) == []
    pixel = lbwrap.make_pixel_env(lbwrap.PIXEL_HAZARD_RUN_ID, size=32, action_repeat=2, level=2)
    assert pixel.observation_space.shape == (3, 32, 32)  # channel-first, as lbwrap feeds torch
    assert pixel.observation_space.dtype == np.uint8
    obs, info = pixel.reset(seed=0)
    assert obs.shape == (3, 32, 32) and info["cost"] == 0.0
    _, reward, _, _, info = pixel.step(np.array([1.0, 0.0], np.float32))
    assert reward == pytest.approx(2 * PixelHazardRunConfig().max_step)  # two env steps
    assert info["cost"] == 0.0 and info["violations"] == 0


def test_same_seed_same_episode_different_seed_different_layout() -> None:
    def rollout(seed: int) -> tuple[list[np.ndarray], np.ndarray]:
        env = PixelHazardRunEnv(level=2)
        frames = [env.reset(seed=seed)[0]]
        env.action_space.seed(seed)
        for _ in range(40):
            frames.append(env.step(env.action_space.sample())[0])
        return frames, env.hazards_between(0.0, 20.0)

    frames_a, hazards_a = rollout(3)
    frames_b, hazards_b = rollout(3)
    for a, b in zip(frames_a, frames_b):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(hazards_a, hazards_b)
    _, hazards_c = rollout(4)
    assert hazards_a.shape != hazards_c.shape or not np.allclose(hazards_a, hazards_c)


def test_layout_depends_on_the_seed_only_not_on_the_trajectory() -> None:
    env = PixelHazardRunEnv(level=2)
    env.reset(seed=11)
    reference = env.hazards_between(-5.0, 80.0)
    env.reset(seed=11)
    for _ in range(300):  # forwards, far enough to evict cached chunks, then backwards
        env.step([1.0, 0.3])
    for _ in range(100):
        env.step([-1.0, -0.2])
    np.testing.assert_array_equal(env.hazards_between(-5.0, 80.0), reference)


def test_layout_invariants() -> None:
    cfg = PixelHazardRunConfig(level=2)
    env = PixelHazardRunEnv(config=cfg)
    env.reset(seed=0)
    assert env.hazards_between(-50.0, cfg.clear_start - 1e-9).shape == (0, 2)
    for k in range(1, 200):
        chunk = env.hazards_between(k * cfg.chunk_length, (k + 1) * cfg.chunk_length - 1e-12)
        assert chunk.shape == (2, 2)
        assert np.all(np.abs(chunk[:, 1]) <= cfg.corridor_half - cfg.hazard_radius)
        gap = np.linalg.norm(chunk[0] - chunk[1])
        assert gap >= 1.6 * cfg.hazard_radius
    env = PixelHazardRunEnv(level=0)
    env.reset(seed=0)
    assert env.hazards_between(-50.0, 50.0).shape == (0, 2)
    assert PixelHazardRunEnv(level=0, hazards_per_chunk=3).hazards_per_chunk == 3


def test_cost_is_one_exactly_inside_a_hazard_and_reward_is_progress() -> None:
    env = PixelHazardRunEnv(level=2)
    env.reset(seed=1)
    env.action_space.seed(1)
    costs = 0
    for _ in range(500):
        x_before = env.robot_pos[0]
        action = env.action_space.sample()
        action[0] = abs(action[0])  # drift forwards through the field
        _, reward, terminated, _, info = env.step(action)
        assert not terminated
        assert reward == pytest.approx(env.robot_pos[0] - x_before)
        assert info["cost"] == float(env.hazard_distance() < 0.0)
        costs += info["cost"]
    assert costs > 0  # the rollout did cross hazards, so both branches were tested


def test_walls_clip_the_robot_and_are_drawn() -> None:
    env = PixelHazardRunEnv(level=0)
    obs, _ = env.reset(seed=0)
    for _ in range(60):
        obs, *_ = env.step([0.0, 1.0])
    cfg = env.config
    assert env.robot_pos[1] == pytest.approx(cfg.corridor_half - cfg.robot_radius)
    assert np.all(obs[0] == WALL_COLOUR)  # the top rows lie beyond the wall
    centre = obs[cfg.size // 2 - 1 : cfg.size // 2 + 1, cfg.size // 2 - 1 : cfg.size // 2 + 1]
    assert np.all(centre == ROBOT_COLOUR)  # egocentric: the robot stays in the middle


def test_hazards_ahead_are_visible() -> None:
    env = PixelHazardRunEnv(level=2)
    env.reset(seed=0)
    seen = 0
    for _ in range(200):
        obs, *_ = env.step([1.0, 0.0])
        pos = env.robot_pos
        visible = env.hazards_between(pos[0] - 0.8, pos[0] + 0.8)
        visible = visible[np.abs(visible[:, 1] - pos[1]) < 0.8]
        if len(visible):
            seen += 1
            assert np.any(np.all(obs == HAZARD_COLOUR, axis=-1))
    assert seen > 0


def test_truncation_and_step_before_reset() -> None:
    env = PixelHazardRunEnv(max_episode_steps=3)
    with pytest.raises(RuntimeError, match="reset"):
        env.step([0.0, 0.0])
    env.reset(seed=0)
    assert [env.step([1.0, 0.0])[3] for _ in range(3)] == [False, False, True]
    with pytest.raises(ValueError, match="2 entries"):
        env.step([1.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"level": 3}, "level"),
        ({"hazards_per_chunk": -1}, "hazards_per_chunk"),
        ({"size": 8}, "size"),
        ({"chunk_length": 0.0}, "chunk_length"),
        ({"clear_start": -1.0}, "clear_start"),
        ({"hazard_radius": 1.5}, "hazard_radius"),
        ({"inertia": 1.0}, "inertia"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
        ({"render_mode": "human"}, "render_mode"),
        ({"goal_radius": 0.1}, "unknown"),
    ],
)
def test_invalid_kwargs_raise_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PixelHazardRunEnv(**kwargs)


def test_scripted_references_state_the_task() -> None:
    """A hazard-blind straight line violates; the privileged avoider keeps most of the return."""
    env = PixelHazardRunEnv(level=2, max_episode_steps=300)
    straight = run_reference_episode(env, StraightRunner(env), seed=1000)
    avoider = run_reference_episode(env, HazardAvoider(env), seed=1000)
    top = 300 * env.config.max_step
    assert straight["return"] == pytest.approx(top)
    assert straight["violations"] > 0
    assert avoider["violations"] == 0
    assert avoider["return"] >= 0.85 * top
    with pytest.raises(TypeError, match="PixelHazardRun"):
        HazardAvoider(lbwrap.PixelHazardEnv())
