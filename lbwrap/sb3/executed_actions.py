"""``ExecutedActionRelabel``: an off-policy agent learns from the action the shield executed.

By default SB3 stores the action the *policy proposed*. Behind a shield
(:class:`~lbwrap.sb3.vec_wrappers.VecBarrierShield`) the env may have executed another one, so the
critic learns Q(s, proposed) from the outcome of the executed action: an unsafe proposal that the
shield always overrides looks as good as the override, and the agent keeps proposing it. With
this callback the replay buffer stores the executed action instead (as in shielded RL where the
learner is updated with the shield's action), so the agent learns what it actually did.

How. SB3's off-policy loop calls ``callback.on_step()`` after ``env.step`` and *before*
``_store_transition(replay_buffer, buffer_actions, ...)``; the callback overwrites the rows of
``buffer_actions`` (the policy's actions scaled to [-1, 1]) in place with the scaled
``info["executed_action"]`` of each env. Rows whose info lacks it are left alone. On-policy
algorithms (PPO, A2C) keep the proposal: their stored log-probabilities belong to it; the callback
warns once and does nothing.

``keep_proposal=True`` stores both: SB3 keeps the proposal's transition (with the reward the
agent received, the shield's intervention penalty included), and the callback adds the executed
action's transition with the penalty given back (``intervention_reward``, in the reward units
the agent learns from), so that the critic learns both what the proposal led to and what the
substitute is worth. Every env step then adds two rows to the replay buffer (a step without an
intervention stores its transition twice), so each env step keeps the same weight in sampling.
"""

from __future__ import annotations

import warnings

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

__all__ = ["ExecutedActionRelabel"]


class ExecutedActionRelabel(BaseCallback):
    """Store the executed action (``info["executed_action"]``) in an off-policy replay buffer.

    Attributes:
        relabelled: number of stored actions that differed from the proposal and were replaced.
    """

    def __init__(self, keep_proposal: bool = False, intervention_reward: float = 0.0,
                 verbose: int = 0) -> None:
        super().__init__(verbose)
        if intervention_reward < 0:
            raise ValueError(f"intervention_reward must be >= 0 (the penalty given back), got "
                             f"{intervention_reward}")
        if intervention_reward and not keep_proposal:
            raise ValueError("intervention_reward is only used with keep_proposal=True (the "
                             "executed action's own transition)")
        self.keep_proposal = bool(keep_proposal)
        self.intervention_reward = float(intervention_reward)
        self.relabelled = 0
        self._active = False

    def _init_callback(self) -> None:
        self._active = isinstance(self.model, OffPolicyAlgorithm) and isinstance(
            self.model.action_space, spaces.Box)
        if not self._active:
            warnings.warn(
                f"ExecutedActionRelabel does nothing for {type(self.model).__name__}: only "
                "off-policy algorithms with Box actions (SAC, TD3, BarrierSAC) store actions it "
                "can replace.", stacklevel=2)
        if self._active and self.keep_proposal:
            model = self.model
            assert isinstance(model, OffPolicyAlgorithm)
            if getattr(model.replay_buffer, "optimize_memory_usage", False):
                raise ValueError(
                    "ExecutedActionRelabel(keep_proposal=True) adds rows of its own, which a "
                    "replay buffer with optimize_memory_usage=True (next observation = the next "
                    "row) cannot hold: build the agent with optimize_memory_usage=False")
            if model._vec_normalize_env is not None:
                raise ValueError(
                    "ExecutedActionRelabel(keep_proposal=True) does not support VecNormalize "
                    "(it stores the unnormalised observations SB3 keeps apart): drop VecNormalize "
                    "or use keep_proposal=False")

    def _on_step(self) -> bool:
        if not self._active:
            return True
        buffer_actions = self.locals.get("buffer_actions")
        infos = self.locals.get("infos")
        if buffer_actions is None or infos is None:
            raise RuntimeError(
                "ExecutedActionRelabel: SB3 did not expose buffer_actions/infos to callbacks; "
                "this stable-baselines3 version stores transitions differently")
        executed_rows = np.array(buffer_actions, copy=True)
        for i, info in enumerate(infos):
            executed = info.get("executed_action")
            if executed is None:
                continue
            scaled = self.model.policy.scale_action(np.asarray(executed, np.float32))
            scaled = np.clip(scaled, -1.0, 1.0)
            if not np.allclose(buffer_actions[i], scaled, atol=1e-6):
                self.relabelled += 1
            executed_rows[i] = scaled
        if self.keep_proposal:
            self._add_executed(executed_rows, infos)
        else:
            buffer_actions[:] = executed_rows
        return True

    def _add_executed(self, executed_rows: np.ndarray, infos: list[dict]) -> None:
        """Add the executed actions' transitions of this step (SB3 adds the proposals' next)."""
        model = self.model
        assert isinstance(model, OffPolicyAlgorithm) and model.replay_buffer is not None
        new_obs, rewards, dones = (self.locals[k] for k in ("new_obs", "rewards", "dones"))
        next_obs = np.array(new_obs, copy=True)
        for i, done in enumerate(dones):  # as SB3's _store_transition: the episode's last frame
            if done and infos[i].get("terminal_observation") is not None:
                next_obs[i] = infos[i]["terminal_observation"]
        rewards = np.array(rewards, dtype=np.float32, copy=True)
        for i, info in enumerate(infos):
            if info.get("shield_intervened"):
                rewards[i] += self.intervention_reward
        model.replay_buffer.add(np.asarray(model._last_obs), next_obs, executed_rows, rewards,
                                np.asarray(dones), infos)
