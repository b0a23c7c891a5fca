"""Random-policy episodes, and how well the barrier's sign separates their safe and unsafe states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

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

    Each episode holds the frames, the action that led into each (zeros first), reward and cost on
    arriving, ``is_first``, ``is_terminal``; layout ``k`` comes from ``reset(seed=seed*1000+k)``.
    ``max_len > 0`` cuts episodes after that many agent steps (more layouts per step).
    """
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    adim = env.action_space.shape[0]
    episodes: list[dict[str, np.ndarray]] = []
    total = k = 0
    while total < n_steps:
        obs, _ = env.reset(seed=seed * 1000 + k)
        k += 1
        cols: dict[str, list[Any]] = {"obs": [obs], "action": [np.zeros(adim, np.float32)],
                                      "reward": [0.0], "cost": [0.0], "is_first": [True],
                                      "is_terminal": [False]}
        while True:
            action = rng.uniform(low, high).astype(np.float32)
            obs, reward, term, trunc, info = env.step(action)
            for key, value in (("obs", obs), ("action", action), ("reward", float(reward)),
                               ("cost", float(info["cost"])), ("is_first", False),
                               ("is_terminal", bool(term))):
                cols[key].append(value)
            cut = max_len > 0 and len(cols["obs"]) > max_len
            if term or trunc or cut or total + len(cols["obs"]) >= n_steps:
                break
        total += len(cols["obs"])
        episodes.append({
            "obs": np.stack(cols["obs"]), "action": np.stack(cols["action"]),
            "reward": np.asarray(cols["reward"], np.float32),
            "cost": np.asarray(cols["cost"], np.float32),
            "is_first": np.asarray(cols["is_first"], bool),
            "is_terminal": np.asarray(cols["is_terminal"], bool),
        })
    return episodes


def add_episodes(safety: LatentSafetyModel, episodes: Sequence[Mapping[str, np.ndarray]]) -> None:
    """Store episodes from :func:`random_episodes` in the safety model's replay (one env stream)."""
    for ep in episodes:
        for t in range(len(ep["obs"])):
            safety.add_step(*(ep[key][t:t + 1] for key in _KEYS))
