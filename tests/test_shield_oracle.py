"""benchmarks/shield_oracle.py: its privileged truth matches the real env, its AUC is the textbook one."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from shield_oracle import auc, sanitise, truly_unsafe

from lbwrap.envs.pixel_hazard_run import PixelHazardRunEnv


def test_truly_unsafe_predicts_the_real_env_step_for_step() -> None:
    env = PixelHazardRunEnv(level=2)
    rng = np.random.default_rng(0)
    agree = unsafe_seen = 0
    for episode in range(3):
        env.reset(seed=episode)
        for _ in range(150):
            # mostly forward, sometimes out of the box, so that hazards are met and clipping runs
            action = np.array([rng.uniform(0.2, 1.5), rng.uniform(-1.5, 1.5)])
            predicted = bool(truly_unsafe(env, action[None], 2)[0])
            costs = [env.step(action)[4]["cost"] for _ in range(2)]
            actual = max(costs) > 0
            agree += predicted == actual
            unsafe_seen += actual
    assert unsafe_seen > 20  # the check saw hazards
    assert agree == 3 * 150


def test_sanitise_matches_the_env_rule() -> None:
    out = sanitise(np.array([[2.0, 0.0], [1.0, 1.0], [0.3, -0.4], [np.nan, 0.5]]))
    np.testing.assert_allclose(out[0], [1.0, 0.0])
    np.testing.assert_allclose(np.linalg.norm(out[1]), 1.0)
    np.testing.assert_allclose(out[2], [0.3, -0.4])
    np.testing.assert_allclose(out[3], [0.0, 0.5])


def test_auc_ranks_and_ties() -> None:
    labels = np.array([False, False, True, True])
    assert auc(np.array([1.0, 2.0, 3.0, 4.0]), labels) == 1.0
    assert auc(np.array([4.0, 3.0, 2.0, 1.0]), labels) == 0.0
    assert auc(np.ones(4), labels) == 0.5
    assert auc(np.array([1.0, 3.0, 2.0, 4.0]), labels) == 0.75
    assert np.isnan(auc(np.ones(3), np.zeros(3, bool)))
