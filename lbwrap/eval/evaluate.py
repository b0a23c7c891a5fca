"""Deterministic evaluation on layouts that differ from each other and from training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm

from lbwrap.safety_model import LatentSafetyModel, ObservationScorer
from lbwrap.sb3.pixel_agent import SafePixelAgent

__all__ = ["EVAL_SEED_OFFSET", "EvalResult", "evaluate_agent", "evaluate_pixel_agent"]

#: Evaluation layouts use reset seeds from here on; training envs are seeded below it.
EVAL_SEED_OFFSET = 1_000_000


@dataclass
class EvalResult:
    """Per-episode returns, costs and violating env steps, with summaries."""

    returns: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    violations: list[int] = field(default_factory=list)
    interventions: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        def ms(x: list[float]) -> tuple[float, float]:
            return float(np.mean(x)), float(np.std(x))

        r, c, v = ms(self.returns), ms(self.costs), ms([float(x) for x in self.violations])
        return {"return_mean": r[0], "return_std": r[1], "cost_mean": c[0], "cost_std": c[1],
                "violations_mean": v[0], "violations_std": v[1], "episodes": len(self.returns),
                "interventions_mean": float(np.mean(self.interventions)) if self.interventions else 0.0}


def evaluate_pixel_agent(
    agent: SafePixelAgent,
    make_env: Callable[[], gym.Env] | None = None,
    episodes: int = 5,
    seed_offset: int = EVAL_SEED_OFFSET,
    deterministic: bool = True,
) -> EvalResult:
    """Run ``episodes`` episodes of a :class:`~lbwrap.sb3.SafePixelAgent` on raw pixel envs,
    each on its own layout (reset seed ``seed_offset + k``), shielded as in training.

    ``make_env``: builds the pixel env (default: ``agent.settings.make_env``, the training env).
    Nothing is learned during evaluation.
    """
    if episodes < 0:
        raise ValueError(f"episodes must be >= 0, got {episodes}")
    make = make_env or agent.settings.make_env
    result = EvalResult()
    for k in range(episodes):
        env = make()
        obs, _ = env.reset(seed=seed_offset + k)
        state = None
        ret = cost = 0.0
        viol = interventions = 0
        done = False
        while not done:
            action, state = agent.predict(obs, state, episode_start=np.array([state is None]),
                                          deterministic=deterministic)
            obs, reward, terminated, truncated, info = env.step(action)
            decision = agent.last_decision
            ret += float(reward)
            cost += float(info["cost"])
            viol += int(info.get("violations", info["cost"] > 0))
            interventions += int(decision is not None and bool(decision.intervened[0]))
            done = terminated or truncated
        env.close()
        result.returns.append(ret)
        result.costs.append(cost)
        result.violations.append(viol)
        result.interventions.append(interventions)
        result.seeds.append(seed_offset + k)
    return result


def evaluate_agent(
    agent: BaseAlgorithm,
    make_env: Callable[[], gym.Env],
    safety: LatentSafetyModel,
    episodes: int = 5,
    shield: bool = False,
    seed_offset: int = EVAL_SEED_OFFSET,
    deterministic: bool = True,
    action_scorer: ObservationScorer | None = None,
) -> EvalResult:
    """Evaluate an SB3 agent trained on the latent wrappers (:func:`evaluate_pixel_agent`).

    The agent acts on pixels through :class:`~lbwrap.sb3.SafePixelAgent` with the same live
    safety model (and the shield when ``shield``, with ``action_scorer`` choosing substitutes
    as in training); ``make_env`` builds the pixel env.
    """
    first = make_env()  # its observation shape, then the first episode's env
    shape = getattr(first.observation_space, "shape", None)
    if not shape:
        first.close()
        raise ValueError(f"evaluate_agent needs a pixel env (an image Box observation), got "
                         f"{first.observation_space}: build it with lbwrap.make_pixel_env or "
                         "as_pixel_env")
    pixel_agent = SafePixelAgent.from_training(agent, safety, shield=shield,
                                               observation_shape=tuple(cast(tuple, shape)))
    pixel_agent.action_scorer = action_scorer
    unused = [first]

    def make() -> gym.Env:
        return unused.pop() if unused else make_env()

    try:
        return evaluate_pixel_agent(pixel_agent, make, episodes=episodes,
                                    seed_offset=seed_offset, deterministic=deterministic)
    finally:
        for env in unused:  # episodes=0
            env.close()
