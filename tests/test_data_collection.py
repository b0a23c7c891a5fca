"""Episode collection: the random policy and the scripted, privileged hazard visitor."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ScriptedCostEnv

import lbwrap
from lbwrap.eval import COLLECTION_POLICIES, HazardVisitor, collect_episodes
from lbwrap.eval.barrier_accuracy import random_episodes


def unsafe_fraction(episodes) -> float:
    return float((np.concatenate([ep["cost"] for ep in episodes]) > 0).mean())


def test_random_episodes_is_collect_episodes_with_the_random_policy():
    env = lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=32)
    old = random_episodes(env, 300, 3, max_len=70)
    new = collect_episodes(env, 300, 3, max_len=70, policy="random")
    assert len(old) == len(new) == 5
    for a, b in zip(old, new, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_episodes_follow_the_replay_convention():
    env = lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=32)
    episodes = collect_episodes(env, 250, 0, max_len=100, policy="hazard-visitor")
    assert sum(len(ep["obs"]) for ep in episodes) == 250
    for ep in episodes:
        assert ep["is_first"][0] and not ep["is_first"][1:].any()
        np.testing.assert_array_equal(ep["action"][0], 0.0)
        assert ep["obs"].dtype == np.uint8 and ep["obs"].shape[1:] == (3, 32, 32)
        assert np.all(np.abs(ep["action"]) <= 1.0)


def test_hazard_visitor_enters_hazards_far_more_often_than_random_on_pixel_hazard():
    env = lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=32)
    random_share = unsafe_fraction(collect_episodes(env, 1000, 0, policy="random"))
    visitor_share = unsafe_fraction(collect_episodes(env, 1000, 0, policy="hazard-visitor"))
    # measured at 2000 steps: random 0.066, visitor 0.48
    assert visitor_share > 0.25
    assert visitor_share > 3 * random_share


def test_hazard_visitor_enters_hazards_on_safety_point_goal1_vision():
    env = lbwrap.make_pixel_env("SafetyPointGoal1Vision-v0", size=32, action_repeat=2)
    try:
        episodes = collect_episodes(env, 300, 0, max_len=100, policy="hazard-visitor")
    finally:
        env.close()
    # measured over 4000 steps: 19 % unsafe (a random policy: 1.5-1.8 %)
    assert unsafe_fraction(episodes) > 0.05


def test_bad_policy_name_and_unsupported_envs_raise_clear_errors():
    env = lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=32)
    with pytest.raises(ValueError, match="unknown collection policy 'greedy'"):
        collect_episodes(env, 10, 0, policy="greedy")  # type: ignore[arg-type]
    assert set(COLLECTION_POLICIES) == {"random", "hazard-visitor"}
    no_hazards = lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=32, level=0)
    with pytest.raises(ValueError, match="no hazards"):
        HazardVisitor(no_hazards, np.random.default_rng(0))
    with pytest.raises(ValueError, match="PixelHazard or a safety-gymnasium task"):
        HazardVisitor(ScriptedCostEnv(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="noise"):
        HazardVisitor(env, np.random.default_rng(0), noise=float("nan"))


def test_missing_cost_in_info_is_named():
    with pytest.raises(KeyError, match="info has no 'cost'"):
        collect_episodes(ScriptedCostEnv(cost_key=""), 5, 0)


def test_hazard_visitor_refuses_robots_other_than_point():
    env = lbwrap.make_pixel_env("SafetyCarGoal1Vision-v0", size=32, action_repeat=2)
    try:
        with pytest.raises(ValueError, match="Point robot only.*Car"):
            HazardVisitor(env, np.random.default_rng(0))
    finally:
        env.close()
