"""Learning test: world model + barrier on random-policy PixelHazard data.

After training on a few thousand random-policy steps, the sign of B(z) must separate held-out
safe and unsafe states (other layouts, filtered with ``world_model.observe`` over whole
episodes) with a balanced accuracy well above chance.

Settings (measured, see ``benchmarks/core_speed.py`` for the full-size curves):

* PixelHazard level 2 (16 hazards: ~30-45 % of random-policy steps are unsafe), 32x32 images,
  ``view="egocentric"`` (the paper's setting: an egocentric camera). With the top-down map at
  32x32 and this tiny model the cost head memorises the few training layouts and held-out
  accuracy stays at 0.5: the cost of a top-down frame depends on where the 2-pixel robot sits
  relative to 16 hazards, which does not generalise from ~10 layouts in a few hundred updates.
* ``cost_weight=100``: the image loss is a sum over 3x32x32 pixels (~100 early on), the cost
  loss a single MSE (~1); with ``cost_weight=1`` the cost head stays at the mean (loss ~0.8),
  every state looks alike to the barrier and the decrease condition then drives B to a small
  positive constant (balanced accuracy exactly 0.5).
"""

from __future__ import annotations

import time

import pytest
import torch

import lbwrap
from lbwrap.barrier import BarrierConfig
from lbwrap.eval.barrier_accuracy import add_episodes, heldout_barrier_accuracy, random_episodes
from lbwrap.safety_model import LatentSafetyModel

SMALL_WORLD_MODEL = {"cnn_depth": 8, "deter_dim": 32, "stoch_dim": 8, "hidden_dim": 32,
                     "head_hidden_dim": 32, "cost_weight": 100.0}
SIZE = 32
TRAIN_STEPS = 3000
HELDOUT_STEPS = 1500
UPDATES = 400
#: Measured held-out balanced accuracy with these settings (one torch thread): seeds 0-4 gave
#: 0.883, 0.884, 0.878, 0.859, 0.854 (two threads, seeds 0-2: 0.863, 0.886, 0.879). With 2000
#: steps / 300 updates seed 0 fell to 0.65, hence 3000 / 400. 0.75 leaves ~0.1 of margin.
#: Runtime: 13-15 s per seed on the idle 2-core CPU (~31 s at load average 2.5).
BOUND = 0.75


def make_env():
    return lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=SIZE, action_repeat=2, level=2,
                                 view="egocentric")


@torch.no_grad()
def heldout_balanced_accuracy(safety: LatentSafetyModel, episodes) -> tuple[float, float, float]:
    """(balanced, safe, unsafe) accuracy of sign(B) on posterior means of whole episodes."""
    acc = heldout_barrier_accuracy(safety, episodes)
    assert acc["heldout_n_safe"] > 100 and acc["heldout_n_unsafe"] > 100, (
        "held-out data lacks one of the classes")
    return (acc["heldout_balanced_accuracy"], acc["heldout_safe_accuracy"],
            acc["heldout_unsafe_accuracy"])


def train_and_evaluate(seed: int, train_steps: int = TRAIN_STEPS, updates: int = UPDATES,
                       heldout_steps: int = HELDOUT_STEPS) -> dict[str, float]:
    torch.manual_seed(seed)
    env = make_env()
    try:
        train = random_episodes(env, train_steps, seed)
        heldout = random_episodes(env, heldout_steps, 10_000 + seed)  # other layouts
        safety = LatentSafetyModel.for_env(
            env, seed=seed, device="cpu", world_model_overrides=SMALL_WORLD_MODEL,
            batch_size=8, seq_len=16,
            barrier=BarrierConfig(hidden_dim=64, imagine_starts=64, imagine_horizon=5),
        )
    finally:
        env.close()
    add_episodes(safety, train)
    metrics = safety.update(updates)
    balanced, acc_safe, acc_unsafe = heldout_balanced_accuracy(safety, heldout)
    return {"balanced": balanced, "safe": acc_safe, "unsafe": acc_unsafe,
            "cost_loss": metrics["world_model/cost_loss"]}


@pytest.fixture
def one_torch_thread():
    """Tiny nets: one thread is as fast on an idle 2-core machine and 10-40x faster on a busy one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow),
                                  pytest.param(2, marks=pytest.mark.slow)])
def test_barrier_sign_separates_heldout_states(seed):
    start = time.perf_counter()
    result = train_and_evaluate(seed)
    elapsed = time.perf_counter() - start
    assert result["balanced"] > BOUND, (
        f"seed {seed}: held-out balanced accuracy {result['balanced']:.3f} <= {BOUND} "
        f"(safe {result['safe']:.3f}, unsafe {result['unsafe']:.3f}, "
        f"cost loss {result['cost_loss']:.3f}, {elapsed:.0f} s)"
    )


#: SafetyPointGoal1Vision: random-policy data holds too few unsafe frames (1.5-1.8 %) for the
#: barrier to generalise (held-out 0.53 even with 80k env steps, benchmarks/core_speed.py);
#: with the scripted hazard visitor's data (~19 % unsafe) it does. Settings as the benchmark's
#: (CPU preset, 64x64, cost_weight 100) at a smaller budget. Measured (seed 0, one torch
#: thread): 0.761 (safe 0.971, unsafe 0.551), 5-7.5 min with a benchmark run beside it; the
#: benchmark's curve at 4000 steps was 0.75-0.79 from 400 updates on. 0.65 leaves ~0.1 of margin.
VISION_TRAIN_STEPS = 3000
VISION_HELDOUT_STEPS = 1500
VISION_UPDATES = 500
VISION_BOUND = 0.65


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.usefixtures("one_torch_thread")
def test_barrier_sign_separates_heldout_states_on_safety_point_goal1_vision():
    from lbwrap.eval import collect_episodes

    torch.manual_seed(0)
    env = lbwrap.make_pixel_env("SafetyPointGoal1Vision-v0", size=64, action_repeat=2)
    try:
        train = collect_episodes(env, VISION_TRAIN_STEPS, 0, max_len=100, policy="hazard-visitor")
        heldout = collect_episodes(env, VISION_HELDOUT_STEPS, 10_000, max_len=100,
                                   policy="hazard-visitor")  # other layouts
        safety = LatentSafetyModel.for_env(env, preset="cpu", seed=0, device="cpu",
                                           world_model_overrides={"cost_weight": 100.0})
    finally:
        env.close()
    add_episodes(safety, train)
    metrics = safety.update(VISION_UPDATES)
    balanced, acc_safe, acc_unsafe = heldout_balanced_accuracy(safety, heldout)
    print(f"held-out balanced accuracy {balanced:.3f} (safe {acc_safe:.3f}, unsafe {acc_unsafe:.3f})")
    assert balanced > VISION_BOUND, (
        f"held-out balanced accuracy {balanced:.3f} <= {VISION_BOUND} (safe {acc_safe:.3f}, "
        f"unsafe {acc_unsafe:.3f}, cost loss {metrics['world_model/cost_loss']:.3f})")
