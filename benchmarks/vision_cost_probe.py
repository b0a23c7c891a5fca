"""Can *any* per-frame model tell unsafe from safe frames on held-out Safety Gym layouts?

    python benchmarks/vision_cost_probe.py          # SafetyPointGoal1Vision-v0, ~5 min on 2 cores

The barrier's held-out accuracy on SafetyPointGoal1Vision stays at chance (see
``benchmarks/core_speed.py``). This probe separates "the method" from "the data": it trains a
plain supervised CNN classifier, frame -> (cost > 0), on random-policy frames of training layouts
(class-balanced loss) and tests it on frames of other layouts. If that also stays at chance, the
difficulty is not specific to the world model or the barrier: single frames of this data do not
carry a cue that generalises across layouts at this data size. It also reports how much the mean
unsafe and safe frames differ per horizontal band of the image.

Writes ``<out>/vision_cost_probe.md`` and ``.csv``.
"""

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
from lbwrap.eval.barrier_accuracy import random_episodes


@dataclass
class Args:
    env_id: str = "SafetyPointGoal1Vision-v0"
    """Vision task."""
    train_steps: int = 4000
    """Random-policy agent steps on training layouts (2 env steps each)."""
    heldout_steps: int = 2000
    """Random-policy agent steps on other layouts."""
    episode_len: int = 100
    """Agent steps per layout (short episodes: more layouts per step)."""
    iterations: int = 1500
    """Adam steps of the classifier (batch 64)."""
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


def main(args: Args) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    env = lbwrap.make_pixel_env(args.env_id, size=64, action_repeat=2)
    start = time.perf_counter()
    train = random_episodes(env, args.train_steps, args.seed, max_len=args.episode_len)
    heldout = random_episodes(env, args.heldout_steps, 10_000 + args.seed, max_len=args.episode_len)
    env.close()
    collect_s = time.perf_counter() - start
    x_train, y_train = frames_and_labels(train)
    x_held, y_held = frames_and_labels(heldout)

    bands = {}
    for name, x, y in (("train", x_train, y_train), ("heldout", x_held, y_held)):
        diff = x[y].astype(np.float32).mean(0) / 255 - x[~y].astype(np.float32).mean(0) / 255
        quarter = diff.shape[1] // 4
        bands[name] = [float(np.abs(diff[:, i * quarter:(i + 1) * quarter]).mean()) for i in range(4)]

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

    accuracy = {}
    with torch.no_grad():
        for name, x, y in (("train", x_train, y_train), ("heldout", x_held, y_held)):
            logits = torch.cat([net(torch.as_tensor(x[i:i + 512]).float() / 255).squeeze(-1)
                                for i in range(0, len(x), 512)])
            accuracy[name] = balanced_accuracy(logits.numpy() > 0, y)
    total_s = time.perf_counter() - start

    rows = [{"split": name, "layouts": len(eps), "frames": len(y), "unsafe_frames": int(y.sum()),
             "unsafe_fraction": float(y.mean()), "cnn_balanced_accuracy": accuracy[name],
             **{f"mean_abs_diff_band{i}": bands[name][i] for i in range(4)}}
            for name, eps, y in (("train", train, y_train), ("heldout", heldout, y_held))]
    write_csv(args.out / "vision_cost_probe.csv", rows)
    lines = [(f"# vision cost probe {date.today()}, {machine()}, "
             f"{args.env_id}, 64px, random policy; collection {collect_s:.0f} s, total {total_s:.0f} s"),
             "",
             ("| split | layouts | frames | unsafe frames (%) | per-frame CNN balanced accuracy | "
             "mean abs(unsafe - safe) by image band, top -> bottom |"),
             "|---|---|---|---|---|---|"]
    for r in rows:
        band = ", ".join(f"{r[f'mean_abs_diff_band{i}']:.3f}" for i in range(4))
        lines.append(f"| {r['split']} | {r['layouts']} | {r['frames']} | {r['unsafe_frames']} "
                     f"({100 * r['unsafe_fraction']:.1f} %) | {r['cnn_balanced_accuracy']:.3f} | {band} |")
    write_markdown(args.out / "vision_cost_probe.md", lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
