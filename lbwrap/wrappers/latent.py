"""``LatentObservation``: pixels in, the world model's filtered latent features out."""

from __future__ import annotations

from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lbwrap.latent_tracker import LatentTracker
from lbwrap.safety_model import LatentSafetyModel, as_action_batch

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

    Bad input is refused with a ``ValueError`` that names the fix, never converted: frames must
    be uint8 RGB images (0-255) of the model's size — float images (in [0, 1] or 0-255, also
    when the observation space claims uint8) and NaN/inf pixels raise (see
    :mod:`lbwrap.latent_tracker`); ``step`` takes an action of shape ``(A,)`` with finite values
    and raises *before* the env is stepped otherwise (a NaN action is never executed or fed to
    the world model).
    """

    def __init__(self, env: gym.Env, safety: LatentSafetyModel) -> None:
        _check_single_env(env, "LatentObservation", "lbwrap.VecLatentObservation(vec_env, safety)")
        super().__init__(env)
        if not isinstance(safety, LatentSafetyModel):
            raise TypeError(f"safety must be a LatentSafetyModel, got {type(safety).__name__}.")
        safety.check_spaces(env.observation_space, env.action_space)
        self.safety = safety
        self.tracker = LatentTracker(safety.world_model, num_envs=1)
        dim = self.tracker.feature_dim
        self.observation_space = spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        obs_shape = env.observation_space.shape
        assert obs_shape is not None  # check_spaces: an image space
        self._channel_last = obs_shape[-1] == 3 and obs_shape[0] != 3
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
        action = as_action_batch(action, 1, self.safety.action_dim, single=True,
                                 what="LatentObservation.step: the action")[0]
        frame, reward, terminated, truncated, info = self.env.step(action)
        frame = self._chw(np.asarray(frame))
        box = cast(spaces.Box, self.action_space)  # check_spaces: a Box
        clipped = np.clip(action, box.low, box.high)
        obs = self.tracker.observe(frame[None], clipped[None], np.zeros(1, bool))[0]
        info = dict(info)
        info["pixels"] = frame
        if self._episode_start_pixels is not None:
            info["episode_start_pixels"] = self._episode_start_pixels
            self._episode_start_pixels = None
        info.setdefault("executed_action", clipped)
        return obs, reward, terminated, truncated, info


def _is_vec_env(env: Any) -> bool:
    """An SB3 ``VecEnv`` (duck-typed, so that this module never imports SB3)."""
    return not isinstance(env, gym.Env) and all(
        hasattr(env, name) for name in ("num_envs", "step_async", "step_wait"))


def _check_single_env(env: Any, wrapper: str, vec_twin: str) -> None:
    """``TypeError`` naming the VecEnv twin when ``env`` is not one Gymnasium env."""
    if _is_vec_env(env):
        raise TypeError(
            f"{wrapper} wraps one gymnasium.Env, got the VecEnv {type(env).__name__}: wrap the "
            f"VecEnv with {vec_twin} instead (it batches all envs in the main process).")
    if isinstance(env, gym.vector.VectorEnv):
        raise TypeError(
            f"{wrapper} wraps one gymnasium.Env, got the Gymnasium vector env "
            f"{type(env).__name__}: build an SB3 VecEnv (DummyVecEnv / SubprocVecEnv) of the "
            f"single envs and wrap it with {vec_twin}.")
    if not isinstance(env, gym.Env):
        raise TypeError(f"{wrapper} wraps a gymnasium.Env, got {type(env).__name__}: build one "
                        "with lbwrap.make_pixel_env(env_id) or lbwrap.as_pixel_env(env).")


def find_latent_observation(env: gym.Env, wrapper: str = "This wrapper",
                            vec_twin: str = "the lbwrap.sb3 VecEnv wrappers") -> LatentObservation:
    """The :class:`LatentObservation` inside ``env``'s wrapper chain, or a clear error."""
    _check_single_env(env, wrapper, vec_twin)
    current: Any = env
    while isinstance(current, gym.Wrapper):
        if isinstance(current, LatentObservation):
            return current
        current = current.env
    raise ValueError(
        f"{wrapper} needs a LatentObservation inside it: "
        "env = BarrierShield(LatentObservation(pixel_env, safety), safety)."
    )
