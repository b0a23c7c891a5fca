"""``SafePixelAgent``: a trained agent with its safety model, acting on raw pixel observations.

Training wraps the pixel env (latent observation, shield, reward shaping) and the agent sees
latents; a deployed agent should not need that stack rebuilt by hand. :class:`SafePixelAgent`
holds the agent, the safety model and the :class:`~lbwrap.sb3.checkpoint.AgentSettings`, and
offers SB3's recurrent ``predict`` interface: it filters the frames with the world model (the
filter state travels in ``state``) and shields the agent's proposal exactly as the training
wrappers do, so that ``stable_baselines3.common.evaluation.evaluate_policy(agent, pixel_env)``
evaluates it as trained::

    agent = SafePixelAgent.load("runs/my-run")            # the run's latest checkpoint
    mean_return, std_return = evaluate_policy(agent, agent.settings.make_env(), 5)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from lbwrap.latent_state import LatentState
from lbwrap.latent_tracker import LatentTracker
from lbwrap.safety_model import (
    LatentSafetyModel,
    ObservationScorer,
    ShieldDecision,
    bind_observations,
    shield_decision,
)
from lbwrap.sb3.checkpoint import (
    AgentSettings,
    CheckpointSet,
    algorithm_name,
    find_checkpoint,
    save_checkpoint_set,
)
from lbwrap.sb3.critic_scorer import selection_scorer

__all__ = ["PixelAgentState", "SafePixelAgent"]


@dataclass
class PixelAgentState:
    """The latent filter state of N envs between ``predict`` calls (pass it back unchanged)."""

    latent: LatentState
    embed: torch.Tensor
    """(N, E) encoder embeddings of the latest frames (what the action barrier reads)."""
    executed: np.ndarray
    """(N, A) actions returned by the last call: what the envs executed to reach the next frames."""

    @property
    def num_envs(self) -> int:
        return int(self.executed.shape[0])


class SafePixelAgent:
    """An SB3 agent, its safety model and its wrapper settings, acting on pixels.

    Args:
        agent: the trained agent (it acts on the safety model's latent features).
        safety: the safety model it was trained with.
        settings: how it acts (shield on or off, substitute selection, observation shape).
        action_scorer: overrides the shield's substitute scorer (default: from ``settings``:
            the agent's critic for ``"critic"``, the closest action otherwise).
    """

    def __init__(self, agent: BaseAlgorithm, safety: LatentSafetyModel, settings: AgentSettings,
                 action_scorer: ObservationScorer | None = None) -> None:
        if not isinstance(safety, LatentSafetyModel):
            raise TypeError(f"safety must be a LatentSafetyModel, got {type(safety).__name__}")
        features = agent.observation_space.shape
        if features != (safety.world_model.feature_dim,):
            raise ValueError(
                f"the agent observes shape {features}, the safety model's latent features have "
                f"({safety.world_model.feature_dim},): pair the agent with the model it was "
                "trained with")
        self.agent = agent
        self.safety = safety
        self.settings = settings
        if action_scorer is None and settings.shield:
            action_scorer = selection_scorer(settings.shield_selection, agent, safety)
        self.action_scorer = action_scorer
        self.last_decision: ShieldDecision | None = None
        """What the shield did in the last ``predict`` call (None before the first, and
        without a shield)."""

    @classmethod
    def from_training(
        cls,
        agent: BaseAlgorithm,
        safety: LatentSafetyModel,
        shield: bool,
        observation_shape: tuple[int, ...] | None = None,
        mode: str | None = None,
        shield_selection: str = "closest",
        env_id: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ) -> SafePixelAgent:
        """Pair an agent trained on ``LatentObservation`` (+ ``BarrierShield`` when ``shield``)
        with its safety model. ``observation_shape``: one pixel frame of the env (default: the
        safety model's channel-first ``(C, H, W)``); ``env_id`` / ``env_kwargs``: how
        ``lbwrap.make_pixel_env`` rebuilds the env (stored with the checkpoint)."""
        settings = AgentSettings(
            mode=mode or ("shield" if shield else "none"), algorithm=algorithm_name(agent),
            shield=shield, observation_shape=observation_shape or safety.obs_shape,
            shield_selection=shield_selection, env_id=env_id, env_kwargs=dict(env_kwargs or {}))
        return cls(agent, safety, settings)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> SafePixelAgent:
        """Load the checkpoint at ``path`` (a run folder, its ``checkpoints/`` or one set)."""
        found = find_checkpoint(path)
        safety = LatentSafetyModel.load(found.safety_path, device=device)
        agent = found.load_agent(device=device, safety=safety)
        if found.settings.algorithm == "BarrierSAC":
            safety = agent.safety  # type: ignore[attr-defined]
        found.restore_shield_rng(safety)
        return cls(agent, safety, found.settings)

    def save(self, root: str | Path, run_state: dict[str, Any] | None = None,
             include_replay: bool = False) -> CheckpointSet:
        """Write a checkpoint set under ``root`` (see :mod:`lbwrap.sb3.checkpoint`)."""
        return save_checkpoint_set(root, self.agent, self.safety, self.settings,
                                   run_state=run_state, include_replay=include_replay)

    # ------------------------------------------------------------------ spaces
    @property
    def observation_space(self) -> Any:
        """The pixel observation space (uint8 images of ``settings.observation_shape``)."""
        from gymnasium import spaces

        return spaces.Box(0, 255, self.settings.observation_shape, np.uint8)

    @property
    def action_space(self) -> Any:
        return self.agent.action_space

    # ------------------------------------------------------------------ acting
    def initial_state(self, num_envs: int) -> PixelAgentState:
        """The state before any frame (``predict`` with ``state=None`` starts from it)."""
        tracker = LatentTracker(self.safety.world_model, num_envs)
        return PixelAgentState(tracker.state, tracker.embed,
                               np.zeros((num_envs, self.safety.action_dim), np.float32))

    def _frames(self, observation: Any) -> tuple[np.ndarray, bool]:
        obs = np.asarray(observation)
        shape = self.settings.observation_shape
        single = obs.shape == shape
        if not single and obs.shape[1:] != shape:
            raise ValueError(
                f"expected a pixel observation of shape {shape} or a batch (N, {', '.join(map(str, shape))}), "
                f"got {obs.shape}: pass the frames of the env the agent was trained on")
        if obs.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 images (0-255), got {obs.dtype}: convert [0, 1] floats with "
                "(obs * 255).round().astype(np.uint8)")
        frames = obs[None] if single else obs
        if not self.settings.channel_first:
            frames = frames.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(frames), single

    def predict(
        self,
        observation: Any,
        state: PixelAgentState | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, PixelAgentState]:
        """Actions for pixel observations (one, or a batch of N), and the next filter state.

        ``state``: what the previous call returned (``None``: every env starts an episode);
        ``episode_start``: (N,) bools marking envs whose observation is the first of an episode
        (SB3's convention; ``evaluate_policy`` passes it). The actions are what the envs should
        execute: the agent's, shielded when the agent was trained with a shield.
        """
        frames, single = self._frames(observation)
        n = frames.shape[0]
        if state is None:
            state = self.initial_state(n)
            is_first = np.ones(n, bool)
        else:
            if state.num_envs != n:
                raise ValueError(f"state holds {state.num_envs} envs, the observation {n}: pass "
                                 "the state the previous call returned for the same envs")
            is_first = (np.ones(n, bool) if episode_start is None
                        else np.asarray(episode_start, bool).reshape(n))
        tracker = LatentTracker(self.safety.world_model, n)
        tracker.state, tracker.embed = state.latent, state.embed
        features = tracker.observe(frames, state.executed, is_first)
        proposal, _ = self.agent.predict(features, deterministic=deterministic)
        proposal = np.asarray(proposal, np.float32).reshape(n, self.safety.action_dim)
        if self.settings.shield:
            decision = shield_decision(self.safety, tracker.state, proposal, embed=tracker.embed,
                                       scorer=bind_observations(self.action_scorer, features))
            self.last_decision = decision
            executed = decision.executed
        else:
            low = self.safety.action_low.cpu().numpy()
            high = self.safety.action_high.cpu().numpy()
            executed = np.clip(proposal, low, high)
        new_state = PixelAgentState(tracker.state, tracker.embed, executed.astype(np.float32))
        return (executed[0] if single else executed), new_state
