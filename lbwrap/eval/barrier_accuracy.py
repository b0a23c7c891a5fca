"""Storing collected episodes in the safety model's replay; how well sign(B) separates their states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lbwrap.eval.data_collection import collect_episodes
from lbwrap.safety_model import LatentSafetyModel

__all__ = ["add_episodes", "heldout_barrier_accuracy", "random_episodes"]

_KEYS = ("obs", "action", "reward", "cost", "is_first", "is_terminal")


@torch.no_grad()
def heldout_barrier_accuracy(
    safety: LatentSafetyModel, episodes: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, float]:
    """Balanced accuracy of sign(B) on the posterior means of whole episodes.

    ``episodes``: dicts with ``obs`` (T, C, H, W) uint8, ``action`` (T, A) (the action that led
    into each frame), ``is_first`` (T,), ``cost`` (T,) — the replay's convention. A state is
    unsafe when its cost > kappa and safe when < kappa. Classes absent from the data give NaN.
    """
    kappa = safety.config.barrier.kappa
    was_training = safety.training
    safety.eval()
    values, costs = [], []
    try:
        for ep in episodes:
            posts, _ = safety.world_model.observe(
                torch.as_tensor(ep["obs"])[None], torch.as_tensor(ep["action"])[None],
                torch.as_tensor(ep["is_first"])[None], sample=False,
            )
            values.append(safety.barrier.value(posts)[0].float().cpu().numpy())
            costs.append(np.asarray(ep["cost"]))
    finally:
        safety.train(was_training)
    b, cost = np.concatenate(values), np.concatenate(costs)
    safe, unsafe = cost < kappa, cost > kappa
    acc_safe = float((b[safe] >= 0).mean()) if safe.any() else float("nan")
    acc_unsafe = float((b[unsafe] < 0).mean()) if unsafe.any() else float("nan")
    return {"heldout_balanced_accuracy": (acc_safe + acc_unsafe) / 2,
            "heldout_safe_accuracy": acc_safe, "heldout_unsafe_accuracy": acc_unsafe,
            "heldout_n_safe": int(safe.sum()), "heldout_n_unsafe": int(unsafe.sum())}


def random_episodes(env: Any, n_steps: int, seed: int,
                    max_len: int = 0) -> list[dict[str, np.ndarray]]:
    """About ``n_steps`` random-policy steps as episodes in the replay's convention.

    Shorthand for :func:`~lbwrap.eval.data_collection.collect_episodes` with ``policy="random"``
    (same episodes, layouts and random draws).
    """
    return collect_episodes(env, n_steps, seed, max_len, policy="random")


def add_episodes(safety: LatentSafetyModel, episodes: Sequence[Mapping[str, np.ndarray]]) -> None:
    """Store episodes from :func:`collect_episodes` in the safety model's replay (one env stream)."""
    for ep in episodes:
        for t in range(len(ep["obs"])):
            safety.add_step(*(ep[key][t:t + 1] for key in _KEYS))
