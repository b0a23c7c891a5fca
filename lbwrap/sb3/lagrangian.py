"""A Lagrangian baseline on the same stack: ``reward - lambda * cost`` with a learned ``lambda``.

Constrained RL's classic recipe (e.g. PPO-Lagrangian, SAC-Lagrangian): maximise
``E[return] - lambda * (E[episode cost] - cost_limit)`` and raise ``lambda >= 0`` by dual
ascent while episodes cost more than the budget::

    make_env = lambda: Monitor(LatentObservation(pixel_env, safety))
    venv = VecLagrangianPenalty(DummyVecEnv([make_env]), cost_limit=25.0, lambda_lr=0.05)
    model = PPO("MlpPolicy", venv)               # or SAC / TD3
    model.learn(100_000, callback=[LagrangianLoggerCallback(), CoTrainCallback(safety)])

Why a ``VecEnvWrapper``: the rewards it returns are exactly what every SB3 algorithm stores
(rollout buffer or replay buffer), with no algorithm-specific hooks, and it runs in the main
process with one ``lambda`` for all envs (like ``VecNormalize``). The original reward stays in
``info["env_reward"]`` (kept if an inner wrapper set it already), so :class:`CoTrainCallback`
still teaches the world model the task reward.

Off-policy caveat (SAC/TD3): the penalty is applied when a transition is collected, so each
stored reward carries the ``lambda`` of that moment and is not re-weighted when ``lambda``
changes later. This is the common, simple choice; old transitions age out of the replay
buffer. (Re-weighting at sample time would need the cost in the buffer and a custom
algorithm.)

SB3 VecEnv wrappers have no logger; :class:`LagrangianLoggerCallback` finds the wrapper in the
training env and logs ``lagrangian/lambda``, ``lagrangian/ep_cost_mean``,
``lagrangian/cost_limit``, plus the episode cost statistics (``rollout/ep_cost_mean``,
``rollout/cost_rate``, ``safety/cumulative_violations``, ``safety/cumulative_cost``) under the
same names and definitions as :class:`~lbwrap.sb3.CoTrainCallback`.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper

__all__ = ["LagrangianLoggerCallback", "VecLagrangianPenalty", "find_vec_lagrangian"]


class VecLagrangianPenalty(VecEnvWrapper):
    """Reward ``r - lambda * cost`` for all envs; ``lambda`` follows the episode costs.

    After every ``update_every`` finished episodes (all envs together)::

        lambda = max(0, lambda + lambda_lr * (mean cost of those episodes - cost_limit))

    Args:
        venv: the VecEnv (a plain ``gym.Env`` is put in ``DummyVecEnv([Monitor(env)])``). Its
            step infos must carry the per-step cost under ``cost_key``.
        cost_limit: per-episode cost budget ``d``.
        lambda_lr: dual-ascent step size (> 0).
        initial_lambda: starting multiplier (>= 0).
        update_every: finished episodes averaged per ``lambda`` update (>= 1).
        max_lambda: optional upper clip of ``lambda`` (``None``: unbounded).
        cost_key: the info key of the per-step cost.
        stats_window: episodes kept for the logged episode-cost statistics.

    Info added per step: ``env_reward`` (the reward before the penalty; an existing value is
    kept), ``lagrangian_lambda`` (the multiplier applied to this step) and
    ``lagrangian_penalty`` (``lambda * cost``).
    """

    def __init__(
        self,
        venv: VecEnv | gym.Env,
        cost_limit: float = 25.0,
        lambda_lr: float = 0.05,
        initial_lambda: float = 0.0,
        update_every: int = 1,
        max_lambda: float | None = None,
        cost_key: str = "cost",
        stats_window: int = 100,
    ) -> None:
        if isinstance(venv, gym.Env):
            env = venv
            venv = DummyVecEnv([lambda: Monitor(env)])
        if not isinstance(venv, VecEnv):
            raise TypeError(f"venv must be an SB3 VecEnv or a gym.Env, got {type(venv).__name__}.")
        _check_number("cost_limit", cost_limit)
        _check_number("lambda_lr", lambda_lr, minimum=0.0, strict=True)
        _check_number("initial_lambda", initial_lambda, minimum=0.0)
        if max_lambda is not None:
            _check_number("max_lambda", max_lambda, minimum=0.0)
            if initial_lambda > max_lambda:
                raise ValueError(
                    f"initial_lambda ({initial_lambda}) must not exceed max_lambda ({max_lambda})"
                )
        for name, value in (("update_every", update_every), ("stats_window", stats_window)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, actual {value!r}")
        super().__init__(venv)
        self.cost_limit = float(cost_limit)
        self.lambda_lr = float(lambda_lr)
        self.lagrange_multiplier = float(initial_lambda)
        self.update_every = int(update_every)
        self.max_lambda = None if max_lambda is None else float(max_lambda)
        self.cost_key = cost_key
        n = self.num_envs
        self._ep_cost = np.zeros(n, np.float64)
        self._ep_len = np.zeros(n, np.int64)
        self._pending: list[float] = []
        self.episode_costs: deque[float] = deque(maxlen=stats_window)
        self.episode_cost_rates: deque[float] = deque(maxlen=stats_window)
        self.last_update_cost: float = math.nan
        """Mean episode cost used in the latest ``lambda`` update (NaN before the first)."""
        self.num_updates = 0
        self.num_episodes = 0
        self.cumulative_cost = 0.0
        self.cumulative_violations = 0

    @property
    def lam(self) -> float:
        """The current multiplier ``lambda``."""
        return self.lagrange_multiplier

    def reset(self) -> Any:
        """Reset all envs; unfinished episode costs are dropped."""
        obs = self.venv.reset()
        self._ep_cost[:] = 0.0
        self._ep_len[:] = 0
        return obs

    def step_wait(self) -> Any:
        """Step; penalise rewards with the current ``lambda``, then update it on episode ends."""
        obs, rewards, dones, infos = self.venv.step_wait()
        costs = np.zeros(self.num_envs, np.float32)
        for i, info in enumerate(infos):
            if self.cost_key not in info:
                raise KeyError(
                    f"VecLagrangianPenalty: the step info has no {self.cost_key!r}. Build the env "
                    "with lbwrap.make_pixel_env / lbwrap.as_pixel_env(env, cost=...) or pass "
                    "cost_key=... so every step reports its safety cost."
                )
            costs[i] = float(info[self.cost_key])
        lam = self.lagrange_multiplier
        raw = np.asarray(rewards, np.float32).reshape(-1)
        penalised = (raw - np.float32(lam) * costs).astype(np.float32)
        dones = np.asarray(dones, bool)
        for i, info in enumerate(infos):
            info.setdefault("env_reward", float(raw[i]))
            info["lagrangian_lambda"] = lam
            info["lagrangian_penalty"] = float(lam * costs[i])
            self._track(i, info, float(costs[i]), bool(dones[i]))
        return obs, penalised, dones, infos

    def _track(self, i: int, info: dict[str, Any], cost: float, done: bool) -> None:
        self.cumulative_cost += cost
        self.cumulative_violations += int(info.get("violations", int(cost > 0)))
        self._ep_cost[i] += cost
        self._ep_len[i] += 1
        if not done:
            return
        ep_cost = float(self._ep_cost[i])
        self.episode_costs.append(ep_cost)
        self.episode_cost_rates.append(ep_cost / max(int(self._ep_len[i]), 1))
        self.num_episodes += 1
        self._ep_cost[i] = 0.0
        self._ep_len[i] = 0
        self._pending.append(ep_cost)
        if len(self._pending) >= self.update_every:
            self.update_lambda(float(np.mean(self._pending)))
            self._pending.clear()

    def update_lambda(self, mean_episode_cost: float) -> float:
        """One dual-ascent step from a mean episode cost; returns the new ``lambda``."""
        lam = self.lagrange_multiplier + self.lambda_lr * (mean_episode_cost - self.cost_limit)
        lam = max(0.0, lam)
        if self.max_lambda is not None:
            lam = min(lam, self.max_lambda)
        self.lagrange_multiplier = lam
        self.last_update_cost = float(mean_episode_cost)
        self.num_updates += 1
        return lam

    def state_dict(self) -> dict[str, Any]:
        """``lambda`` and the counters (to resume a run; the env itself is not included)."""
        return {
            "lagrange_multiplier": self.lagrange_multiplier,
            "cost_limit": self.cost_limit,
            "lambda_lr": self.lambda_lr,
            "last_update_cost": self.last_update_cost,
            "num_updates": self.num_updates,
            "num_episodes": self.num_episodes,
            "cumulative_cost": self.cumulative_cost,
            "cumulative_violations": self.cumulative_violations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.lagrange_multiplier = float(state["lagrange_multiplier"])
        self.cost_limit = float(state.get("cost_limit", self.cost_limit))
        self.lambda_lr = float(state.get("lambda_lr", self.lambda_lr))
        self.last_update_cost = float(state.get("last_update_cost", math.nan))
        self.num_updates = int(state.get("num_updates", 0))
        self.num_episodes = int(state.get("num_episodes", 0))
        self.cumulative_cost = float(state.get("cumulative_cost", 0.0))
        self.cumulative_violations = int(state.get("cumulative_violations", 0))


def find_vec_lagrangian(venv: VecEnv) -> VecLagrangianPenalty:
    """The :class:`VecLagrangianPenalty` in ``venv``'s wrapper chain, or a clear error."""
    current: Any = venv
    while True:
        if isinstance(current, VecLagrangianPenalty):
            return current
        if not isinstance(current, VecEnvWrapper):
            break
        current = current.venv
    raise ValueError(
        "No VecLagrangianPenalty in the training env: wrap it, e.g. "
        "VecLagrangianPenalty(DummyVecEnv([make_env]), cost_limit=25.0, lambda_lr=0.05)."
    )


