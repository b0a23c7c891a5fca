"""Under action repeat, safety-gymnasium vision tasks render only the frame the agent sees:
frames, rewards, costs and episode ends are unchanged, the camera renders once per agent step."""

from __future__ import annotations

import numpy as np
import pytest

import lbwrap

ENV = "SafetyPointGoal1Vision-v0"


def rollout(skip: bool, steps: int, **kwargs) -> tuple[list, int]:
    env = lbwrap.make_pixel_env(ENV, size=32, action_repeat=2, **kwargs)
    adapter = env
    while not hasattr(adapter, "skip_substep_observations"):
        adapter = adapter.env
    adapter.skip_substep_observations = skip
    task = env.unwrapped.task
    renders = {"n": 0}
    render = task._obs_vision

    def counted():
        renders["n"] += 1
        return render()

    task._obs_vision = counted
    rng = np.random.default_rng(3)
    obs, _ = env.reset(seed=7)
    out = [(obs, 0.0, 0.0, False, False)]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(
            rng.uniform(-1, 1, 2).astype(np.float32))
        out.append((obs, reward, info["cost"], terminated, truncated))
        if terminated or truncated:
            obs, _ = env.reset(seed=8)
            out.append((obs, 0.0, 0.0, False, False))
    env.close()
    return out, renders["n"]


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (fa, ra, ca, ta, ua), (fb, rb, cb, tb, ub) in zip(a, b):
        np.testing.assert_array_equal(fa, fb)
        assert (ra, ca, ta, ua) == (rb, cb, tb, ub)


def test_skipping_substep_renders_changes_nothing_but_the_render_count():
    skipped, n_skip = rollout(True, 30)
    full, n_full = rollout(False, 30)
    assert_same(skipped, full)
    assert n_skip == 31 and n_full == 61  # reset + one per agent step vs. one per env step


@pytest.mark.parametrize("max_episode_steps", [5])
def test_an_episode_ending_on_a_skipped_substep_returns_its_real_last_frame(max_episode_steps):
    """An odd episode length ends inside a repeat: the frame returned is the final state's."""
    skipped, _ = rollout(True, 8, max_episode_steps=max_episode_steps)
    full, _ = rollout(False, 8, max_episode_steps=max_episode_steps)
    assert any(step[4] for step in full), "the episode should have been truncated"
    assert_same(skipped, full)
