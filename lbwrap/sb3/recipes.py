"""Recipes: build a complete safe agent (env stack + SB3 algorithm + callbacks) from a mode name.

Modes (all see the same learned latent observations and co-train the same safety model, so they
differ only in how safety enters):

* ``none``        — plain SAC on latents (the baseline a user would write);
* ``shield``      — SAC + :class:`VecBarrierShield` (action reshaping at execution time);
* ``penalty``     — SAC + :class:`VecBarrierPenalty` (reward reshaping);
* ``lagrangian``  — SAC + :class:`VecLagrangianPenalty` (cost-penalised reward, dual ascent);
* ``barrier``     — :class:`BarrierSAC` (the paper's barrier term in the actor loss);
* ``barrier+shield`` — both;
* ``lagrangian+shield`` — SAC-Lagrangian under the shield: the shield blocks what it predicts
  unsafe, and the Lagrangian term teaches the agent from the violations that still happen;
* ``penalty+shield`` — the barrier penalty under the shield: the shield blocks what it predicts
  unsafe, and the penalty (B falling) teaches the agent ahead of the hazard, where the shield
  alone gives no learning signal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from lbwrap.experimental import RecipeExperimental, as_experimental, move_deprecated_option
from lbwrap.safety_model import LatentSafetyModel, ObservationScorer
from lbwrap.sb3.callback import CoTrainCallback
from lbwrap.sb3.checkpoint import AgentSettings, algorithm_name
from lbwrap.sb3.critic_scorer import SHIELD_SELECTIONS, selection_scorer
from lbwrap.sb3.executed_actions import ExecutedActionRelabel
from lbwrap.sb3.lagrangian import LagrangianLoggerCallback, VecLagrangianPenalty
from lbwrap.sb3.pixel_agent import SafePixelAgent
from lbwrap.sb3.policy import BARRIER_TERMS, BarrierSAC
from lbwrap.sb3.refresh import LatentRefresher
from lbwrap.sb3.vec_wrappers import (
    VecBarrierPenalty,
    VecBarrierShield,
    VecLatentObservation,
    VecRewardScale,
    find_vec_shield,
)

__all__ = ["BENCHMARKED_SAC_KWARGS", "MODES", "SHIELD_MODES", "AgentRecipe", "SafeAgent",
           "build_safe_agent"]

MODES = ("none", "shield", "penalty", "lagrangian", "barrier", "barrier+shield", "lagrangian+shield",
         "penalty+shield")
#: The modes whose executed actions pass the barrier shield (also in evaluation).
SHIELD_MODES = ("shield", "barrier+shield", "lagrangian+shield", "penalty+shield")
#: SAC arguments of the benchmark and the quick preset (in agent steps): :class:`AgentRecipe`'s
#: default ``sac_kwargs``.
BENCHMARKED_SAC_KWARGS: dict[str, Any] = {"learning_starts": 500, "buffer_size": 100_000,
                                          "batch_size": 256, "ent_coef": "auto_0.1",
                                          "gradient_steps": 1}


@dataclass
class AgentRecipe:
    """Knobs of :func:`build_safe_agent`. Step counts are agent steps (SB3 timesteps).

    The defaults are the settings ``benchmarks/safety_benchmark.py`` measured and the
    ``quick`` preset of ``examples/train_sac_shielded.py`` runs (:class:`lbwrap.sb3.TrainConfig`
    at action repeat 2; :meth:`~lbwrap.sb3.TrainConfig.recipe` builds this recipe from it)."""

    mode: str = "shield"
    num_envs: int = 1
    subproc: bool = False
    """Run envs in worker processes (the safety wrappers stay in the main process)."""
    sac_kwargs: dict[str, Any] = field(default_factory=lambda: dict(BENCHMARKED_SAC_KWARGS))
    """SAC arguments (learning_starts, buffer_size, batch_size, ent_coef, ...). Default: the
    benchmarked ones, :data:`BENCHMARKED_SAC_KWARGS`; a dict given replaces them whole (SB3's
    defaults fill what it leaves out), so write ``{**BENCHMARKED_SAC_KWARGS, "batch_size": 64}``
    to change one."""
    train_every: int = 100
    """Agent steps between safety-model training calls (:class:`CoTrainCallback`)."""
    updates_per_train: int = 10
    """World-model + barrier updates per training call."""
    model_learning_starts: int = 50
    """Agent steps collected before the safety model's first update."""
    pretrain_updates: int = 200
    """Extra safety-model updates in one training call (see :class:`CoTrainCallback`)."""
    pretrain_min_unsafe: int = 3
    """Defer ``pretrain_updates`` until the replay holds this many unsafe steps (0: no deferral;
    see :class:`CoTrainCallback`)."""
    penalty_scale: float = 1.0
    intervention_penalty: float = 0.1
    """Reward (env units) subtracted when the shield replaces the agent's action (shield modes):
    teaches the agent to stop proposing what the shield blocks."""
    shield_selection: Literal["closest", "critic", "reward"] = "closest"
    """How the shield picks a replaced action's substitute among the passing candidates:
    ``"closest"`` to the proposal, or the one the agent's ``"critic"`` rates highest
    (:func:`~lbwrap.sb3.critic_scorer`), or the highest world-model ``"reward"`` at the next
    state (:func:`~lbwrap.safety_model.reward_scorer`)."""
    cost_limit: float = 25.0
    lambda_lr: float = 0.05
    barrier_weight: float = 1.0
    """Weight of BarrierSAC's barrier term in the barrier modes (the paper's eta; 0: off)."""
    barrier_horizon: int = 5
    barrier_term: Literal["imagined", "action"] = "imagined"
    """The actor's barrier term in the barrier modes (:class:`BarrierSAC`'s ``barrier_term``):
    ``"imagined"`` (the paper's, B(z) along imagined steps) or ``"action"`` (the latent action
    barrier at the proposed action; :func:`build_safe_agent` then builds the safety model with
    ``latent_action_barrier=True``)."""
    reward_scale: float = 10.0
    """Multiply the reward the agent learns from (:class:`VecRewardScale`, outermost wrapper, so
    penalties are scaled with it); logs, evaluation and the world model keep the env's units."""
    learn_from_executed: bool = False
    """Store the action the env executed (the shield's) in SAC's replay instead of the proposal
    (:class:`ExecutedActionRelabel`); only changes anything in the shield modes."""
    keep_proposal: bool = False
    """With ``learn_from_executed``: store the proposal's transition (intervention penalty
    included) *and* the executed action's (penalty given back), so that the critic learns both
    what the blocked proposal led to and what the substitute is worth."""
    refresh_every: int | None = field(default=None, repr=False)
    """Deprecated keyword, accepted until the next release: moved to
    ``experimental=RecipeExperimental(refresh_every=...)`` (agent steps; a ``DeprecationWarning``
    unless it is 0 or ``None``); the attribute then reads ``None``."""
    experimental: RecipeExperimental = field(default_factory=RecipeExperimental)
    """Options measured to have no effect (:mod:`lbwrap.experimental`)."""

    def __post_init__(self) -> None:
        self.experimental = as_experimental(self.experimental, RecipeExperimental, "AgentRecipe")
        move_deprecated_option(self, "refresh_every", "refresh_every", default=0)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not self.reward_scale > 0:
            raise ValueError(f"reward_scale must be > 0, got {self.reward_scale}")
        if self.keep_proposal and not self.learn_from_executed:
            raise ValueError("keep_proposal=True needs learn_from_executed=True (it stores the "
                             "executed action besides the proposal)")
        if self.barrier_term not in BARRIER_TERMS:
            raise ValueError(f"barrier_term must be one of {BARRIER_TERMS}, got "
                             f"{self.barrier_term!r}")
        if not (math.isfinite(self.barrier_weight) and self.barrier_weight >= 0):
            raise ValueError(f"barrier_weight must be a finite number >= 0 (0 turns the barrier "
                             f"term off), got {self.barrier_weight!r}")
        if self.shield_selection not in SHIELD_SELECTIONS:
            raise ValueError(f"shield_selection must be one of {SHIELD_SELECTIONS}, got "
                             f"{self.shield_selection!r}")


