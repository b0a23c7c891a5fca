"""Checkpoints are read without running code, and the replay is saved compactly (issue 16)."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch

import lbwrap
from lbwrap.experimental import SafetyModelExperimental
from lbwrap.safety_model import IncompatibleCheckpointError, LatentSafetyModel
from lbwrap.world_model import SequenceReplay

OBS = (3, 8, 8)
A = 2


def hazard(size=32):
    return lbwrap.make_pixel_env(lbwrap.PIXEL_HAZARD_ID, size=size)


def fill_safety(safety, env, steps=40, seed=0):
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    prev = np.zeros(2, np.float32)
    first, r, c = True, 0.0, 0.0
    for _ in range(steps):
        safety.add_step(obs[None], prev[None], [r], [c], [first], [False])
        prev = rng.uniform(-1, 1, 2).astype(np.float32)
        obs, r, _, _, info = env.step(prev)
        c, first = info["cost"], False


class CreatesMarker:
    """Unpickling this object calls ``open(marker, "w")``: code from the file runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ----------------------------------------------------------------------------- (a) crafted pickle
def test_a_crafted_pickle_is_refused_and_runs_no_code(tmp_path, tiny_safety):
    marker = tmp_path / "pwned"
    path = tmp_path / "safety_model.pt"
    payload = {"format": "lbwrap.safety_model", "version": 2, "state_dict": CreatesMarker(marker)}
    torch.save(payload, path)
    # the file is dangerous: a plain unpickler runs the code (on another marker)
    probe = tmp_path / "probe.pt"
    torch.save({"x": CreatesMarker(tmp_path / "probe-ran")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-ran").exists()

    # the refused global, as newer (2.13) and older (2.2) torch name it
    refused = r"refuses to unpickle.*(open was not an allowed global|Unsupported class _?io\.open)"
    with pytest.raises(IncompatibleCheckpointError, match=refused):
        LatentSafetyModel.load(path, device="cpu")
    with pytest.raises(IncompatibleCheckpointError, match="refuses to unpickle"):
        tiny_safety(hazard()).load_checkpoint(path)
    raw = tmp_path / "raw.pt"  # a bare pickle stream instead of torch's zip format
    raw.write_bytes(pickle.dumps(CreatesMarker(marker), protocol=2))
    with pytest.raises(IncompatibleCheckpointError, match="could not be read"):
        LatentSafetyModel.load(raw, device="cpu")
    assert not marker.exists()


def test_a_old_numpy_replay_checkpoints_say_what_to_do(tmp_path, tiny_safety):
    payload = tiny_safety(hazard()).checkpoint()
    payload["version"] = 1
    payload["replay"] = {"obs": np.zeros((1, 4, *OBS), np.uint8)}  # what version 1 held
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(IncompatibleCheckpointError,
                       match=r"(?s)include_replay=True.*weights_only=False.*'replay'"):
        LatentSafetyModel.load(tmp_path / "old.pt", device="cpu")


# ------------------------------------------------------------------------ (b) replay round trip
def wrapped_replay(seed=3):
    """3 streams of 10 steps: stream 0 wrapped twice, stream 1 part full, stream 2 wrapped once."""
    buf = SequenceReplay(30, OBS, A, num_envs=3, seed=seed)
    rng = np.random.default_rng(seed)
    plan = [[0, 1, 2]] * 4 + [[0, 2]] * 10 + [[0]] * 12
    for ids in plan:
        n = len(ids)
        cost = (rng.random(n) < 0.2).astype(np.float32)
        buf.add(rng.integers(0, 256, (n, *OBS), dtype=np.uint8),
                rng.standard_normal((n, A)).astype(np.float32), rng.standard_normal(n),
                cost, rng.random(n) < 0.1, rng.random(n) < 0.05, env_ids=np.array(ids))
    assert buf.steps_written.tolist() == [26, 4, 14]
    assert buf._pos.tolist() == [6, 4, 4] and buf._size.tolist() == [10, 4, 10]
    return buf


def assert_same_replay(a: SequenceReplay, b: SequenceReplay, rings: bool = True) -> None:
    for name in ("_pos", "_size", "_written"):
        if rings or name != "_pos":
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for env in range(a.num_envs):
        assert a.stored_range(env) == b.stored_range(env)
        for key, value in a.stream(env).items():
            np.testing.assert_array_equal(value, b.stream(env)[key], err_msg=f"{env} {key}")
    if rings:
        for key, value in a._data.items():
            np.testing.assert_array_equal(value, b._data[key], err_msg=key)


def assert_same_samples(a, b, seed, **kwargs):
    a.rng, b.rng = np.random.default_rng(seed), np.random.default_rng(seed)
    for _ in range(3):
        x, y = a.sample(6, 4, **kwargs), b.sample(6, 4, **kwargs)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_b_replay_round_trip_with_wrap_around(tmp_path):
    buf = wrapped_replay()
    path = tmp_path / "replay.npz"
    buf.save(path)
    with zipfile.ZipFile(path) as archive:  # np.savez_compressed: deflated members
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    with np.load(path, allow_pickle=False) as data:  # only the 24 stored steps, no padding
        assert data["obs"].shape == (24, *OBS)
    loaded = SequenceReplay.load(path)
    assert_same_replay(buf, loaded)
    assert_same_samples(buf, loaded, seed=11, cost_fraction=0.5)

    in_place = SequenceReplay(30, OBS, A, num_envs=3)
    in_place.add(np.full((3, *OBS), 7, np.uint8), np.ones((3, A)), np.ones(3), np.ones(3),
                 np.ones(3, bool), np.zeros(3, bool))  # old content is replaced, not mixed in
    in_place.load_bytes(buf.to_bytes())
    assert_same_replay(buf, in_place)
    assert_same_samples(buf, in_place, seed=12, cost_fraction=0.5)
    assert [p.name for p in tmp_path.iterdir()] == ["replay.npz"]


def test_b_replay_loads_into_a_larger_buffer_and_refuses_a_too_small_one(tmp_path):
    buf = wrapped_replay()
    buf.save(tmp_path / "replay.npz")
    larger = SequenceReplay.load(tmp_path / "replay.npz", capacity=3 * 25)
    assert larger.env_capacity == 25
    assert_same_replay(buf, larger, rings=False)  # same steps, counters and step numbers
    assert_same_samples(buf, larger, seed=13)  # windows are drawn relative to the oldest step
    larger.add(np.zeros((3, *OBS), np.uint8), np.zeros((3, A)), np.zeros(3), np.zeros(3),
               np.zeros(3, bool), np.zeros(3, bool))
    assert larger.steps_written.tolist() == [27, 5, 15] and len(larger) == 27
    with pytest.raises(ValueError, match=r"holds 10 steps in stream 0.*at most 8 per stream"):
        SequenceReplay.load(tmp_path / "replay.npz", capacity=3 * 8)
    fits = SequenceReplay(3 * 12, OBS, A, num_envs=3)
    fits.load_state_dict(buf.state_dict())
    assert_same_replay(buf, fits, rings=False)


# ---------------------------------------------------------------------------------- (c) size
def test_c_replay_file_scales_with_the_stored_steps(tmp_path):
    buf = SequenceReplay(100_000, (3, 64, 64), A, num_envs=1, seed=0)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    for t in range(500):  # a moving bright square on a gradient, with pixel noise
        frame = (yy * 2 + xx + t) % 200
        cy, cx = 10 + (t * 3) % 44, 10 + (t * 7) % 44
        frame = np.where((abs(yy - cy) < 6) & (abs(xx - cx) < 6), 250, frame)
        frame = frame[None] + rng.integers(0, 16, (3, 64, 64))
        buf.add(np.clip(frame, 0, 255).astype(np.uint8)[None], rng.uniform(-1, 1, (1, A)),
                [1.0], [float(t % 50 == 0)], [t == 0], [False])
    path = tmp_path / "replay.npz"
    buf.save(path)
    size = path.stat().st_size
    assert size < 10_000_000, size  # the full rings would be 1.2 GB
    assert size < 500 * 3 * 64 * 64  # compressed below the raw frames
    assert len(buf.to_bytes()) == size


# ------------------------------------------------------------------- (d) safety model round trip
def test_d_safety_model_round_trip_with_replay(tmp_path, tiny_safety):
    env = hazard()
    safety = tiny_safety(env)
    fill_safety(safety, env, steps=40)
    safety.update(1)
    path = tmp_path / "safety_model.pt"
    safety.save(path, include_replay=True)
    payload = torch.load(path, weights_only=True)  # plain data and tensors only
    assert payload["version"] == 2 and payload["replay"].dtype == torch.uint8
    loaded = LatentSafetyModel.load(path, device="cpu")
    for (name, a), b in zip(safety.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b) or (a.isnan().all() and b.isnan().all()), name
    assert_same_replay(safety.replay, loaded.replay)
    assert_same_samples(safety.replay, loaded.replay, seed=5, cost_fraction=0.25)
    assert loaded.wm_trainer.num_updates == 1
    into = tiny_safety(env)
    into.load_checkpoint(path)
    assert_same_replay(safety.replay, into.replay)
    safety.save(path)  # without the replay: a loaded model starts with an empty one
    assert len(LatentSafetyModel.load(path, device="cpu").replay) == 0


# -------------------------------------------------------------------------- (e) load on instance
def test_e_load_on_an_instance_raises(tmp_path, tiny_safety):
    safety = tiny_safety(hazard())
    path = tmp_path / "safety_model.pt"
    safety.save(path)
    with pytest.raises(TypeError, match=r"LatentSafetyModel\.load\(path\).*load_checkpoint\(path\)"):
        safety.load(path)
    assert isinstance(LatentSafetyModel.load(path, device="cpu"), LatentSafetyModel)
    assert "Rebuild a model" in LatentSafetyModel.load.__doc__


# ------------------------------------------------------------------------------ (f) readiness
@pytest.mark.parametrize("gate_open", [True, False])
def test_f_readiness_gate_round_trips(tmp_path, tiny_safety, gate_open):
    safety = tiny_safety(hazard(), ready_min_updates=2, ready_min_unsafe=1, ready_accuracy=0.7,
                         experimental=SafetyModelExperimental(ready_release_accuracy=0.6))
    safety.barrier_trainer.num_updates = 2
    safety.wm_trainer.num_updates = 2
    safety.unsafe_seen.fill_(5)

    def accuracies(value):
        safety.accuracy_ema.fill_(value)
        safety.action_accuracy_ema.fill_(value)

    if gate_open:
        accuracies(0.75)
        safety._refresh_gate()
    accuracies(0.65)  # between release and entry: only an open gate stays open
    assert safety.ready is gate_open
    path = tmp_path / "safety_model.pt"
    safety.save(path)
    loaded = LatentSafetyModel.load(path, device="cpu")
    assert loaded.ready is gate_open and loaded._gate_open is gate_open
    assert float(loaded.accuracy_ema) == pytest.approx(0.65)
    assert float(loaded.action_accuracy_ema) == pytest.approx(0.65)
    assert int(loaded.unsafe_seen) == 5
    assert loaded.barrier_trainer.num_updates == 2 and loaded.num_updates == 2


def test_f_version_1_checkpoints_load_with_the_gate_closed(tmp_path, tiny_safety):
    safety = tiny_safety(hazard())
    safety._gate_open = True
    payload = safety.checkpoint()
    payload["version"] = 1
    del payload["gate_open"]  # what version 1 wrote
    torch.save(payload, tmp_path / "v1.pt")
    assert LatentSafetyModel.load(tmp_path / "v1.pt", device="cpu")._gate_open is False
    payload["version"] = 3
    torch.save(payload, tmp_path / "v3.pt")
    with pytest.raises(IncompatibleCheckpointError, match="reads versions 1, 2"):
        LatentSafetyModel.load(tmp_path / "v3.pt", device="cpu")
