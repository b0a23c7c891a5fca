"""Core cost and learning of lbwrap's safety model (world model + latent barrier).

    python benchmarks/core_speed.py            # full run, ~15-25 min on the 2-core CPU
    python benchmarks/core_speed.py --quick    # ~2 min smoke run (writes *_quick files)

Part A (timing): seconds per world-model update and per barrier update, each with its own
trainer (``WorldModelTrainer`` / ``BarrierTrainer``) on batches sampled from a replay filled with
random-policy PixelHazard data (level 2, 64x64): paper sizes at B=32/L=50 and B=16/L=50, the
``cpu`` preset at B=16/L=32; on the CPU and on CUDA when available. One warm-up update, then the
median of ``timing_iters`` timed updates. From these: seconds of model training per *env* step
at ``CoTrainCallback``'s default ratio (``updates_per_train`` updates every ``train_every`` env
steps) versus the authors' schedule (1000 iterations per 500 agent steps = 1 iteration per env
step under action repeat 2, at 13.0 s per iteration, measured by timing the authors' training
loop on this CPU). Their iteration also includes 1568 x 29 imagined steps, actor and value updates; ours is world model + barrier
(with its own 256 x 15 imagined steps): both are "everything the safety/model side trains per
env step", which is what a user pays.

Part B (learning): held-out balanced accuracy of sign(B) versus updates, ``cpu`` preset, on
data of (i) PixelHazard level 2 and (ii) SafetyPointGoal1Vision-v0, 64x64, collected by each
policy in ``--data-policies`` (``random``; ``hazard-visitor``, scripted and privileged, see
``lbwrap.eval.data_collection``). Each model is scored on the held-out data of every listed
policy: other layouts (other reset seeds), filtered with ``world_model.observe`` over whole
episodes (posterior means); cost > kappa is unsafe, cost < kappa safe.

Measured (2026-11-26, 2-core CPU, one torch thread, load average noted per row in the CSVs):

* per update, world model + barrier: paper B32/L50 4.80 + 0.08 s, paper B16/L50 2.43 + 0.07 s,
  cpu preset B16/L32 0.28 + 0.05 s (load ~0.7; the same within 10 % at load ~2.4). Per env step
  at 0.1 update/step: 0.033 s vs the authors' 13.0 s, ~390x cheaper (paper sizes at our ratio:
  0.49 s, ~27x).
* PixelHazard level 2, egocentric, 6000 steps, cost_weight 100: held-out balanced accuracy 0.90
  after 100 updates, 0.89 after 600. Diagnostics (same data): cost_weight 1 -> 0.55 after 600
  (cost loss ~0.6, the cost head stays near the mean); top-down view -> 0.50 after 800 updates
  with cost_weight 1 or 100 (train accuracy 0.68: the cost head memorises the 24 layouts).
* SafetyPointGoal1Vision, 3000 steps (6 layouts, 4.8 % unsafe): held-out 0.48 after 600
  updates (train 0.96): the cost head memorises the training layouts (held-out AUC of the
  predicted cost 0.44-0.76 with 6-12 layouts, 1.0 on training episodes); 12 layouts, 1200
  updates, ``barrier_input="features"`` or 40 short episodes did not lift it above 0.51.
  The limit is the data: a random policy is in a hazard on 1.5-1.8 % of its steps. With
  ``--data-policies random hazard-visitor`` (2026-11-27, 4000 steps over 40 layouts per policy,
  19 % unsafe with the visitor) the visitor-trained barrier reached 0.79 on held-out visitor
  data after 1200 updates (0.73 on random-policy held-out data, 11 unsafe states); the
  random-trained one 0.57 and 0.49.

Writes ``benchmarks/results/core_speed.csv`` (timings), ``core_learning.csv`` and
``core_learning.png`` (``core_speed_quick*`` with ``--quick``). Prints the tables and the
machine load (1-minute load average) next to the timings: the machine may be shared.
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import time
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

from lbwrap.eval.barrier_accuracy import add_episodes, heldout_barrier_accuracy, random_episodes
from lbwrap.eval.data_collection import collect_episodes

os.environ.setdefault("MUJOCO_GL", "egl")

RESULTS = Path(__file__).parent / "results"
HAZARD_ID = "lbwrap/PixelHazard-v0"
VISION_ID = "SafetyPointGoal1Vision-v0"


@dataclass
class Args:
    quick: bool = False
    """Shrink everything (2 timing configs, 1 timed update, tiny collections, 40 updates) for a
    smoke run; outputs go to ``core_speed_quick*`` files."""
    threads: int = 1
    """torch CPU threads (1: oversubscribed threads make small nets 10-40x slower when the
    2-core machine is shared)."""
    seed: int = 0
    """Seed of data collection, models and replay sampling."""
    size: int = 64
    """Image side (32 or 64)."""
    # ---------------------------------------------------------------- part A: timing
    timing: bool = True
    """Run part A (timings)."""
    timing_configs: tuple[str, ...] = ("paper:32:50", "paper:16:50", "cpu:16:32")
    """``preset:batch:seq_len`` triples to time."""
    devices: tuple[str, ...] = ("cpu", "cuda")
    """Devices to time on (CUDA is skipped when not available)."""
    timing_iters: int = 3
    """Timed updates per config (after one warm-up); the median is reported."""
    timing_data_steps: int = 2000
    """Random PixelHazard steps in the timing replay."""
    train_every: int = 100
    """Env steps between training calls (``CoTrainCallback`` default)."""
    updates_per_train: int = 10
    """Updates per training call (``CoTrainCallback`` default)."""
    per_step_config: str = "cpu:16:32"
    """Config whose timing gives lbwrap's headline per-env-step cost."""
    authors_s_per_iteration: float = 13.0
    """Authors' seconds per training iteration on this CPU (B=32, L=50)."""
    authors_iterations_per_env_step: float = 1.0
    """Authors' schedule: 1000 iterations per 500 agent steps, action repeat 2."""
    # ---------------------------------------------------------------- part B: learning
    learning: bool = True
    """Run part B (learning curves)."""
    envs: tuple[str, ...] = ("hazard", "vision")
    """Which learning curves to run: ``hazard`` (PixelHazard), ``vision`` (SafetyPointGoal1)."""
    hazard_level: int = 2
    """PixelHazard level (2: 16 hazards, ~35 % of random-policy steps unsafe)."""
    hazard_view: str = "egocentric"
    """PixelHazard camera: ``egocentric`` (like the paper's camera) or ``topdown``."""
    hazard_steps: int = 6000
    """Random-policy agent steps of PixelHazard training data."""
    hazard_heldout_steps: int = 2000
    """Held-out PixelHazard agent steps (other layouts)."""
    vision_steps: int = 3000
    """Random-policy agent steps of SafetyPointGoal1Vision training data (2 env steps each)."""
    vision_heldout_steps: int = 3000
    """Held-out SafetyPointGoal1Vision agent steps (other layouts)."""
    updates: int = 600
    """Updates (world model + barrier) per learning curve."""
    eval_every: int = 100
    """Updates between held-out evaluations."""
    batch_size: int = 16
    """Sequences per update in part B (cpu preset default)."""
    seq_len: int = 32
    """Steps per sequence in part B (cpu preset default)."""
    cost_weight: float = 100.0
    """World-model cost-loss weight in part B (library default 1.0: measured, the cost head
    then stays near the mean and B collapses to one sign; see "Measured" in the module doc)."""
    barrier_input: str = "stoch"
    """Barrier input in part B: ``stoch`` (paper) or ``features``."""
    data_policies: tuple[str, ...] = ("random",)
    """Part B data-collection policies (``random``, ``hazard-visitor``): one curve per policy's
    training data, each scored on the held-out layouts of every listed policy. The hazard visitor
    is scripted and privileged (``lbwrap.eval.HazardVisitor``): random-policy data has too few
    unsafe SafetyPointGoal1Vision frames to learn from."""
    max_episode_len: int = 0
    """Cut part-B episodes after this many agent steps (0: the env's own length): more layouts
    per collected step (measured on SafetyPointGoal1Vision, 6000 steps in 150-step episodes:
    no better than full episodes)."""

    learn_name: str = "core_learning"
    """File stem of the learning CSV/PNG in benchmarks/results (keep other curves apart)."""

    def shrunk(self) -> Args:
        """The ``--quick`` version of these arguments."""
        return replace(
            self, timing_configs=("paper:16:50", "cpu:16:32"), timing_iters=1,
            timing_data_steps=600, hazard_steps=1500, hazard_heldout_steps=600,
            vision_steps=600, vision_heldout_steps=500, updates=40, eval_every=20,
        )


