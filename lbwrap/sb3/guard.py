"""Stop training when weights turn NaN/inf, naming the model, instead of crashing inside SB3.

Non-finite *updates* are already skipped by lbwrap's trainers (and counted:
``LatentSafetyModel.skipped_updates``); weights can still turn non-finite through SB3's own
updates (an exploding critic) or user code. :class:`NonFiniteGuard` checks every model of the
agent and the safety model at a fixed interval and raises :class:`NonFiniteWeightsError`, so the
caller can keep the last checkpoint (which :func:`check_finite` verified before it was written)
as the last finite state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from lbwrap.safety_model import LatentSafetyModel

__all__ = ["NonFiniteGuard", "NonFiniteWeightsError", "check_finite", "explain_nonfinite",
           "nonfinite_models"]


class NonFiniteWeightsError(RuntimeError):
    """Weights of one or more models turned NaN/inf; ``models`` names them."""

    def __init__(self, models: list[str], step: int | None = None) -> None:
        self.models = list(models)
        self.step = step
        at = f" at agent step {step}" if step is not None else ""
        super().__init__(
            f"non-finite (NaN/inf) weights in {', '.join(self.models)}{at}. Training stopped; "
            "the last checkpoint holds the last finite state: resume from it with a lower "
            "learning rate or gradient clip for that model.")


def nonfinite_models(agent: BaseAlgorithm | None, safety: LatentSafetyModel | None) -> list[str]:
    """Names of the models with a NaN/inf weight: the agent's policy parts as
    ``"<Algorithm>.<part>"`` (e.g. ``SAC.actor``, ``SAC.critic``) and the safety model's as
    ``"safety.<model>"`` (``safety.world_model``, ``safety.barrier``, ``safety.action_barrier``)."""
    names: list[str] = []
    if agent is not None:
        algo = type(agent).__name__
        for part, module in agent.policy.named_children():
            if part == "safety" or not isinstance(module, torch.nn.Module):
                continue  # BarrierSAC's policy owns the safety model: checked below
            if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
                names.append(f"{algo}.{part}")
    if safety is not None:
        names += [f"safety.{name}" for name in safety.nonfinite_modules()]
    return names


def check_finite(agent: BaseAlgorithm | None, safety: LatentSafetyModel | None) -> None:
    """Raise :class:`NonFiniteWeightsError` naming every model with a NaN/inf weight."""
    bad = nonfinite_models(agent, safety)
    if bad:
        raise NonFiniteWeightsError(bad, None if agent is None else int(agent.num_timesteps))


@contextmanager
def explain_nonfinite(agent: BaseAlgorithm | None,
                      safety: LatentSafetyModel | None) -> Iterator[None]:
    """Turn an error raised while weights are NaN/inf (e.g. SB3's ``Expected parameter loc ...
    to satisfy the constraint Real()`` between two :class:`NonFiniteGuard` checks) into a
    :class:`NonFiniteWeightsError` naming the models; other errors pass unchanged."""
    try:
        yield
    except NonFiniteWeightsError:
        raise
    except Exception as exc:
        bad = nonfinite_models(agent, safety)
        if bad:
            step = None if agent is None else int(agent.num_timesteps)
            raise NonFiniteWeightsError(bad, step) from exc
        raise


class NonFiniteGuard(BaseCallback):
    """SB3 callback: every ``check_every`` timesteps (and at the end of ``learn``), raise
    :class:`NonFiniteWeightsError` if the agent's or ``safety``'s weights hold NaN/inf."""

    def __init__(self, safety: LatentSafetyModel | None, check_every: int = 1000) -> None:
        super().__init__(verbose=0)
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.safety = safety
        self.check_every = int(check_every)
        self._last = 0

    def _on_training_start(self) -> None:
        self._last = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.check_every:
            self._last = self.num_timesteps
            check_finite(self.model, self.safety)
        return True

    def _on_training_end(self) -> None:
        check_finite(self.model, self.safety)
