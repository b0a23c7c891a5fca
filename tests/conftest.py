"""Shared fixtures. Fakes defined here are only for unit tests; each is backed by a test of the
real thing (PixelHazard and SafetyPointGoal1Vision-v0 appear in the suite too)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import KVWriter

# Tiny nets: one intra-op thread is faster and avoids contention on a shared 2-core CPU.
torch.set_num_threads(1)


class ScriptedCostEnv(gym.Env):
    """Image env whose per-step cost follows a script, and which records the actions it received.

    obs: (16, 16, 3) uint8 image whose pixels all equal the step count (mod 256).
    """

    metadata = {"render_modes": ["rgb_array"]}  # noqa: RUF012

    def __init__(self, costs=(0.0,), terminate_at: int | None = None, cost_key: str = "cost",
                 six_tuple: bool = False, episode_length: int = 50):
        self.observation_space = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.costs = list(costs)
        self.terminate_at = terminate_at
        self.cost_key = cost_key
        self.six_tuple = six_tuple
        self.episode_length = episode_length
        self.t = 0
        self.received_actions: list[np.ndarray] = []

    def _obs(self):
        return np.full((16, 16, 3), self.t % 256, np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.received_actions.append(np.array(action, copy=True))
        cost = self.costs[self.t % len(self.costs)]
        self.t += 1
        reward = 1.0
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        truncated = self.t >= self.episode_length
        if self.six_tuple:
            return self._obs(), reward, cost, terminated, truncated, {}
        info = {self.cost_key: cost} if self.cost_key else {}
        return self._obs(), reward, terminated, truncated, info


@pytest.fixture
def scripted_env_cls():
    return ScriptedCostEnv


# ----------------------------------------------------------------------------- tiny safety models
TINY_WORLD_MODEL = {"cnn_depth": 4, "deter_dim": 16, "stoch_dim": 4, "hidden_dim": 16,
                    "head_hidden_dim": 16}


def make_tiny_safety(env, **overrides):
    """A LatentSafetyModel small enough for unit tests (32x32 or 64x64 images)."""
    from lbwrap.barrier import BarrierConfig
    from lbwrap.safety_model import LatentSafetyModel

    params = {
        "seed": 0, "device": "cpu", "batch_size": 4, "seq_len": 8, "replay_capacity": 4000,
        "world_model_overrides": TINY_WORLD_MODEL,
        "barrier": BarrierConfig(hidden_dim=16, imagine_starts=16, imagine_horizon=3),
    }
    params.update(overrides)
    return LatentSafetyModel.for_env(env, **params)


@pytest.fixture
def tiny_safety():
    return make_tiny_safety


class Recorder(KVWriter):
    """Keeps every dump of the SB3 logger."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def write(self, key_values, key_excluded, step=0) -> None:
        self.records.append(dict(key_values))

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- the example script
EXAMPLE_SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_sac_shielded.py"


def import_example(module_name: str):
    """Import examples/train_sac_shielded.py as ``module_name``; yields it, then unregisters it."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(module_name, EXAMPLE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and tyro resolve annotations through it
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)