# --------------------------------------------------------------------------------- helpers
def machine() -> str:
    return f"{platform.node() or 'unknown'} ({os.cpu_count()} cores, " \
           f"{platform.processor() or platform.machine()})"


def load_1min() -> float:
    return os.getloadavg()[0]


def make_env(kind: str, args: Args):
    import lbwrap

    if kind == "hazard":
        return lbwrap.make_pixel_env(HAZARD_ID, size=args.size, action_repeat=2,
                                     level=args.hazard_level, view=args.hazard_view)
    if kind == "vision":
        return lbwrap.make_pixel_env(VISION_ID, size=args.size, action_repeat=2)
    raise ValueError(f"unknown env kind {kind!r}; use 'hazard' or 'vision'")


def build_model(env, preset: str, batch: int, seq_len: int, device: str, seed: int,
                capacity: int, **overrides: Any):
    from lbwrap.safety_model import LatentSafetyModel

    return LatentSafetyModel.for_env(env, preset=preset, seed=seed, device=device,
                                     batch_size=batch, seq_len=seq_len,
                                     replay_capacity=max(capacity, seq_len + 1), **overrides)


# --------------------------------------------------------------------------------- part A
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_config(env, episodes, spec: str, device: str, args: Args) -> dict[str, Any]:
    preset, batch, seq_len = spec.split(":")
    batch, seq_len = int(batch), int(seq_len)
    torch.manual_seed(args.seed)
    safety = build_model(env, preset, batch, seq_len, device, args.seed,
                         sum(len(e["obs"]) for e in episodes) + 10)
    add_episodes(safety, episodes)
    cfg = safety.config
    wm_times, b_times, sample_times = [], [], []
    for i in range(1 + args.timing_iters):
        t0 = time.perf_counter()
        batch_t = safety.replay.sample_torch(batch, seq_len, safety.device,
                                             cost_fraction=cfg.cost_fraction)
        _sync(device)
        t1 = time.perf_counter()
        _, out = safety.wm_trainer.update(batch_t)
        _sync(device)
        t2 = time.perf_counter()
        safety.barrier_trainer.update(
            out.posts, batch_t["cost"], batch_t["is_first"], dynamics=safety.world_model,
            cost_fn=safety.world_model.predict_cost, generator=safety.generator,
        )
        _sync(device)
        t3 = time.perf_counter()
        if i > 0:  # the first update is the warm-up
            sample_times.append(t1 - t0)
            wm_times.append(t2 - t1)
            b_times.append(t3 - t2)
    wm_s, b_s = statistics.median(wm_times), statistics.median(b_times)
    return {"device": device, "config": spec, "preset": preset, "batch_size": batch,
            "seq_len": seq_len, "sample_s": statistics.median(sample_times),
            "world_model_s": wm_s, "barrier_s": b_s, "total_s": wm_s + b_s,
            "iters": args.timing_iters}


