"""Tests of the built-in numpy pixel env :mod:`lbwrap.envs.pixel_hazard`."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from lbwrap.envs.pixel_hazard import (
    GOAL_COLOUR,
    HAZARD_COLOUR,
    ROBOT_COLOUR,
    WALL_COLOUR,
    PixelHazardConfig,
    PixelHazardEnv,
)

REGISTERED_ID = "lbwrap/PixelHazard-v0"  # registered by lbwrap.envs (imported above)
_SPEC_WARNING = "not having a spec"  # gymnasium's checker cannot test other render modes


def _topdown_pixel(env: PixelHazardEnv, xy: np.ndarray) -> tuple[int, int]:
    """(row, col) of the topdown pixel that contains world point ``xy``."""
    half = env.config.arena_half
    px = 2 * half / env.config.size
    return int((half - xy[1]) // px), int((xy[0] + half) // px)


def _is(colour: np.ndarray, pixel: np.ndarray) -> bool:
    return bool(np.array_equal(pixel, colour))


def _run_checkers(env: gym.Env) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env)
        sb3_check_env(env, warn=True)
    return [str(w.message) for w in caught if _SPEC_WARNING not in str(w.message)]


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("view", ["topdown", "egocentric"])
def test_env_checkers_pass(view: str, level: int) -> None:
    env = PixelHazardEnv(render_mode="rgb_array", view=view, level=level)
    assert _run_checkers(env) == []
    env.close()


@pytest.mark.parametrize("view", ["topdown", "egocentric"])
def test_env_checkers_pass_via_gym_make(view: str) -> None:
    env = gym.make(REGISTERED_ID, render_mode="rgb_array", view=view, level=2)
    assert _run_checkers(env.unwrapped) == []
    env.close()


def test_spaces_and_reset_info() -> None:
    env = PixelHazardEnv(size=48)
    assert env.observation_space == gym.spaces.Box(0, 255, (48, 48, 3), np.uint8)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    obs, info = env.reset(seed=0)
    assert obs.shape == (48, 48, 3) and obs.dtype == np.uint8
    assert info == {"cost": 0.0, "goal_met": False}
    assert env.hazards.shape == (8, 2)
    assert PixelHazardEnv(level=2).num_hazards == 16
    assert PixelHazardEnv(level=2, num_hazards=3).num_hazards == 3
    assert PixelHazardEnv(config=PixelHazardConfig(level=0), size=32).config.size == 32


def _rollout(seed: int, view: str, steps: int = 50) -> list[np.ndarray]:
    env = PixelHazardEnv(view=view, level=2)
    obs, _ = env.reset(seed=seed)
    frames = [obs, env.hazards, env.goal_pos, env.robot_pos]
    actions = np.random.default_rng(123).uniform(-1.5, 1.5, size=(steps, 2))
    for a in actions:
        obs, reward, _, _, info = env.step(a)
        frames += [obs, np.array([reward, info["cost"], info["goal_met"]])]
    return frames


@pytest.mark.parametrize("view", ["topdown", "egocentric"])
def test_same_seed_same_layout_and_observations(view: str) -> None:
    a, b = _rollout(7, view), _rollout(7, view)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_different_seeds_different_layouts() -> None:
    env = PixelHazardEnv(level=1)
    layouts = []
    for seed in range(5):
        env.reset(seed=seed)
        layouts.append(np.concatenate([env.hazards.ravel(), env.goal_pos, env.robot_pos]))
    for i in range(5):
        for j in range(i + 1, 5):
            assert not np.allclose(layouts[i], layouts[j])


def test_layout_invariants_dense_level() -> None:
    env = PixelHazardEnv(level=2)
    cfg = env.config
    for seed in range(100):
        env.reset(seed=seed)
        hz, goal, robot = env.hazards, env.goal_pos, env.robot_pos
        assert np.all(np.abs(hz) <= cfg.arena_half - cfg.hazard_radius)
        d = np.linalg.norm(hz[:, None] - hz[None], axis=-1) + np.eye(len(hz)) * 10
        assert d.min() >= 1.6 * cfg.hazard_radius - 1e-12  # overlap a little at most
        assert np.linalg.norm(hz - goal, axis=1).min() >= cfg.hazard_radius + cfg.goal_radius
        assert env.hazard_distance() >= cfg.robot_radius  # robot disk outside every hazard
        assert np.linalg.norm(robot - goal) > cfg.goal_radius + cfg.robot_radius
        assert np.all(np.abs(robot) <= cfg.arena_half - cfg.robot_radius)


def _outside_point(env: PixelHazardEnv, k: int, gap: float) -> tuple[np.ndarray, np.ndarray]:
    """A point ``gap`` outside hazard ``k`` and outside all hazards, plus the unit vector to it."""
    centre = env.hazards[k]
    r = env.config.hazard_radius
    bound = env.config.arena_half - env.config.robot_radius
    for angle in np.linspace(0, 2 * np.pi, 16, endpoint=False):
        u = np.array([math.cos(angle), math.sin(angle)])
        p = centre + (r + gap) * u
        if np.all(np.abs(p) <= bound) and np.linalg.norm(env.hazards - p, axis=1).min() > r:
            return p, u
    raise AssertionError("no free direction around the hazard")


def test_cost_is_one_exactly_when_entering_a_hazard() -> None:
    env = PixelHazardEnv(level=1)
    env.reset(seed=3)
    step = env.config.max_step
    p, u = _outside_point(env, 0, gap=0.6 * step)
    env.robot_pos = p
    assert env.hazard_distance() > 0
    _, _, _, _, info = env.step([0.0, 0.0])
    assert info["cost"] == 0.0
    _, _, _, _, info = env.step(-u)  # moves 0.05 towards the centre: 0.03 past the edge
    assert info["cost"] == 1.0
    assert env.hazard_distance() == pytest.approx(-0.4 * step)
    _, _, _, _, info = env.step([0.0, 0.0])  # staying inside keeps costing
    assert info["cost"] == 1.0
    env.step(u)
    _, _, _, _, info = env.step(u)
    assert info["cost"] == 0.0


def test_cost_matches_hazard_distance_on_random_rollout() -> None:
    env = PixelHazardEnv(level=2)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    costs = []
    for _ in range(400):
        _, _, terminated, _, info = env.step(rng.uniform(-1, 1, 2))
        assert not terminated
        assert info["cost"] == float(env.hazard_distance() < 0)
        assert set(info) == {"cost", "goal_met"}
        costs.append(info["cost"])
    assert set(costs) <= {0.0, 1.0}


def test_level_zero_never_costs() -> None:
    env = PixelHazardEnv(level=0)
    env.reset(seed=1)
    assert env.hazards.shape == (0, 2)
    assert env.hazard_distance() == math.inf
    rng = np.random.default_rng(1)
    for _ in range(500):
        _, _, _, _, info = env.step(rng.uniform(-1, 1, 2))
        assert info["cost"] == 0.0


def test_reward_for_progress_and_goal_bonus() -> None:
    env = PixelHazardEnv(level=0)
    env.reset(seed=5)
    step, rg = env.config.max_step, env.config.goal_radius
    goal = env.goal_pos
    # Straight towards the goal: reward = progress = max_step.
    direction = goal - env.robot_pos
    _, reward, _, _, info = env.step(direction / np.linalg.norm(direction))
    assert reward == pytest.approx(step)
    assert not info["goal_met"]
    # Away from it: negative reward.
    _, reward, _, _, _ = env.step(-direction / np.linalg.norm(direction))
    assert reward == pytest.approx(-step)
    # Just outside the goal circle, then step in: progress + bonus, new goal far enough away.
    u = -goal / max(np.linalg.norm(goal), 1e-9)  # towards the arena centre: stays inside
    env.robot_pos = goal + (rg + 0.5 * step) * u
    _, reward, _, _, info = env.step(-u)
    assert info["goal_met"] is True
    assert reward == pytest.approx(step + env.config.reward_goal)
    new_goal = env.goal_pos
    assert not np.allclose(new_goal, goal)
    assert np.linalg.norm(new_goal - env.robot_pos) > rg + env.config.robot_radius
    # The next progress reward is measured against the new goal.
    direction = new_goal - env.robot_pos
    _, reward, _, _, info = env.step(direction / np.linalg.norm(direction))
    assert reward == pytest.approx(step) and not info["goal_met"]


def test_robot_visible_and_moves_topdown() -> None:
    env = PixelHazardEnv(level=0, size=64, render_mode="rgb_array", view="topdown")
    env.reset(seed=2)
    env.robot_pos = [0.0, 0.0]
    obs = env.render()
    r, c = _topdown_pixel(env, env.robot_pos)
    assert _is(ROBOT_COLOUR, obs[r, c])
    red_before = np.argwhere(np.all(obs == ROBOT_COLOUR, axis=-1)).mean(0)
    for _ in range(4):
        obs2, *_ = env.step([1.0, 0.0])  # +0.2 world units in x = ~4.3 px right
    assert np.any(obs2 != obs)
    red_after = np.argwhere(np.all(obs2 == ROBOT_COLOUR, axis=-1)).mean(0)
    assert red_after[1] - red_before[1] == pytest.approx(0.2 * 64 / 3, abs=1.0)
    assert red_after[0] == pytest.approx(red_before[0], abs=0.5)
    r, c = _topdown_pixel(env, env.robot_pos)
    assert _is(ROBOT_COLOUR, obs2[r, c])


@pytest.mark.parametrize("size", [16, 32, 64, 100])
def test_hazards_goal_robot_drawn_topdown(size: int) -> None:
    env = PixelHazardEnv(level=2, size=size, view="topdown")
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        for h in env.hazards:
            assert _is(HAZARD_COLOUR, obs[_topdown_pixel(env, h)])
        assert _is(GOAL_COLOUR, obs[_topdown_pixel(env, env.goal_pos)])
        assert _is(ROBOT_COLOUR, obs[_topdown_pixel(env, env.robot_pos)])


def test_egocentric_view_follows_robot() -> None:
    env = PixelHazardEnv(level=1, view="egocentric", size=64, render_mode="rgb_array")
    obs, _ = env.reset(seed=4)
    s = env.config.size
    centre = obs[s // 2 - 1 : s // 2 + 1, s // 2 - 1 : s // 2 + 1].reshape(-1, 3)
    assert all(_is(ROBOT_COLOUR, p) for p in centre)
    # A hazard inside the window appears at its position relative to the robot.
    scale = s / (2 * env.config.view_radius)
    env.robot_pos = env.hazards[0] + np.array([0.5, 0.0])
    frame = env.render()
    rel = env.hazards[0] - env.robot_pos  # (-0.5, 0): 16 px left of the centre
    row, col = int(s / 2 - rel[1] * scale), int(s / 2 + rel[0] * scale)
    assert _is(HAZARD_COLOUR, frame[row, col])
    # Near a corner, the outside of the arena is drawn as wall.
    env.robot_pos = [10.0, 10.0]  # clipped to the top-right corner
    frame = env.render()
    assert _is(WALL_COLOUR, frame[0, -1])
    assert np.all(frame[: s // 2 - 8, :] == WALL_COLOUR)  # everything above the arena
    # Moving changes the image and the robot stays at the centre.
    env.robot_pos = [0.0, 0.0]
    before = env.render()
    obs, *_ = env.step([1.0, 1.0])
    assert np.any(obs != before)
    assert _is(ROBOT_COLOUR, obs[s // 2, s // 2])
    np.testing.assert_array_equal(env.render(), obs)


def test_action_sanitising_and_inertia() -> None:
    env = PixelHazardEnv(level=0)
    env.reset(seed=0)
    env.robot_pos = [0.0, 0.0]
    for action in ([100.0, -100.0], [np.nan, 1.0], [np.inf, -np.inf], np.float32([3, 0])):
        before = env.robot_pos
        obs, reward, _, _, _ = env.step(action)
        assert np.all(np.isfinite(env.robot_pos)) and math.isfinite(reward)
        assert np.linalg.norm(env.robot_pos - before) <= env.config.max_step + 1e-12
        assert env.observation_space.contains(obs)
    with pytest.raises(ValueError, match="2 entries"):
        env.step([1.0, 0.0, 0.0])
    # Walls clip the position.
    for _ in range(100):
        env.step([1.0, 1.0])
    bound = env.config.arena_half - env.config.robot_radius
    np.testing.assert_allclose(env.robot_pos, [bound, bound])
    # Inertia smooths the velocity.
    env = PixelHazardEnv(level=0, inertia=0.5)
    env.reset(seed=0)
    env.robot_pos = [0.0, 0.0]
    env.step([1.0, 0.0])
    assert env.robot_pos[0] == pytest.approx(0.5 * env.config.max_step)
    env.step([1.0, 0.0])
    assert env.robot_pos[0] == pytest.approx(1.25 * env.config.max_step)


def test_truncation_at_max_episode_steps() -> None:
    env = PixelHazardEnv(max_episode_steps=5)
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]
    env.reset()
    assert env.elapsed_steps == 0
    assert env.step([0, 0])[3] is False


def test_truncation_via_gym_make_without_time_limit() -> None:
    env = gym.make(REGISTERED_ID, max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[3] for _ in range(3)]
    assert flags == [False, False, True]
    assert PixelHazardEnv().config.max_episode_steps == 500


def test_render_modes_and_order() -> None:
    env = PixelHazardEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step([0.0, 0.0])
    obs, _ = env.reset(seed=0)
    assert env.render() is None
    env = PixelHazardEnv(render_mode="rgb_array")
    assert env.render() is None
    obs, _ = env.reset(seed=0)
    frame = env.render()
    np.testing.assert_array_equal(frame, obs)
    frame[:] = 0  # a copy: the env is unaffected
    np.testing.assert_array_equal(env.render(), obs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 8}, "size"),
        ({"size": 64.0}, "size"),
        ({"level": 3}, "level"),
        ({"level": True}, "level"),
        ({"num_hazards": -1}, "num_hazards"),
        ({"num_hazards": 2.5}, "num_hazards"),
        ({"view": "first_person"}, "view"),
        ({"view_radius": 0.0}, "view_radius"),
        ({"hazard_radius": -0.1}, "hazard_radius"),
        ({"goal_radius": 2.0}, "goal_radius"),
        ({"max_step": float("nan")}, "max_step"),
        ({"inertia": 1.0}, "inertia"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
        ({"reward_goal": float("inf")}, "reward_goal"),
        ({"render_mode": "human"}, "render_mode"),
        ({"colour": "red"}, "unknown"),
        ({"view": "egocentric", "view_radius": 1e-4}, "view_radius"),
    ],
)
def test_invalid_kwargs_raise_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PixelHazardEnv(**kwargs)


def test_impossible_layout_raises() -> None:
    env = PixelHazardEnv(num_hazards=200)
    with pytest.raises(RuntimeError, match="could not place"):
        env.reset(seed=0)