@dataclass
class SafeAgent:
    """What :func:`build_safe_agent` returns."""

    agent: BaseAlgorithm
    env: VecEnv
    safety: LatentSafetyModel
    cotrain: CoTrainCallback
    callbacks: list[BaseCallback]
    recipe: AgentRecipe = field(default_factory=AgentRecipe)
    pixel_shape: tuple[int, ...] = ()
    """Shape of one pixel observation of the envs, before the latent wrapper."""

    def callback(self, *extra: BaseCallback) -> CallbackList:
        return CallbackList([*self.callbacks, *extra])

    def settings(self, env_id: str | None = None,
                 env_kwargs: dict[str, Any] | None = None) -> AgentSettings:
        """How this agent acts on pixels (for checkpoints and :class:`SafePixelAgent`);
        ``env_id`` / ``env_kwargs`` name the env (``lbwrap.make_pixel_env``) when it has an id."""
        return AgentSettings(
            mode=self.recipe.mode, algorithm=algorithm_name(self.agent),
            shield=self.recipe.mode in SHIELD_MODES, observation_shape=self.pixel_shape,
            shield_selection=self.recipe.shield_selection,
            intervention_penalty=self.recipe.intervention_penalty,
            reward_scale=self.recipe.reward_scale, env_id=env_id,
            env_kwargs=dict(env_kwargs or {}))

    def pixel_agent(self, env_id: str | None = None,
                    env_kwargs: dict[str, Any] | None = None) -> SafePixelAgent:
        """The agent with its safety model and settings, acting on raw pixels as in training
        (same live models and shield scorer; save it with :meth:`SafePixelAgent.save`)."""
        return SafePixelAgent(self.agent, self.safety, self.settings(env_id, env_kwargs),
                              action_scorer=self.action_scorer)

    @property
    def action_scorer(self) -> ObservationScorer | None:
        """The shield's substitute scorer (pass it to evaluation to shield as in training)."""
        shield = find_vec_shield(self.env)
        return None if shield is None else shield.action_scorer

    def set_agent(self, agent: BaseAlgorithm) -> None:
        """Replace the agent (e.g. by one loaded from a checkpoint) and re-bind the shield's
        critic scorer to it."""
        self.agent = agent
        _bind_scorer(self.env, agent, self.recipe)