def run_timing(args: Args) -> list[dict[str, Any]]:
    env = make_env("hazard", replace(args, hazard_view="topdown"))
    try:
        episodes = random_episodes(env, args.timing_data_steps, args.seed)
        rows = []
        for device in args.devices:
            if device.startswith("cuda") and not torch.cuda.is_available():
                print(f"[timing] {device}: not available, skipped")
                continue
            for spec in args.timing_configs:
                load_before = load_1min()
                row = time_config(env, episodes, spec, device, args)
                row["load_1min"] = (load_before + load_1min()) / 2
                rows.append(row)
                print(f"[timing] {device} {spec}: world model {row['world_model_s']:.3f} s, "
                      f"barrier {row['barrier_s']:.3f} s (load {row['load_1min']:.2f})",
                      flush=True)
    finally:
        env.close()
    return rows


def per_env_step_rows(rows: list[dict[str, Any]], args: Args) -> list[dict[str, Any]]:
    ratio = args.updates_per_train / args.train_every
    authors = args.authors_s_per_iteration * args.authors_iterations_per_env_step
    out = []
    for row in rows:
        per_step = row["total_s"] * ratio
        out.append({**row, "updates_per_env_step": ratio, "train_s_per_env_step": per_step,
                    "authors_s_per_env_step": authors,
                    "cheaper_than_authors_x": authors / per_step if per_step > 0 else float("nan")})
    return out


