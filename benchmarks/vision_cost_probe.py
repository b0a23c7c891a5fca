"""Can *any* per-frame model tell unsafe from safe frames on held-out Safety Gym layouts?

    python benchmarks/vision_cost_probe.py          # SafetyPointGoal1Vision-v0, ~7 min on 2 cores

This probe separates "the method" from "the data": it trains a plain supervised CNN classifier,
frame -> (cost > 0), on frames of training layouts (class-balanced loss) and tests it on frames of
other layouts, once per data-collection policy (``lbwrap.eval.collect_episodes``): the random
policy and the scripted, privileged hazard visitor. If a plain CNN stays at chance too, the
difficulty is not specific to the world model or the barrier. It also reports how much the mean
unsafe and safe frames differ per horizontal band of the image.

Measured (2026-11-26/27, 4000 + 2000 agent steps per policy): on random-policy data (70 unsafe
training frames) the CNN scored 0.98 on training layouts and 0.46 on held-out ones; on
hazard-visitor data (765 unsafe training frames, 19 %) it scored 0.81 on held-out layouts. The
camera shows the hazard around the robot; random-policy data holds too few examples of it.

Writes ``<out>/vision_cost_probe.md`` and ``.csv``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch
import tyro
from _report import machine, write_csv, write_markdown
from torch import nn

import lbwrap
from lbwrap.eval.data_collection import COLLECTION_POLICIES, collect_episodes


@dataclass
class Args:
    env_id: str = "SafetyPointGoal1Vision-v0"
    """Vision task."""
    train_steps: int = 4000
    """Agent steps on training layouts (2 env steps each), per policy."""
    heldout_steps: int = 2000
    """Agent steps on other layouts, per policy."""
    episode_len: int = 100
    """Agent steps per layout (short episodes: more layouts per step)."""
    iterations: int = 1500
    """Adam steps of the classifier (batch 64)."""
    policies: tuple[str, ...] = COLLECTION_POLICIES
    """Data-collection policies to compare (``random``, ``hazard-visitor``), one after the other."""
    seed: int = 0
    """Seed of data and classifier."""
    out: Path = Path("benchmarks/results")
    """Output folder."""


def frames_and_labels(episodes) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([ep["obs"] for ep in episodes])
    y = np.concatenate([ep["cost"] for ep in episodes]) > 0.01
    return x, y


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return 0.5 * (float(pred[y].mean()) + float((~pred[~y]).mean()))


def train_probe(x_train: np.ndarray, y_train: np.ndarray, args: Args) -> nn.Module:
    """A small CNN, frame -> logit of (cost > 0), trained with a class-balanced loss."""
    torch.manual_seed(args.seed)
    net = nn.Sequential(nn.Conv2d(3, 16, 4, 2), nn.ReLU(), nn.Conv2d(16, 32, 4, 2), nn.ReLU(),
                        nn.Conv2d(32, 32, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 1))
    optimiser = torch.optim.Adam(net.parameters(), 1e-3)
    xt = torch.as_tensor(x_train).float() / 255
    yt = torch.as_tensor(y_train).float()
    weight = torch.where(yt > 0, 0.5 / yt.mean(), 0.5 / (1 - yt.mean()))
    generator = torch.Generator().manual_seed(args.seed)
    for _ in range(args.iterations):
        idx = torch.randint(0, len(xt), (64,), generator=generator)
        logits = net(xt[idx]).squeeze(-1)
        loss = (nn.functional.binary_cross_entropy_with_logits(logits, yt[idx], reduction="none")
                * weight[idx]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net


@torch.no_grad()
def probe_accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    logits = torch.cat([net(torch.as_tensor(x[i:i + 512]).float() / 255).squeeze(-1)
                        for i in range(0, len(x), 512)])
    return balanced_accuracy(logits.numpy() > 0, y)


def band_differences(x: np.ndarray, y: np.ndarray) -> list[float]:
    """Mean |mean unsafe frame - mean safe frame| in each horizontal quarter, top to bottom."""
    diff = x[y].astype(np.float32).mean(0) / 255 - x[~y].astype(np.float32).mean(0) / 255
    quarter = diff.shape[1] // 4
    return [float(np.abs(diff[:, i * quarter:(i + 1) * quarter]).mean()) for i in range(4)]


def probe_policy(policy: str, args: Args) -> tuple[list[dict], float]:
    """Collect train/held-out data with ``policy``, train the probe, score both splits."""
    env = lbwrap.make_pixel_env(args.env_id, size=64, action_repeat=2)
    start = time.perf_counter()
    try:
        train = collect_episodes(env, args.train_steps, args.seed, args.episode_len, policy=policy)
        heldout = collect_episodes(env, args.heldout_steps, 10_000 + args.seed, args.episode_len,
                                   policy=policy)
    finally:
        env.close()
    collect_s = time.perf_counter() - start
    x_train, y_train = frames_and_labels(train)
    x_held, y_held = frames_and_labels(heldout)
    net = train_probe(x_train, y_train, args)
    rows = []
    for name, eps, x, y in (("train", train, x_train, y_train),
                            ("heldout", heldout, x_held, y_held)):
        bands = band_differences(x, y)
        rows.append({"policy": policy, "split": name, "layouts": len(eps), "frames": len(y),
                     "unsafe_frames": int(y.sum()), "unsafe_fraction": float(y.mean()),
                     "cnn_balanced_accuracy": probe_accuracy(net, x, y),
                     **{f"mean_abs_diff_band{i}": bands[i] for i in range(4)}})
    return rows, collect_s


def main(args: Args) -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows: list[dict] = []
    collect_s = 0.0
    for policy in args.policies:
        policy_rows, seconds = probe_policy(policy, args)
        rows += policy_rows
        collect_s += seconds
    total_s = time.perf_counter() - start
    write_csv(args.out / "vision_cost_probe.csv", rows)
    lines = [(f"# vision cost probe {date.today()}, {machine()}, "
             f"{args.env_id}, 64px; collection {collect_s:.0f} s, total {total_s:.0f} s"),
             "",
             ("| data policy | split | layouts | frames | unsafe frames (%) | "
              "per-frame CNN balanced accuracy | "
              "mean abs(unsafe - safe) by image band, top -> bottom |"),
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        band = ", ".join(f"{r[f'mean_abs_diff_band{i}']:.3f}" for i in range(4))
        lines.append(f"| {r['policy']} | {r['split']} | {r['layouts']} | {r['frames']} | "
                     f"{r['unsafe_frames']} ({100 * r['unsafe_fraction']:.1f} %) | "
                     f"{r['cnn_balanced_accuracy']:.3f} | {band} |")
    write_markdown(args.out / "vision_cost_probe.md", lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
