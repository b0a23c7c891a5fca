"""Does the world model's latent state carry the goal? Reconstructions, and SAC on frozen latents.

    python benchmarks/latent_goal_probe.py                        # ~12 min on the 2-core VM
    python benchmarks/latent_goal_probe.py --cost-weight 1 --sac-steps 0 \
        --out benchmarks/results/latent_goal_probe/cost_weight1  # one world-model variant
    python benchmarks/latent_goal_probe.py --codec autoencoder --sac-steps 0 \
        --out benchmarks/results/latent_goal_probe/autoencoder   # the image path alone, ~6 min

Why: in the safety benchmark no pixel agent earns PixelHazard's return at CPU budgets, while SAC
on the true state does (``benchmarks/state_sac_reference.py``). SAC only sees the world model's
latent features ``[h, z]``; whatever the decoder cannot draw from them, SAC cannot see either.

1. Trains a safety model (CPU preset world model, lbwrap's defaults) on random-policy
   PixelHazard data, as ``shield_diagnostics.py`` does.
2. At each checkpoint (``--checkpoints``), filters random episodes on the *training* layouts and
   on *held-out* layouts, decodes the posterior features, and scores the reconstruction on the
   pixels of each object class: mean reconstructed colour against the true (quantised) colour,
   and **colour recall**, the share of the class's pixels whose reconstruction shows the class's
   dominant channel at least ``0.15`` above the other two (goal: green, hazards: blue).
3. With ``--sac-steps N > 0``: SAC (``reward_scale=10``, ``ent_coef="auto_0.1"``, as in the
   safety benchmark) trains for N agent steps on the latents of the final model, *frozen*, and is
   evaluated on held-out layouts. This isolates the representation: no co-training, no shield.
4. With ``--codec autoencoder``: steps 1-2 for a plain autoencoder built from the world model's
   own conv encoder and decoder (no RSSM, no KL, no memory), trained on the same frames with the
   same loss, images per batch and Adam settings. If it cannot draw the goal either, the image
   path loses it, not the latent dynamics.

Writes ``<out>/probe.csv`` (one row per checkpoint and layout set), ``<out>/summary.md`` and
``<out>/reconstructions.png`` (held-out frames with the goal in view, above their
reconstructions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro
from _report import machine, write_csv, write_markdown
from torch import nn

import lbwrap
from lbwrap.envs.pixel_hazard import GOAL_COLOUR, HAZARD_COLOUR
from lbwrap.eval.barrier_accuracy import add_episodes, random_episodes
from lbwrap.latent_tracker import LatentTracker
from lbwrap.safety_model import LatentSafetyModel
from lbwrap.world_model import WorldModelConfig
from lbwrap.world_model.networks import ConvDecoder, ConvEncoder

#: How far (in [0, 1] colour units) the class's channel must exceed the others to count.
COLOUR_MARGIN = 0.15
#: Object classes scored: name -> (true colour, dominant channel index).
CLASSES: dict[str, tuple[np.ndarray, int]] = {"goal": (GOAL_COLOUR, 1), "hazard": (HAZARD_COLOUR, 2)}


@dataclass
class Args:
    level: int = 1
    """PixelHazard level."""
    size: int = 64
    """Image side."""
    view_radius: float = 1.0
    """PixelHazard's egocentric window half-width (world units)."""
    train_steps: int = 6000
    """Random-policy agent steps to train the world model on."""
    train_episode_len: int = 0
    """Cut the training episodes after this many agent steps (more layouts, so more goal
    placements, for the same data); 0: whole episodes (250 agent steps)."""
    heldout_steps: int = 1500
    """Random-policy agent steps scored per layout set."""
    checkpoints: list[int] = field(default_factory=lambda: [300, 750, 1500])
    """Cumulative world-model + barrier updates at which to score (the last one is kept)."""
    cost_weight: float | None = None
    """World-model cost-head weight (None: the CPU preset's 100)."""
    cnn_depth: int | None = None
    """World-model conv depth (None: the CPU preset's 8)."""
    reward_weight: float | None = None
    """World-model reward-head weight (None: the preset's 1)."""
    free_nats: float | None = None
    """World-model free nats (None: the preset's 3)."""
    kl_balance: float | None = None
    """World-model KL balancing (None: plain KL)."""
    world_model_lr: float | None = None
    """World-model Adam learning rate (None: lbwrap's 6e-4)."""
    codec: Literal["world-model", "autoencoder"] = "world-model"
    """What is scored: the world model's posterior reconstructions, or a plain autoencoder made
    of the world model's conv encoder and decoder (no RSSM, no KL), trained with the same loss,
    batch of images and optimiser settings on the same frames: it tells whether the image path
    or the latent dynamics lose the goal. Its updates count autoencoder steps."""
    sac_steps: int = 5000
    """Agent steps of SAC on the final, frozen latents (0: skip)."""
    eval_episodes: int = 5
    """Deterministic evaluation episodes of that SAC agent, each on its own held-out layout."""
    seed: int = 0
    """Seed of data, model and SAC."""
    out: Path = Path("benchmarks/results/latent_goal_probe")
    """Output folder."""