def print_timing(rows: list[dict[str, Any]], args: Args) -> None:
    print(f"\n# core timings, {date.today()}, {machine()}, torch threads {args.threads}")
    print("| device | config (preset:B:L) | world model s/update | barrier s/update | total s "
          "| s per env step at 0.1 update/step | authors s per env step | cheaper x | load 1m |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['config']} | {r['world_model_s']:.3f} | {r['barrier_s']:.3f} "
              f"| {r['total_s']:.3f} | {r['train_s_per_env_step']:.4f} | "
              f"{r['authors_s_per_env_step']:.1f} | {r['cheaper_than_authors_x']:.0f} | "
              f"{r['load_1min']:.2f} |")
    head = [r for r in rows if r["config"] == args.per_step_config and r["device"] == "cpu"]
    if head:
        r = head[0]
        print(f"\nPer env step on the CPU: lbwrap ({args.per_step_config}, world model + barrier, "
              f"{args.updates_per_train} updates per {args.train_every} env steps) "
              f"{r['train_s_per_env_step']:.4f} s vs authors (world model + 1568x29 imagination "
              f"+ actor/barrier + value, 1 iteration per env step) {r['authors_s_per_env_step']:.1f}"
              f" s: {r['cheaper_than_authors_x']:.0f}x cheaper.")


