"""Time SequenceReplay.add / sample / sample_torch on a 64x64x3 buffer.

Usage: python benchmarks/replay_speed.py [--capacity 100000] [--num-envs 8]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np

from lbwrap.world_model import SequenceReplay


def _time(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    n = args.num_envs
    buf = SequenceReplay(args.capacity, (3, 64, 64), 2, num_envs=n, seed=0)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (64, n, 3, 64, 64), dtype=np.uint8)
    zeros, flags = np.zeros(n, np.float32), np.zeros(n, bool)
    cost = (rng.random((64, n)) < 0.01).astype(np.float32)
    start = time.perf_counter()
    for step in range(args.capacity // n):
        buf.add(frames[step % 64], np.zeros((n, 2), np.float32), zeros, cost[step % 64],
                flags | (step % 500 == 0), flags)
    fill_s = time.perf_counter() - start
    print(f"buffer: {len(buf)} steps, {buf.nbytes / 2**30:.2f} GiB, {buf.num_cost_steps} cost "
          f"steps; add: {1e6 * fill_s / (args.capacity // n):.1f} us per call ({n} envs)")
    for batch, length in ((32, 50), (16, 32), (16, 50)):
        for fraction in (0.0, 0.25):
            t_np = _time(partial(buf.sample, batch, length, cost_fraction=fraction),
                         args.repeats)
            t_pt = _time(partial(buf.sample_torch, batch, length, "cpu", cost_fraction=fraction),
                         args.repeats)
            print(f"sample({batch}, {length}, cost_fraction={fraction}): {1e3 * t_np:.2f} ms; "
                  f"sample_torch: {1e3 * t_pt:.2f} ms")


if __name__ == "__main__":
    main()
