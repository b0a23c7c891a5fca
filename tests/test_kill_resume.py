"""Fault injection: kill -9 a tiny training run at random moments, >= 20 times, resuming it each
time. Every resume must load one consistent checkpoint set, lose at most one checkpoint
interval, and leave metrics.csv continuous; the finished run holds one set and no leftovers.

Slow (about 3 minutes): run with ``pytest -m slow tests/test_kill_resume.py``.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lbwrap.eval import read_metrics
from lbwrap.sb3 import find_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_sac_shielded.py"
ACTION_REPEAT = 2
CHECKPOINT_EVERY = 200  # env steps
METRICS_EVERY = 100  # env steps
TOTAL = 20000  # env steps
KILLS = 20


def command(out: Path, resume: bool) -> list[str]:
    if resume:
        return [sys.executable, str(EXAMPLE), "--out-dir", str(out), "--resume"]
    return [
        sys.executable, str(EXAMPLE), "--env-id", "lbwrap/PixelHazard-v0", "--tiny", "--size", "32",
        "--max-episode-steps", "200", "--total-env-steps", str(TOTAL), "--learning-starts", "100",
        "--model-learning-starts", "100", "--train-every", "50", "--updates-per-train", "2",
        "--batch-size", "32", "--buffer-size", "4000", "--model-batch", "4", "--model-seq-len", "8",
        "--metrics-every", str(METRICS_EVERY), "--checkpoint-every", str(CHECKPOINT_EVERY),
        "--eval-episodes", "1", "--video-steps", "0", "--no-progress", "--save-replay",
        "--out-dir", str(out),
    ]


def checkpoint_env_steps(out: Path) -> int | None:
    """Env steps of the set a resume would load (None: no set yet); checks it is one set."""
    try:
        found = find_checkpoint(out)
    except FileNotFoundError:
        return None
    state = found.run_state()
    assert state["agent_steps"] == found.step, "run state and manifest of two different steps"
    assert state["env_steps"] == found.step * ACTION_REPEAT
    return found.step * ACTION_REPEAT


def last_metrics_row(out: Path) -> int:
    path = out / "metrics.csv"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines()[1:] if line]
    complete = [line for line in lines if line.count(",") == lines[0].count(",")] if lines else []
    return int(float(complete[-1].split(",")[0])) if complete else 0


@pytest.mark.slow
def test_kill_nine_at_random_moments_and_resume(tmp_path):
    out = tmp_path / "run"
    rng = random.Random(0)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills = 0
    resumed_from: list[tuple[int | None, int]] = []  # (set before start, where the run resumed)
    lost: list[int] = []
    finished = False
    for attempt in range(KILLS * 3):
        before = checkpoint_env_steps(out)
        resume = (out / "run_config.json").exists()
        log = tmp_path / f"log-{attempt}.txt"
        with open(log, "w") as handle:
            proc = subprocess.Popen(command(out, resume), cwd=ROOT, env=env, stdout=handle,
                                    stderr=subprocess.STDOUT)
            if kills < KILLS:
                deadline = time.monotonic() + rng.uniform(1.0, 8.0)
                while time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.05)
            if proc.poll() is None and kills < KILLS:
                progress = last_metrics_row(out)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                after = checkpoint_env_steps(out)
                # a kill loses at most one checkpoint interval of logged progress
                lost.append(progress - (after or 0))
                assert progress - (after or 0) <= CHECKPOINT_EVERY + METRICS_EVERY, (
                    f"kill {kills}: metrics reached {progress}, the set is at {after}")
            else:
                proc.wait(timeout=600)
        text = log.read_text()
        match = re.search(r"resuming at (\d+)", text)
        if resume and match:
            resumed_from.append((before, int(match.group(1))))
        if proc.returncode == 0:
            assert kills >= KILLS, "the run finished before it was killed often enough"
            finished = True
            break
        assert proc.returncode == -signal.SIGKILL, text[-3000:]

    assert finished and kills >= KILLS
    # every resume loaded exactly the set that was on disk when it started
    assert resumed_from and all(before == at for before, at in resumed_from), resumed_from
    m = read_metrics(out / "metrics.csv")
    steps = m["env_steps"]
    assert steps[0] == 0 and steps[-1] == TOTAL
    assert np.all(np.diff(steps) > 0) and np.all(np.diff(steps) <= METRICS_EVERY)
    assert np.all(np.diff(m["cum_violations"]) >= 0) and np.all(np.diff(m["agent_steps"]) > 0)
    sets = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert sets == ["latest", f"step-{TOTAL // ACTION_REPEAT:010d}"] or (
        len(sets) == 2 and sets[1].startswith(f"step-{TOTAL // ACTION_REPEAT:010d}")), sets
    print(f"{kills} kills, {len(resumed_from)} resumes from a set; logged progress lost per kill: "
          f"max {max(lost)}, mean {np.mean(lost):.0f} env steps")