def write_timing(rows: list[dict[str, Any]], path: Path) -> None:
    cols = ["date", "machine", "load_1min", "device", "config", "preset", "batch_size", "seq_len",
            "iters", "sample_s", "world_model_s", "barrier_s", "total_s", "updates_per_env_step",
            "train_s_per_env_step", "authors_s_per_env_step", "cheaper_than_authors_x"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        for r in rows:
            writer.writerow({"date": date.today(), "machine": machine(),
                             **{k: (f"{v:.5g}" if isinstance(v, float) else v)
                                for k, v in r.items() if k in cols}})


# --------------------------------------------------------------------------------- part B
def run_learning(kind: str, args: Args) -> list[dict[str, Any]]:
    """Learning curves on one env, one per training-data policy, each scored on the held-out
    layouts of every policy in ``args.data_policies``."""
    env = make_env(kind, args)
    env_id = HAZARD_ID if kind == "hazard" else VISION_ID
    n_train = args.hazard_steps if kind == "hazard" else args.vision_steps
    n_held = args.hazard_heldout_steps if kind == "hazard" else args.vision_heldout_steps
    label = f"{env_id}" + (f" (level {args.hazard_level}, {args.hazard_view})"
                           if kind == "hazard" else "")
    try:
        start = time.perf_counter()
        heldouts = {policy: collect_episodes(env, n_held, 10_000 + args.seed,  # other layouts
                                             args.max_episode_len, policy=policy)
                    for policy in args.data_policies}
        trains = {policy: collect_episodes(env, n_train, args.seed, args.max_episode_len,
                                           policy=policy)
                  for policy in args.data_policies}
        collect_s = time.perf_counter() - start
    finally:
        env.close()
    rows: list[dict[str, Any]] = []
    for policy, train in trains.items():
        rows += _learning_curve(env, label, policy, train, heldouts, collect_s, args)
    return rows


def _share(episodes) -> str:
    return f"{(np.concatenate([e['cost'] for e in episodes]) > 0.01).mean():.1%} unsafe"


def _learning_curve(env, label: str, policy: str, train, heldouts, collect_s: float,
                    args: Args) -> list[dict[str, Any]]:
    from lbwrap.barrier import BarrierConfig

    n_train = sum(len(e["obs"]) for e in train)
    torch.manual_seed(args.seed)
    safety = build_model(env, "cpu", args.batch_size, args.seq_len, "cpu", args.seed,
                         n_train + 10,
                         world_model_overrides={"cost_weight": args.cost_weight},
                         barrier=BarrierConfig(input=args.barrier_input))
    add_episodes(safety, train)
    held_text = ", ".join(f"{p}: {sum(len(e['obs']) for e in eps)} steps, {len(eps)} episodes, "
                          f"{_share(eps)}" for p, eps in heldouts.items())
    print(f"\n[learning] {label}, {policy} policy: {n_train} train steps ({len(train)} episodes, "
          f"{_share(train)}); held-out ({held_text}); all collected in {collect_s:.0f} s",
          flush=True)
    rows: list[dict[str, Any]] = []
    metrics: dict[str, float] = {}
    train_s = 0.0
    for done in range(0, args.updates + 1, args.eval_every):
        if done > 0:
            t0 = time.perf_counter()
            metrics = safety.update(args.eval_every)
            train_s += time.perf_counter() - t0
        for held_policy, heldout in heldouts.items():
            row = {"env": label, "data_policy": policy, "heldout_policy": held_policy,
                   "updates": done, **heldout_barrier_accuracy(safety, heldout),
                   "train_balanced_accuracy_real": metrics.get("barrier/balanced_accuracy_real",
                                                               float("nan")),
                   "cost_loss": metrics.get("world_model/cost_loss", float("nan")),
                   "image_loss": metrics.get("world_model/image_loss", float("nan")),
                   "train_s": train_s, "load_1min": load_1min()}
            rows.append(row)
            print(f"[learning] {policy} -> held-out {held_policy}, {done:5d} updates: balanced "
                  f"accuracy {row['heldout_balanced_accuracy']:.3f} "
                  f"(safe {row['heldout_safe_accuracy']:.3f}, "
                  f"unsafe {row['heldout_unsafe_accuracy']:.3f}), "
                  f"train {row['train_balanced_accuracy_real']:.3f}, "
                  f"cost loss {row['cost_loss']:.3f}, {train_s:.0f} s, "
                  f"load {row['load_1min']:.2f}", flush=True)
    return rows


def _curve_key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["env"], row["data_policy"], row["heldout_policy"]


def write_learning(rows: list[dict[str, Any]], csv_path: Path, png_path: Path) -> None:
    cols = ["date", "machine", "env", "data_policy", "heldout_policy", "updates",
            "heldout_balanced_accuracy",
            "heldout_safe_accuracy", "heldout_unsafe_accuracy", "heldout_n_safe",
            "heldout_n_unsafe", "train_balanced_accuracy_real", "cost_loss", "image_loss",
            "train_s", "load_1min"]
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        for r in rows:
            writer.writerow({"date": date.today(), "machine": machine(),
                             **{k: (f"{v:.4g}" if isinstance(v, float) else v)
                                for k, v in r.items()}})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for curve in dict.fromkeys(_curve_key(r) for r in rows):
        xs = [r["updates"] for r in rows if _curve_key(r) == curve]
        ys = [r["heldout_balanced_accuracy"] for r in rows if _curve_key(r) == curve]
        ax.plot(xs, ys, marker="o", label="{}: train {} / held-out {}".format(*curve))
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("updates (world model + barrier), cpu preset")
    ax.set_ylabel("held-out balanced accuracy of sign(B)")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("Barrier on collected data, held-out layouts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def print_learning(rows: list[dict[str, Any]]) -> None:
    print("\n| env | train data | held-out data | updates | held-out balanced acc | safe acc | "
          "unsafe acc | n unsafe | train acc (real) | cost loss | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['env']} | {r['data_policy']} | {r['heldout_policy']} | {r['updates']} | "
              f"{r['heldout_balanced_accuracy']:.3f} | "
              f"{r['heldout_safe_accuracy']:.3f} | {r['heldout_unsafe_accuracy']:.3f} | "
              f"{r['heldout_n_unsafe']} | {r['train_balanced_accuracy_real']:.3f} | "
              f"{r['cost_loss']:.3f} | {r['train_s']:.0f} |")


# --------------------------------------------------------------------------------- main
def main(args: Args) -> None:
    if args.quick:
        args = args.shrunk()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "core_speed_quick" if args.quick else "core_speed"
    learn_stem = "core_speed_quick_learning" if args.quick else args.learn_name
    start = time.perf_counter()
    print(f"# {machine()}, load at start {load_1min():.2f}, torch threads {args.threads}")
    if args.timing:
        rows = per_env_step_rows(run_timing(args), args)
        print_timing(rows, args)
        write_timing(rows, RESULTS / f"{stem}.csv")
    if args.learning:
        learn_rows: list[dict[str, Any]] = []
        for kind in args.envs:
            learn_rows += run_learning(kind, args)
            write_learning(learn_rows, RESULTS / f"{learn_stem}.csv", RESULTS / f"{learn_stem}.png")
        print_learning(learn_rows)
    print(f"\ntotal {time.perf_counter() - start:.0f} s, load at end {load_1min():.2f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