class LagrangianLoggerCallback(BaseCallback):
    """Log the multiplier and episode-cost statistics of a :class:`VecLagrangianPenalty`.

    Args:
        penalty: the wrapper; ``None`` finds it in the model's training env at training start.
        log_cost_stats: also log ``rollout/ep_cost_mean``, ``rollout/cost_rate``,
            ``safety/cumulative_violations`` and ``safety/cumulative_cost`` (same names and
            definitions as :class:`~lbwrap.sb3.CoTrainCallback`, so using both is harmless).
        verbose: SB3 verbosity.

    Logged every step: ``lagrangian/lambda``, ``lagrangian/cost_limit``,
    ``lagrangian/num_updates`` and, after the first update, ``lagrangian/ep_cost_mean`` (the
    mean episode cost of the latest update, the quantity compared with ``cost_limit``).
    """

    def __init__(
        self,
        penalty: VecLagrangianPenalty | None = None,
        log_cost_stats: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if penalty is not None and not isinstance(penalty, VecLagrangianPenalty):
            raise TypeError(
                f"penalty must be a VecLagrangianPenalty, got {type(penalty).__name__}."
            )
        self.penalty = penalty
        self.log_cost_stats = bool(log_cost_stats)

    def _on_training_start(self) -> None:
        if self.penalty is None:
            self.penalty = find_vec_lagrangian(self.training_env)

    def _on_step(self) -> bool:
        penalty = self.penalty
        assert penalty is not None
        record = self.logger.record
        record("lagrangian/lambda", penalty.lagrange_multiplier)
        record("lagrangian/cost_limit", penalty.cost_limit)
        record("lagrangian/num_updates", penalty.num_updates)
        if math.isfinite(penalty.last_update_cost):
            record("lagrangian/ep_cost_mean", penalty.last_update_cost)
        if self.log_cost_stats:
            record("safety/cumulative_violations", penalty.cumulative_violations)
            record("safety/cumulative_cost", penalty.cumulative_cost)
            if penalty.episode_costs:
                record("rollout/ep_cost_mean", float(np.mean(penalty.episode_costs)))
                record("rollout/cost_rate", float(np.mean(penalty.episode_cost_rates)))
        return True


def _check_number(
    name: str, value: Any, minimum: float | None = None, strict: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, actual {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        op = ">" if strict else ">="
        raise ValueError(f"{name}: expected a number {op} {minimum}, actual {value!r}")
