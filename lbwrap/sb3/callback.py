"""``CoTrainCallback``: keep the world model and barrier learning alongside any SB3 agent."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from lbwrap.safety_model import LatentSafetyModel

__all__ = ["CoTrainCallback"]


class CoTrainCallback(BaseCallback):
    """Fill the safety model's pixel replay from the rollout and train it at a fixed ratio.

    Works with SAC, TD3, PPO (any algorithm that calls ``callback.on_step`` per vector step).
    What it reads from ``self.locals`` each step: ``infos`` (``cost``, ``violations``, and from
    lbwrap's latent wrappers ``pixels`` / ``episode_start_pixels`` / ``executed_action`` /
    ``env_reward``), ``dones``, ``rewards``, and — when the agent sees pixels directly —
    ``new_obs`` with ``terminal_observation`` for the true last frame of an episode.

    Args:
        safety: the model to train (shared with the wrappers).
        train_every: env steps (all envs together) between training calls.
        updates_per_train: world-model + barrier updates per training call.
        learning_starts: env steps collected before the first update.
        pretrain_updates: extra updates in one training call (the first, unless
            ``pretrain_min_unsafe`` defers them), made only while the safety model has never been
            updated (so a resumed run does not repeat them); like Dreamer's
            ``pretrain``, they let the barrier pass its readiness gate, and the shield act, sooner.
        pretrain_min_unsafe: when to spend ``pretrain_updates``. ``0``: in the first training
            call. ``k >= 1``: in the first training call at which the replay holds at least ``k``
            unsafe (cost > 0) steps, made only while the barrier has never trained on an unsafe
            state (a resumed run that has does not pre-train again). Until then training runs at
            the normal rate. A burst spent before the agent has met a hazard teaches the barrier
            nothing about hazards; deferred, it lets the gate open soon after the first contact.
        save_path: folder for safety-model checkpoints (``None``: no saving).
        save_freq: env steps between checkpoints (0: only at the end of training).
        name_prefix: checkpoint file prefix (as SB3's ``CheckpointCallback``).
        stats_window: episodes in the rolling episode-cost statistics.
        verbose: 0 silent, 1 logs checkpoint paths via the SB3 logger.

    Logged (SB3 logger): ``world_model/*``, ``barrier/*``, ``safety/*`` (readiness, cumulative
    violations, episode cost and cost rate), ``shield/*`` (active, intervention rate).
    """

    def __init__(
        self,
        safety: LatentSafetyModel,
        train_every: int = 100,
        updates_per_train: int = 10,
        learning_starts: int = 1000,
        pretrain_updates: int = 0,
        pretrain_min_unsafe: int = 0,
        save_path: str | Path | None = None,
        save_freq: int = 0,
        name_prefix: str = "safety_model",
        stats_window: int = 100,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if not isinstance(safety, LatentSafetyModel):
            raise TypeError(f"safety must be a LatentSafetyModel, got {type(safety).__name__}")
        for name, value in (("train_every", train_every), ("updates_per_train", updates_per_train)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if learning_starts < 0 or save_freq < 0 or pretrain_updates < 0 or pretrain_min_unsafe < 0:
            raise ValueError(
                "learning_starts, pretrain_updates, pretrain_min_unsafe and save_freq must be >= 0"
            )
        self.safety = safety
        self.train_every = int(train_every)
        self.updates_per_train = int(updates_per_train)
        self.learning_starts = int(learning_starts)
        self.pretrain_updates = int(pretrain_updates)
        self.pretrain_min_unsafe = int(pretrain_min_unsafe)
        self._pretrain_pending = False
        self.save_path = Path(save_path) if save_path is not None else None
        self.save_freq = int(save_freq)
        self.name_prefix = name_prefix
        self._since_train = 0
        self._since_save = 0
        self._pending_first: list[np.ndarray | None] = []
        self._ep_cost: np.ndarray = np.zeros(0)
        self._ep_len: np.ndarray = np.zeros(0)
        self.episode_costs: deque[float] = deque(maxlen=stats_window)
        self.episode_cost_rates: deque[float] = deque(maxlen=stats_window)
        self.cumulative_violations = 0
        self.cumulative_cost = 0.0
        self.interventions = 0
        self.shielded_steps = 0
        self.last_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ SB3 hooks
    def _on_training_start(self) -> None:
        n = self.training_env.num_envs
        if self.safety.replay.num_envs != n:
            raise ValueError(
                f"The safety model's replay expects {self.safety.replay.num_envs} env streams, the "
                f"training env has {n}: build it with LatentSafetyModel.for_env(vec_env) or "
                f"num_envs={n}."
            )
        self._ep_cost = np.zeros(n)
        self._ep_len = np.zeros(n, dtype=np.int64)
        already = (int(self.safety.unsafe_seen) > 0 if self.pretrain_min_unsafe
                   else self.safety.num_updates > 0)
        self._pretrain_pending = self.pretrain_updates > 0 and not already
        self._pending_first = [None] * n
        last_obs = getattr(self.model, "_last_obs", None)
        if self._agent_sees_pixels() and last_obs is not None:
            for i in range(n):
                self._pending_first[i] = self._chw(np.asarray(last_obs[i]))

    def _on_step(self) -> bool:
        infos: list[dict[str, Any]] = self.locals["infos"]
        dones = np.asarray(self.locals["dones"], dtype=bool)
        rewards = np.asarray(self.locals["rewards"], dtype=np.float32).reshape(-1)
        actions = self._executed_actions(infos)
        new_obs: Any = self.locals.get("new_obs")  # the VecEnv's observations (pixel path)
        pixel_path = self._agent_sees_pixels()
        for i, info in enumerate(infos):
            if "cost" not in info:
                raise KeyError(
                    "CoTrainCallback: the env's info has no 'cost'. Build the env with "
                    "lbwrap.make_pixel_env / lbwrap.as_pixel_env(env, cost=...) so every step "
                    "reports its safety cost."
                )
            cost = float(info["cost"])
            reward = float(info.get("env_reward", rewards[i]))
            if pixel_path:
                frame = info.get("terminal_observation") if dones[i] else new_obs[i]
            else:
                if "pixels" not in info:
                    raise KeyError(
                        "CoTrainCallback: the agent does not see pixels and the step info has no "
                        "'pixels'. Use lbwrap's LatentObservation / VecLatentObservation, which "
                        "publish the frames."
                    )
                frame = info["pixels"]
                if "episode_start_pixels" in info:
                    self._pending_first[i] = info["episode_start_pixels"]
            start = self._pending_first[i]
            if start is not None:
                self._add(i, start, np.zeros(self.safety.action_dim, np.float32), 0.0, 0.0, True, False)
                self._pending_first[i] = None
            terminal = bool(dones[i]) and not info.get("TimeLimit.truncated", False)
            self._add(i, self._chw(np.asarray(frame)), actions[i], reward, cost, False, terminal)
            if pixel_path and dones[i]:
                self._pending_first[i] = self._chw(np.asarray(new_obs[i]))
            self._track_episode(i, info, cost, bool(dones[i]))
        n = len(infos)
        self._since_train += n
        self._since_save += n
        if self.num_timesteps >= self.learning_starts and self._since_train >= self.train_every:
            self._since_train = 0
            if self.safety.can_train():
                n = self.updates_per_train
                if self._pretrain_pending and (
                    self.safety.replay.num_cost_steps >= self.pretrain_min_unsafe
                ):
                    n += self.pretrain_updates
                    self._pretrain_pending = False
                self.last_metrics = self.safety.update(n)
        if self.save_path is not None and self.save_freq and self._since_save >= self.save_freq:
            self._since_save = 0
            self._save(f"{self.name_prefix}_{self.num_timesteps}_steps.pt")
        self._log()
        return True

    def _on_training_end(self) -> None:
        if self.save_path is not None:
            self._save(f"{self.name_prefix}_final.pt")

    # ------------------------------------------------------------------ helpers
    def _agent_sees_pixels(self) -> bool:
        shape = getattr(self.training_env.observation_space, "shape", None) or ()
        return len(shape) == 3

    def _chw(self, frame: np.ndarray) -> np.ndarray:
        c = self.safety.obs_shape[0]
        if frame.ndim == 3 and frame.shape[0] != c and frame.shape[-1] == c:
            return np.ascontiguousarray(frame.transpose(2, 0, 1))
        return frame

    def _executed_actions(self, infos: list[dict[str, Any]]) -> np.ndarray:
        """The actions the envs executed: the shield's, else the clipped/unscaled agent action."""
        if all("executed_action" in info for info in infos):
            return np.stack([np.asarray(info["executed_action"], np.float32) for info in infos])
        raw = self.locals.get("clipped_actions", self.locals.get("actions"))
        actions = np.asarray(raw, dtype=np.float32).reshape(len(infos), -1)
        low = self.safety.action_low.cpu().numpy()
        high = self.safety.action_high.cpu().numpy()
        return np.clip(actions, low, high)

    def _add(self, i: int, frame: np.ndarray, action: np.ndarray, reward: float, cost: float,
             is_first: bool, is_terminal: bool) -> None:
        self.safety.replay.add(
            frame[None], np.asarray(action, np.float32)[None], np.array([reward], np.float32),
            np.array([cost], np.float32), np.array([is_first]), np.array([is_terminal]),
            env_ids=np.array([i]),
        )

    def _track_episode(self, i: int, info: dict[str, Any], cost: float, done: bool) -> None:
        self.cumulative_cost += cost
        self.cumulative_violations += int(info.get("violations", int(cost > 0)))
        if info.get("shield_active", False):
            self.shielded_steps += 1
            self.interventions += int(bool(info.get("shield_intervened", False)))
        self._ep_cost[i] += cost
        self._ep_len[i] += 1
        if done:
            self.episode_costs.append(float(self._ep_cost[i]))
            self.episode_cost_rates.append(float(self._ep_cost[i] / max(self._ep_len[i], 1)))
            self._ep_cost[i] = 0.0
            self._ep_len[i] = 0

    def _log(self) -> None:
        record = self.logger.record
        record("safety/cumulative_violations", self.cumulative_violations)
        record("safety/cumulative_cost", self.cumulative_cost)
        record("safety/ready", float(self.safety.ready))
        if self.episode_costs:
            record("rollout/ep_cost_mean", float(np.mean(self.episode_costs)))
            record("rollout/cost_rate", float(np.mean(self.episode_cost_rates)))
        record("shield/active_steps", self.shielded_steps)
        if self.shielded_steps:
            record("shield/intervention_rate", self.interventions / self.shielded_steps)
        for key, value in self.last_metrics.items():
            if key.startswith(("world_model/", "barrier/", "safety/")) and np.isfinite(value):
                record(key, value)

    def _save(self, name: str) -> None:
        assert self.save_path is not None
        path = self.save_path / name
        self.safety.save(path)
        if self.verbose:
            self.logger.info(f"saved safety model to {path}")