def _bind_scorer(stack: VecEnv, agent: BaseAlgorithm, recipe: AgentRecipe) -> None:
    shield = find_vec_shield(stack)
    if shield is not None:
        shield.action_scorer = selection_scorer(recipe.shield_selection, agent, shield.safety)


def build_safe_agent(
    env_fns: list[Callable[[], gym.Env]],
    recipe: AgentRecipe,
    safety: LatentSafetyModel | None = None,
    seed: int | None = None,
    device: str = "auto",
    safety_kwargs: dict[str, Any] | None = None,
    tensorboard_log: str | None = None,
) -> SafeAgent:
    """Build the VecEnv stack, the safety model (unless given), the agent and its callbacks."""
    venv: VecEnv = SubprocVecEnv(env_fns, start_method="spawn") if recipe.subproc else DummyVecEnv(env_fns)
    mode = recipe.mode
    barrier_mode = mode in ("barrier", "barrier+shield")
    if safety is None:
        kwargs = dict(safety_kwargs or {})
        if barrier_mode and recipe.barrier_term == "action":
            kwargs.setdefault("latent_action_barrier", True)
        safety = LatentSafetyModel.for_env(venv, seed=seed, device=device, **kwargs)
    venv.seed(seed)
    stack: VecEnv = VecLatentObservation(venv, safety)
    if mode in SHIELD_MODES:
        stack = VecBarrierShield(stack, safety, intervention_penalty=recipe.intervention_penalty)
    if mode in ("penalty", "penalty+shield"):  # outside the shield: B along executed actions
        stack = VecBarrierPenalty(stack, safety, scale=recipe.penalty_scale)
    if mode in ("lagrangian", "lagrangian+shield"):  # outside the shield: costs of executed actions
        stack = VecLagrangianPenalty(stack, cost_limit=recipe.cost_limit, lambda_lr=recipe.lambda_lr)
    if recipe.reward_scale != 1.0:
        stack = VecRewardScale(stack, recipe.reward_scale)
    common = {"seed": seed, "device": device, "verbose": 0, "tensorboard_log": tensorboard_log,
              **recipe.sac_kwargs}
    if barrier_mode:
        agent: BaseAlgorithm = BarrierSAC("MlpPolicy", stack, safety=safety,
                                          barrier_weight=recipe.barrier_weight,
                                          barrier_horizon=recipe.barrier_horizon,
                                          barrier_term=recipe.barrier_term, **common)
    else:
        agent = SAC("MlpPolicy", stack, **common)
    _bind_scorer(stack, agent, recipe)
    cotrain = CoTrainCallback(safety, train_every=recipe.train_every,
                              updates_per_train=recipe.updates_per_train,
                              learning_starts=recipe.model_learning_starts,
                              pretrain_updates=recipe.pretrain_updates,
                              pretrain_min_unsafe=recipe.pretrain_min_unsafe)
    callbacks: list[BaseCallback] = [cotrain]
    refresh_every = recipe.experimental.refresh_every
    if refresh_every > 0:  # after cotrain: it maps SB3 slots to the frames cotrain wrote
        callbacks.append(LatentRefresher(safety, refresh_every=refresh_every))
    if mode in ("lagrangian", "lagrangian+shield"):
        callbacks.append(LagrangianLoggerCallback())
    if recipe.learn_from_executed:
        callbacks.append(ExecutedActionRelabel(
            keep_proposal=recipe.keep_proposal,
            intervention_reward=(recipe.intervention_penalty * recipe.reward_scale
                                 if recipe.keep_proposal else 0.0)))
    pixel_shape = venv.observation_space.shape
    assert pixel_shape is not None  # VecLatentObservation checked that it is an image space
    return SafeAgent(agent=agent, env=stack, safety=safety, cotrain=cotrain, callbacks=callbacks,
                     recipe=recipe, pixel_shape=tuple(pixel_shape))
