"""Deterministic evaluation on layouts that differ from each other and from training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm

from lbwrap.safety_model import LatentSafetyModel, ObservationScorer
from lbwrap.wrappers import BarrierShield, LatentObservation

__all__ = ["EVAL_SEED_OFFSET", "EvalResult", "evaluate_agent"]

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
    """Run ``episodes`` deterministic episodes, each on its own layout (reset seed offset + k).

    The env is wrapped like training (latent observation, and the shield when ``shield``, with
    ``action_scorer`` choosing substitutes as in training), with the same live safety model;
    nothing is learned during evaluation.
    """
    result = EvalResult()
    for k in range(episodes):
        env: gym.Env = LatentObservation(make_env(), safety)
        if shield:
            env = BarrierShield(env, safety, action_scorer=action_scorer)
        obs, _ = env.reset(seed=seed_offset + k)
        ret = cost = 0.0
        viol = interventions = 0
        done = False
        while not done:
            action, _ = agent.predict(obs, deterministic=deterministic)
            obs, reward, terminated, truncated, info = env.step(action)
            ret += float(info.get("env_reward", reward))
            cost += float(info["cost"])
            viol += int(info.get("violations", info["cost"] > 0))
            interventions += int(bool(info.get("shield_intervened", False)))
            done = terminated or truncated
        env.close()
        result.returns.append(ret)
        result.costs.append(cost)
        result.violations.append(viol)
        result.interventions.append(interventions)
        result.seeds.append(seed_offset + k)
    return result
