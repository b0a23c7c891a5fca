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

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
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

    def _on_step(self) -> bool:
        if not self._active:
            return True
        buffer_actions = self.locals.get("buffer_actions")
        infos = self.locals.get("infos")
        if buffer_actions is None or infos is None:
            raise RuntimeError(
                "ExecutedActionRelabel: SB3 did not expose buffer_actions/infos to callbacks; "
                "this stable-baselines3 version stores transitions differently")
        for i, info in enumerate(infos):
            executed = info.get("executed_action")
            if executed is None:
                continue
            scaled = self.model.policy.scale_action(np.asarray(executed, np.float32))
            scaled = np.clip(scaled, -1.0, 1.0)
            if not np.allclose(buffer_actions[i], scaled, atol=1e-6):
                self.relabelled += 1
            buffer_actions[i] = scaled
        return True