def make_env(args: Args) -> Any:
    return lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=args.size, action_repeat=2,
                                 level=args.level, view_radius=args.view_radius,
                                 max_episode_steps=500)


def class_masks(frame: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels of each class in a uint8 CHW frame (exact colour match: the env has no blending)."""
    return {name: np.all(frame == colour[:, None, None], axis=0)
            for name, (colour, _) in CLASSES.items()}


def colour_recall(reconstruction: np.ndarray, mask: np.ndarray, channel: int) -> float:
    """Share of ``mask``'s pixels whose reconstruction (CHW, [0, 1]) shows ``channel`` dominant."""
    if not mask.any():
        return float("nan")
    pix = reconstruction[:, mask]
    others = np.delete(pix, channel, axis=0)
    return float(np.mean(np.all(pix[channel] > others + COLOUR_MARGIN, axis=0)))


Pair = tuple[np.ndarray, np.ndarray]
"""A uint8 CHW frame and its reconstruction (CHW, colour units: 0 black, 1 full)."""


@torch.no_grad()
def world_model_reconstructions(safety: LatentSafetyModel, episodes: Sequence[dict[str, np.ndarray]],
                                every: int = 5) -> Iterator[Pair]:
    """Filter ``episodes`` with the world model; yield every ``every``-th frame and the decoded
    posterior (what SAC's latent features carry)."""
    wm = safety.world_model
    was_training = safety.training
    safety.eval()
    tracker = LatentTracker(wm, 1)
    try:
        for ep in episodes:
            for t in range(len(ep["obs"])):
                feat = tracker.observe(ep["obs"][t:t + 1], ep["action"][t:t + 1],
                                       ep["is_first"][t:t + 1])
                if t % every == 0:
                    yield ep["obs"][t], wm.decode(torch.as_tensor(feat)).cpu().numpy()[0] + 0.5
    finally:
        safety.train(was_training)


class PixelAutoencoder(nn.Module):
    """The world model's conv encoder and decoder with a plain bottleneck in between: no RSSM,
    no KL, no memory. ``tanh(Linear(embed))`` of the world model's feature size feeds the
    decoder, so the image path is the world model's, minus everything that is not an image."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.encoder = ConvEncoder(config.image_channels, config.cnn_depth, config.image_size,
                                   config.cnn_activation)
        self.bottleneck = nn.Linear(self.encoder.output_dim, config.feature_dim)
        self.decoder = ConvDecoder(config.feature_dim, config.image_channels, config.cnn_depth,
                                   config.image_size, config.cnn_activation)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (N, C, H, W) -> reconstructions in the same units."""
        return self.decoder(torch.tanh(self.bottleneck(self.encoder(image))))


def train_autoencoder(ae: PixelAutoencoder, optimiser: torch.optim.Optimizer,
                      preprocess: Callable[[np.ndarray], torch.Tensor], frames: np.ndarray,
                      updates: int, batch: int, rng: np.random.Generator) -> float:
    """``updates`` optimiser steps on ``batch`` frames drawn uniformly from ``frames``, with the
    world model's loss (squared error summed over pixels) and gradient clip (100); returns the
    last loss."""
    loss = torch.tensor(float("nan"))
    for _ in range(updates):
        x = preprocess(frames[rng.integers(0, len(frames), batch)])
        loss = (ae(x) - x).pow(2).sum(dim=(-3, -2, -1)).mean()
        optimiser.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(ae.parameters(), 100.0)
        optimiser.step()
    return float(loss.detach())


@torch.no_grad()
def autoencoder_reconstructions(ae: PixelAutoencoder,
                                preprocess: Callable[[np.ndarray], torch.Tensor],
                                episodes: Sequence[dict[str, np.ndarray]],
                                every: int = 5) -> Iterator[Pair]:
    """Every ``every``-th frame of ``episodes`` and its autoencoder reconstruction."""
    for ep in episodes:
        frames = ep["obs"][::every]
        recs = ae(preprocess(frames)).cpu().numpy() + 0.5
        yield from zip(frames, recs)


def score_reconstructions(pairs: Iterable[Pair], preprocess: Callable[[np.ndarray], torch.Tensor]
                          ) -> tuple[dict[str, float], list[Pair]]:
    """Score (frame, reconstruction) pairs per class.

    Returns the scores (frames with the class in view, the class's pixels per scored frame,
    pixel-weighted colour recall, mean reconstructed and true dominant channel) and the pairs
    with the goal in view (clipped).
    """
    hits = dict.fromkeys(CLASSES, 0.0)
    pixels = dict.fromkeys(CLASSES, 0)
    frames = dict.fromkeys(CLASSES, 0)
    rec_channel = dict.fromkeys(CLASSES, 0.0)
    true_channel = dict.fromkeys(CLASSES, 0.0)
    goal_examples: list[Pair] = []
    scored = 0
    for frame, rec in pairs:
        scored += 1
        target = preprocess(frame[None]).cpu().numpy()[0] + 0.5
        for name, mask in class_masks(frame).items():
            n = int(mask.sum())
            if n == 0:
                continue
            channel = CLASSES[name][1]
            frames[name] += 1
            pixels[name] += n
            hits[name] += colour_recall(rec, mask, channel) * n
            rec_channel[name] += float(rec[channel][mask].sum())
            true_channel[name] += float(target[channel][mask].sum())
            if name == "goal":
                goal_examples.append((frame, np.clip(rec, 0.0, 1.0)))
    scores: dict[str, float] = {}
    for name in CLASSES:
        n = pixels[name] or float("nan")  # no pixel of the class in view: nan, not 0
        scores[f"{name}_frames"] = frames[name]
        # the class's weight in the summed squared-error loss is proportional to its pixel count
        scores[f"{name}_pixels_per_frame"] = pixels[name] / max(scored, 1)
        scores[f"{name}_colour_recall"] = hits[name] / n
        scores[f"{name}_reconstructed_channel"] = rec_channel[name] / n
        scores[f"{name}_true_channel"] = true_channel[name] / n
    return scores, goal_examples


def frozen_latent_sac(safety: LatentSafetyModel, args: Args) -> dict[str, float]:
    """SAC on the frozen model's latents (mode ``none``, no safety-model updates), then evaluation."""
    from lbwrap.eval import evaluate_agent
    from lbwrap.sb3.recipes import AgentRecipe, build_safe_agent

    never = 2**62
    recipe = AgentRecipe(mode="none", train_every=never, model_learning_starts=never,
                         reward_scale=10.0,
                         sac_kwargs={"learning_starts": 500, "buffer_size": 200_000,
                                     "ent_coef": "auto_0.1"})
    built = build_safe_agent([lambda: make_env(args)], recipe, safety=safety, seed=args.seed,
                             device="cpu")
    start = time.perf_counter()
    built.agent.learn(args.sac_steps)
    train_s = time.perf_counter() - start
    ev = evaluate_agent(built.agent, lambda: make_env(args), safety,
                        episodes=args.eval_episodes).summary()
    return {"sac_steps": args.sac_steps, "train_s": train_s, "eval_return": ev["return_mean"],
            "eval_return_std": ev["return_std"], "eval_cost": ev["cost_mean"]}


def save_examples(path: Path, examples: list[tuple[np.ndarray, np.ndarray]], n: int = 6) -> None:
    """Frames (top) above their reconstructions (bottom), ``n`` evenly spaced examples."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not examples:
        return
    picks = [examples[i] for i in np.linspace(0, len(examples) - 1, min(n, len(examples))).astype(int)]
    fig, axes = plt.subplots(2, len(picks), figsize=(1.8 * len(picks), 3.8), squeeze=False)
    for col, (frame, rec) in enumerate(picks):
        axes[0, col].imshow(frame.transpose(1, 2, 0))
        axes[1, col].imshow(rec.transpose(1, 2, 0))
        for row in (0, 1):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    axes[0, 0].set_ylabel("frame")
    axes[1, 0].set_ylabel("reconstruction")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args: Args) -> None:
    if args.codec == "autoencoder":
        unused = [f"--{name.replace('_', '-')}" for name in ("cost_weight", "reward_weight",
                                                             "free_nats", "kl_balance")
                  if getattr(args, name) is not None]
        if unused:
            raise SystemExit(f"{', '.join(unused)} only change the world model's loss; the "
                             "autoencoder has no such term. Drop them or use --codec world-model.")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    env = make_env(args)
    overrides = {k: v for k, v in (("cost_weight", args.cost_weight), ("cnn_depth", args.cnn_depth),
                                   ("reward_weight", args.reward_weight),
                                   ("free_nats", args.free_nats), ("kl_balance", args.kl_balance))
                 if v is not None}
    lr = {} if args.world_model_lr is None else {"world_model_lr": args.world_model_lr}
    safety = LatentSafetyModel.for_env(env, seed=args.seed, device="cpu",
                                       world_model_overrides=overrides, **lr)
    training = random_episodes(env, args.train_steps, args.seed, args.train_episode_len)
    # "training": the first frames of the training data itself (same seed: same layouts, actions)
    layout_sets = {"training": random_episodes(env, args.heldout_steps, args.seed,
                                               args.train_episode_len),
                   "held-out": random_episodes(env, args.heldout_steps, 20_000 + args.seed)}
    wm = safety.world_model
    if args.codec == "world-model":
        add_episodes(safety, training)
        train = safety.update
        reconstructions = partial(world_model_reconstructions, safety)
    else:
        ae = PixelAutoencoder(wm.config)
        frames = np.concatenate([ep["obs"] for ep in training])
        batch = safety.config.batch_size * safety.config.seq_len  # the world model's images
        rng = np.random.default_rng(args.seed)
        # the world model's Adam settings (its learning rate, and eps as in WorldModelTrainer)
        optimiser = torch.optim.Adam(ae.parameters(), lr=safety.config.world_model_lr, eps=1e-5)
        train = partial(train_autoencoder, ae, optimiser, wm.preprocess, frames, batch=batch,
                        rng=rng)
        reconstructions = partial(autoencoder_reconstructions, ae, wm.preprocess)
    rows: list[dict[str, Any]] = []
    done, start, examples = 0, time.perf_counter(), []
    for target in sorted(set(args.checkpoints)):
        if target > done:
            train(target - done)
            done = target
        for layouts, episodes in layout_sets.items():
            scores, goal_examples = score_reconstructions(reconstructions(episodes), wm.preprocess)
            rows.append({"updates": done, "layouts": layouts, **scores,
                         "wall_s": time.perf_counter() - start})
            print(rows[-1], flush=True)
            if layouts == "held-out":
                examples = goal_examples
    env.close()
    save_examples(args.out / "reconstructions.png", examples)
    sac = None
    if args.sac_steps > 0 and args.codec == "world-model":
        sac = frozen_latent_sac(safety, args)
    elif args.sac_steps > 0:
        print("--sac-steps: frozen-latent SAC needs --codec world-model; skipped", flush=True)

    write_csv(args.out / "probe.csv", rows)
    lines = [(f"# latent goal probe {date.today()}, {machine()}, PixelHazard level {args.level}, "
              f"{args.size}px, view radius {args.view_radius}; "
              f"{'world model' if args.codec == 'world-model' else 'plain autoencoder (the world model image path)'}: CPU preset"
              f"{' with ' + str({**overrides, **lr}) if overrides or lr else ''}, {args.train_steps} random agent "
              f"steps{f' in episodes of {args.train_episode_len}' if args.train_episode_len else ''}, "
              f"seed {args.seed}"), "",
             ("| updates | layouts | goal in view (frames) | goal colour recall | goal: green "
              "reconstructed / true | hazard in view (frames) | hazard colour recall | hazard: "
              "blue reconstructed / true |"),
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['updates']} | {r['layouts']} | {r['goal_frames']} | "
                     f"{r['goal_colour_recall']:.2f} | {r['goal_reconstructed_channel']:.2f} / "
                     f"{r['goal_true_channel']:.2f} | {r['hazard_frames']} | "
                     f"{r['hazard_colour_recall']:.2f} | {r['hazard_reconstructed_channel']:.2f} / "
                     f"{r['hazard_true_channel']:.2f} |")
    if sac is not None:
        write_csv(args.out / "frozen_sac.csv", [sac])
        lines += ["", (f"SAC on the frozen latents of the {done}-update model: {args.sac_steps} "
                       f"agent steps ({sac['train_s']:.0f} s), eval return "
                       f"{sac['eval_return']:.2f} ± {sac['eval_return_std']:.2f}, eval cost "
                       f"{sac['eval_cost']:.1f} ({args.eval_episodes} held-out layouts)")]
    write_markdown(args.out / "summary.md", lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
