"""benchmarks/latent_goal_probe.py: per-class colour scores of world-model reconstructions."""

from __future__ import annotations

import csv
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lbwrap
from lbwrap.envs.pixel_hazard import FLOOR_COLOUR, GOAL_COLOUR, HAZARD_COLOUR
from lbwrap.world_model import WorldModel, WorldModelConfig

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "latent_goal_probe.py"


def load_probe():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports its sibling _report
    try:
        spec = importlib.util.spec_from_file_location("latent_goal_probe", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_class_masks_find_the_goal_and_hazards_of_a_real_frame():
    probe = load_probe()
    env = lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=64, level=1, view="topdown")
    frame, _ = env.reset(seed=0)
    masks = probe.class_masks(frame)
    base = env.unwrapped
    # topdown: the whole arena is in view, so the goal disk and all 8 hazards are drawn
    px_per_unit = 64 / (2 * base.config.arena_half)
    goal_area = math.pi * (base.config.goal_radius * px_per_unit) ** 2
    assert 0.6 * goal_area < masks["goal"].sum() < 1.4 * goal_area
    assert masks["hazard"].sum() > 4 * goal_area  # 8 hazards of ~0.7x the goal's area
    assert not (masks["goal"] & masks["hazard"]).any()
    env.close()


def test_colour_recall_counts_pixels_where_the_class_channel_dominates():
    probe = load_probe()
    mask = np.zeros((4, 4), bool)
    mask[:2] = True  # 8 pixels
    rec = np.zeros((3, 4, 4), np.float32) + FLOOR_COLOUR[:, None, None] / 255
    rec[:, 0, :] = (GOAL_COLOUR / 255)[:, None]  # the first row is drawn green: 4 of 8
    assert probe.colour_recall(rec, mask, channel=1) == 0.5
    assert probe.colour_recall(rec, mask, channel=2) == 0.0  # green is not blue
    rec[:, 1, :] = (HAZARD_COLOUR / 255)[:, None]
    assert probe.colour_recall(rec, mask, channel=2) == 0.5
    assert math.isnan(probe.colour_recall(rec, np.zeros((4, 4), bool), channel=1))


@pytest.mark.parametrize("codec", ["world-model", "autoencoder"])
def test_probe_runs_end_to_end_and_writes_its_report(tmp_path, codec):
    out = tmp_path / "probe"
    done = subprocess.run([sys.executable, str(SCRIPT), "--train-steps", "200", "--heldout-steps",
                           "60", "--checkpoints", "1", "2", "--sac-steps", "0", "--codec", codec,
                           "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with (out / "probe.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["updates"], r["layouts"]) for r in rows] == [
        ("1", "training"), ("1", "held-out"), ("2", "training"), ("2", "held-out")]
    for r in rows:
        assert int(r["hazard_frames"]) > 0
        assert float(r["hazard_pixels_per_frame"]) > float(r["goal_pixels_per_frame"]) >= 0.0
        assert 0.0 <= float(r["hazard_colour_recall"]) <= 1.0
        assert float(r["hazard_true_channel"]) > 0.8  # quantised 230/255
    assert "goal colour recall" in (out / "summary.md").read_text()


def test_autoencoder_has_the_world_models_image_path_and_learns_real_frames():
    probe = load_probe()
    torch.manual_seed(0)
    config = WorldModelConfig.cpu()
    wm = WorldModel(config)
    ae = probe.PixelAutoencoder(config)
    # same conv layers as the world model's encoder and decoder, fed by a feature-sized bottleneck
    assert ae.encoder.output_dim == wm.encoder.output_dim
    assert ae.bottleneck.out_features == config.feature_dim == ae.decoder.feature_dim
    env = lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=64, level=1)
    frames = np.stack([env.reset(seed=s)[0] for s in range(4)])
    env.close()
    optimiser = torch.optim.Adam(ae.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    first = probe.train_autoencoder(ae, optimiser, wm.preprocess, frames, 1, 4, rng)
    last = probe.train_autoencoder(ae, optimiser, wm.preprocess, frames, 60, 4, rng)
    assert math.isfinite(first) and last < 0.5 * first
    pairs = list(probe.autoencoder_reconstructions(ae, wm.preprocess, [{"obs": frames}], every=2))
    assert len(pairs) == 2  # frames 0 and 2
    assert all(np.array_equal(f, frames[i]) for (f, _), i in zip(pairs, (0, 2), strict=True))
    assert all(rec.shape == (3, 64, 64) for _, rec in pairs)


def test_autoencoder_refuses_world_model_only_settings():
    done = subprocess.run([sys.executable, str(SCRIPT), "--codec", "autoencoder", "--free-nats", "10",
                           "--out", "/nonexistent/never-written"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "--free-nats only change the world model's loss" in done.stderr
