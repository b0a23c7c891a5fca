"""``LatentObservation``: pixels in, the world model's filtered latent features out."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lbwrap.latent_tracker import LatentTracker
from lbwrap.safety_model import LatentSafetyModel

__all__ = ["LatentObservation", "find_latent_observation"]


class LatentObservation(gym.Wrapper):
    """Replace pixel observations with ``cat(deter, stoch)`` of the RSSM posterior (float32 Box).

    The filter state is reset at every ``reset()``; each ``step(action)`` feeds the *executed*
    action (put a :class:`~lbwrap.wrappers.BarrierShield` outside this wrapper and it passes the
    shielded action in) and the new frame to the world model.

    Info contract (what :class:`lbwrap.sb3.CoTrainCallback` reads): ``info["pixels"]`` is the
    frame behind the returned observation (the terminal frame at an episode's end), and the
    first ``step`` of an episode also carries ``info["episode_start_pixels"]`` (the reset frame;
    SB3 auto-resets envs and keeps reset infos out of the step infos). ``executed_action`` is the
    action the env received.

    Use it in the main process (directly or in ``DummyVecEnv``): in ``SubprocVecEnv`` workers it
    would hold a copy of the model that never learns — use
    :class:`lbwrap.sb3.VecLatentObservation` there.
    """

    def __init__(self, env: gym.Env, safety: LatentSafetyModel) -> None:
        super().__init__(env)
        if not isinstance(safety, LatentSafetyModel):
            raise TypeError(f"safety must be a LatentSafetyModel, got {type(safety).__name__}.")
        safety.check_spaces(env.observation_space, env.action_space)
        self.safety = safety
        self.tracker = LatentTracker(safety.world_model, num_envs=1)
        dim = self.tracker.feature_dim
        self.observation_space = spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self._channel_last = env.observation_space.shape[-1] == 3 and env.observation_space.shape[0] != 3
        self._episode_start_pixels: np.ndarray | None = None

    @property
    def spec(self) -> None:  # type: ignore[override]
        """``None``: an env holding a live, learning model cannot be re-made from a spec (the
        spec would deep-copy the model into a frozen twin). Build it again with the same model."""
        return None

    def _chw(self, frame: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(frame.transpose(2, 0, 1)) if self._channel_last else frame

    @property
    def latent_state(self):
        """The current posterior :class:`~lbwrap.latent_state.LatentState` (batch of 1)."""
        return self.tracker.state

    @property
    def latent_embed(self):
        """(1, E) encoder embedding of the latest frame (what the action barrier reads)."""
        return self.tracker.embed

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        frame, info = self.env.reset(seed=seed, options=options)
        frame = self._chw(np.asarray(frame))
        obs = self.tracker.observe(frame[None], None, np.ones(1, bool))[0]
        info = dict(info)
        info["pixels"] = frame
        self._episode_start_pixels = frame
        return obs, info

    def step(self, action: Any):
        action = np.asarray(action, dtype=np.float32)
        frame, reward, terminated, truncated, info = self.env.step(action)
        frame = self._chw(np.asarray(frame))
        clipped = np.clip(action, self.action_space.low, self.action_space.high)
        obs = self.tracker.observe(frame[None], clipped[None], np.zeros(1, bool))[0]
        info = dict(info)
        info["pixels"] = frame
        if self._episode_start_pixels is not None:
            info["episode_start_pixels"] = self._episode_start_pixels
            self._episode_start_pixels = None
        info.setdefault("executed_action", clipped)
        return obs, reward, terminated, truncated, info


def find_latent_observation(env: gym.Env) -> LatentObservation:
    """The :class:`LatentObservation` inside ``env``'s wrapper chain, or a clear error."""
    current: Any = env
    while isinstance(current, gym.Wrapper):
        if isinstance(current, LatentObservation):
            return current
        current = current.env
    raise ValueError(
        "This wrapper needs a LatentObservation inside it: "
        "env = BarrierShield(LatentObservation(pixel_env, safety), safety)."
    )
