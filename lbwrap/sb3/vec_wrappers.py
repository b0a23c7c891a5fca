"""VecEnv versions of lbwrap's wrappers: they run in the main process, next to the live model.

SB3's ``SubprocVecEnv`` runs Gymnasium wrappers in worker processes, where a torch model is a copy
that never learns. These wrappers sit *outside* the VecEnv (as ``VecNormalize`` does), so they use
the one live :class:`~lbwrap.safety_model.LatentSafetyModel` for every env at once (batched).
"""

from __future__ import annotations

from typing import Literal, cast

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs

from lbwrap.latent_state import LatentState
from lbwrap.latent_tracker import LatentTracker
from lbwrap.safety_model import (
    LatentSafetyModel,
    ObservationScorer,
    ShieldDecision,
    as_action_batch,
    barrier_penalty,
    barrier_values,
    bind_observations,
    shield_decision,
)

__all__ = [
    "VecBarrierPenalty", "VecBarrierShield", "VecLatentObservation", "VecRewardScale",
    "find_vec_latent", "find_vec_shield",
]


class VecLatentObservation(VecEnvWrapper):
    """Pixels -> latent features for all envs (float32 Box), with ``terminal_observation`` too.

    Follows the info contract of :class:`lbwrap.wrappers.LatentObservation`: ``pixels`` (the
    terminal frame at an episode's end), ``episode_start_pixels`` on each episode's first step,
    ``executed_action``. Bad input is refused as there, never converted: frames must be uint8
    RGB images (float images, NaN/inf pixels raise a ``ValueError`` naming the conversion, see
    :mod:`lbwrap.latent_tracker`); ``step_async`` takes ``(num_envs, A)`` finite actions and
    raises before the envs are stepped otherwise.
    """

    def __init__(self, venv: VecEnv, safety: LatentSafetyModel) -> None:
        _check_vec_env(venv, "VecLatentObservation", "lbwrap.LatentObservation(env, safety)")
        if not isinstance(safety, LatentSafetyModel):
            raise TypeError(f"safety must be a LatentSafetyModel, got {type(safety).__name__}.")
        safety.check_spaces(venv.observation_space, venv.action_space)
        self.safety = safety
        self.tracker = LatentTracker(safety.world_model, venv.num_envs)
        dim = self.tracker.feature_dim
        super().__init__(venv, observation_space=spaces.Box(-np.inf, np.inf, (dim,), np.float32))
        shape = venv.observation_space.shape
        assert shape is not None  # check_spaces: an image space
        self._channel_last = shape[-1] == 3 and shape[0] != 3
        self._actions = np.zeros((venv.num_envs, safety.action_dim), np.float32)
        self._episode_start: list[np.ndarray | None] = [None] * venv.num_envs
        self.pre_reset_state: LatentState | None = None

    @property
    def latent_state(self) -> LatentState:
        return self.tracker.state

    @property
    def latent_embed(self) -> torch.Tensor:
        """(N, E) encoder embeddings of the latest frames (what the action barrier reads)."""
        return self.tracker.embed

    def _chw(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if self._channel_last:
            frames = frames.transpose(0, 3, 1, 2) if frames.ndim == 4 else frames.transpose(2, 0, 1)
        return np.ascontiguousarray(frames)

    def reset(self) -> np.ndarray:
        frames = self._chw(cast(np.ndarray, self.venv.reset()))  # check_spaces: image frames
        n = self.num_envs
        feats = self.tracker.observe(frames, None, np.ones(n, bool))
        self._episode_start = [frames[i] for i in range(n)]
        self.reset_infos = [dict(info, pixels=frames[i]) for i, info in enumerate(self.venv.reset_infos)]
        return feats

    def step_async(self, actions: np.ndarray) -> None:
        box = cast(spaces.Box, self.action_space)  # check_spaces: a Box
        low, high = box.low, box.high
        checked = as_action_batch(actions, self.num_envs, self.safety.action_dim, single=False,
                                  what="VecLatentObservation.step: the actions")
        self._actions = np.clip(checked, low, high)
        self.venv.step_async(actions)

    def step_wait(self):
        frames, rewards, dones, infos = self.venv.step_wait()
        frames = self._chw(frames)
        dones = np.asarray(dones, bool)
        step_frames = frames.copy()
        for i in np.flatnonzero(dones):
            step_frames[i] = self._chw(infos[i]["terminal_observation"])
        feats = self.tracker.observe(step_frames, self._actions, np.zeros(self.num_envs, bool))
        self.pre_reset_state = self.tracker.state
        for i, info in enumerate(infos):
            info["pixels"] = step_frames[i]
            info["executed_action"] = self._actions[i].copy()
            if self._episode_start[i] is not None:
                info["episode_start_pixels"] = self._episode_start[i]
                self._episode_start[i] = None
        done_rows = np.flatnonzero(dones)
        if done_rows.size:
            for i in done_rows:
                infos[i]["terminal_observation"] = feats[i].copy()
                self._episode_start[i] = frames[i]
            feats = self.tracker.observe(frames[done_rows], None, np.ones(done_rows.size, bool),
                                         rows=done_rows)
        return feats, rewards, dones, infos


def _check_vec_env(venv: VecEnv, wrapper: str, gym_twin: str) -> None:
    """``TypeError`` naming the Gymnasium twin when ``venv`` is not an SB3 VecEnv."""
    if isinstance(venv, VecEnv):
        return
    if isinstance(venv, gym.Env):
        raise TypeError(
            f"{wrapper} wraps an SB3 VecEnv, got the Gymnasium env {type(venv).__name__}: wrap "
            f"it with {gym_twin} instead, or vectorise it first (DummyVecEnv([lambda: env])).")
    raise TypeError(f"{wrapper} wraps an SB3 VecEnv, got {type(venv).__name__}.")


def find_vec_latent(venv: VecEnv, wrapper: str = "This wrapper",
                    gym_twin: str = "lbwrap's Gymnasium wrappers") -> VecLatentObservation:
    """The :class:`VecLatentObservation` inside ``venv``, or a clear error."""
    _check_vec_env(venv, wrapper, gym_twin)
    current = venv
    while isinstance(current, VecEnvWrapper):
        if isinstance(current, VecLatentObservation):
            return current
        current = current.venv
    raise ValueError(
        f"{wrapper} needs a VecLatentObservation inside it: "
        "VecBarrierShield(VecLatentObservation(vec_env, safety), safety)."
    )


class VecBarrierShield(VecEnvWrapper):
    """Batched :class:`lbwrap.wrappers.BarrierShield` (same info keys, same readiness gate).

    ``action_scorer`` (settable later, e.g. to :func:`lbwrap.sb3.critic_scorer` of the agent that
    acts on this env): how a replaced action's substitute is chosen among the passing candidates;
    ``None``: the closest to the proposal. Proposals must be ``(num_envs, A)`` and finite; anything
    else raises a ``ValueError`` before the envs are stepped (never reshaped or replaced).
    """

    def __init__(self, venv: VecEnv, safety: LatentSafetyModel, intervention_penalty: float = 0.0,
                 action_scorer: ObservationScorer | None = None) -> None:
        self.latent = find_vec_latent(
            venv, "VecBarrierShield", "lbwrap.BarrierShield(LatentObservation(env, safety), safety)")
        if self.latent.safety is not safety:
            raise ValueError("VecBarrierShield and its VecLatentObservation must share one LatentSafetyModel.")
        if intervention_penalty < 0:
            raise ValueError(f"intervention_penalty must be >= 0, got {intervention_penalty}")
        super().__init__(venv)
        self.safety = safety
        self.intervention_penalty = float(intervention_penalty)
        self.action_scorer = action_scorer
        self._decision: ShieldDecision | None = None
        self._proposed: np.ndarray | None = None
        self._obs: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        # the VecLatentObservation inside makes these latent feature arrays
        self._obs = cast(np.ndarray, self.venv.reset())
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        self._proposed = as_action_batch(actions, self.num_envs, self.safety.action_dim,
                                         single=False, what="VecBarrierShield.step: the proposed actions")
        self._decision = shield_decision(self.safety, self.latent.latent_state, self._proposed,
                                         embed=self.latent.latent_embed,
                                         scorer=bind_observations(self.action_scorer, self._obs))
        self.venv.step_async(self._decision.executed)

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        self._obs = obs
        d = self._decision
        assert d is not None and self._proposed is not None
        rewards = np.asarray(rewards, np.float32).copy()
        for i, info in enumerate(infos):
            intervened = bool(d.intervened[i])
            info.update(d.info(i), proposed_action=self._proposed[i])
            if intervened and self.intervention_penalty > 0:
                info.setdefault("env_reward", float(rewards[i]))
                rewards[i] -= self.intervention_penalty
        return obs, rewards, dones, infos


def find_vec_shield(venv: VecEnv) -> VecBarrierShield | None:
    """The :class:`VecBarrierShield` inside ``venv`` (or ``venv`` itself), ``None`` if there is none."""
    current = venv
    while True:
        if isinstance(current, VecBarrierShield):
            return current
        if not isinstance(current, VecEnvWrapper):
            return None
        current = current.venv


class VecBarrierPenalty(VecEnvWrapper):
    """Batched :class:`lbwrap.wrappers.BarrierPenalty` (same modes, same info keys)."""

    def __init__(
        self,
        venv: VecEnv,
        safety: LatentSafetyModel,
        scale: float = 1.0,
        mode: Literal["decrease", "margin"] = "decrease",
        only_when_ready: bool = True,
    ) -> None:
        self.latent = find_vec_latent(
            venv, "VecBarrierPenalty", "lbwrap.BarrierPenalty(LatentObservation(env, safety), safety)")
        if self.latent.safety is not safety:
            raise ValueError("VecBarrierPenalty and its VecLatentObservation must share one LatentSafetyModel.")
        if scale < 0 or mode not in ("decrease", "margin"):
            raise ValueError(f"need scale >= 0 and mode in ('decrease', 'margin'), got {scale}, {mode!r}")
        super().__init__(venv)
        self.safety = safety
        self.scale = float(scale)
        self.mode = mode
        self.only_when_ready = bool(only_when_ready)
        self._b_prev = np.zeros(self.num_envs, np.float32)

    def reset(self) -> np.ndarray:
        obs = cast(np.ndarray, self.venv.reset())  # latent features (the VecLatentObservation)
        self._b_prev = barrier_values(self.safety, self.latent.latent_state)
        return obs

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        reached = self.latent.pre_reset_state
        assert reached is not None
        b_next = barrier_values(self.safety, reached)
        active = self.safety.ready or not self.only_when_ready
        penalty = barrier_penalty(self.safety, self._b_prev, b_next, np.zeros(self.num_envs, bool), self.mode)
        if not active:
            penalty = np.zeros_like(penalty)
        rewards = np.asarray(rewards, np.float32).copy()
        for i, info in enumerate(infos):
            info.setdefault("env_reward", float(rewards[i]))
            info.update(barrier_penalty=float(penalty[i]), barrier_value=float(b_next[i]))
        rewards -= self.scale * penalty
        self._b_prev = barrier_values(self.safety, self.latent.latent_state)
        return obs, rewards, dones, infos


class VecRewardScale(VecEnvWrapper):
    """Multiply the reward the agent learns from by a constant ``scale``.

    SAC's entropy bonus is ~1 nat per step at the start; a task whose reward is ~0.05 per step
    (PixelHazard, Safety Gym's goal tasks) is then drowned in it for thousands of steps. Scaling
    the reward is the usual fix (``VecNormalize(norm_obs=False)`` is the adaptive alternative).
    ``info["env_reward"]`` keeps the unscaled env reward (unless an inner wrapper set it already),
    so the world model, the logs and evaluation see the env's own units.
    """

    def __init__(self, venv: VecEnv, scale: float) -> None:
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale}")
        super().__init__(venv)
        self.scale = float(scale)

    def reset(self) -> VecEnvObs:
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        rewards = np.asarray(rewards, np.float32)
        for i, info in enumerate(infos):
            info.setdefault("env_reward", float(rewards[i]))
        return obs, rewards * np.float32(self.scale), dones, infos
