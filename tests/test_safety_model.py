"""LatentSafetyModel: construction from env spaces, training, readiness gate, checkpoints."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import lbwrap
from lbwrap.experimental import SafetyModelExperimental
from lbwrap.safety_model import IncompatibleCheckpointError, LatentSafetyModel


def hazard(size=32):
    return lbwrap.make_pixel_env(lbwrap.PIXEL_HAZARD_ID, size=size)


def fill(safety, env, steps=40, seed=0):
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    prev = np.zeros(2, np.float32)
    first, r, c = True, 0.0, 0.0
    for _ in range(steps):
        safety.add_step(obs[None], prev[None], [r], [c], [first], [False])
        prev = rng.uniform(-1, 1, 2).astype(np.float32)
        obs, r, _, _, info = env.step(prev)
        c, first = info["cost"], False


def test_for_env_sizes_from_spaces(tiny_safety):
    safety = tiny_safety(hazard(32))
    assert safety.obs_shape == (3, 32, 32) and safety.action_dim == 2
    assert safety.world_model.feature_dim == 16 + 4
    with pytest.raises(ValueError, match="uint8 RGB image"):
        LatentSafetyModel.for_env(gym.make("Pendulum-v1"))
    with pytest.raises(ValueError, match="preset"):
        LatentSafetyModel.for_env(hazard(32), preset="huge")


def test_update_trains_and_reports_metrics(tiny_safety):
    env = hazard()
    safety = tiny_safety(env)
    with pytest.raises(RuntimeError, match="seq_len"):
        safety.update(1)
    fill(safety, env)
    before = [p.detach().clone() for p in safety.world_model.parameters()]
    metrics = safety.update(2)
    assert safety.wm_trainer.num_updates == 2 and safety.barrier_trainer.num_updates == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, safety.world_model.parameters()))
    assert {"world_model/loss", "barrier/loss", "safety/ready"} <= set(metrics)


def test_readiness_gate(tiny_safety):
    safety = tiny_safety(hazard(), ready_min_updates=2, ready_min_unsafe=1, ready_accuracy=0.7)
    assert not safety.ready
    safety.barrier_trainer.num_updates = 2
    safety.unsafe_seen.fill_(5)
    safety.accuracy_ema.fill_(0.69)
    assert not safety.ready
    safety.accuracy_ema.fill_(0.71)
    safety.action_accuracy_ema.fill_(0.69)  # the default shield predicts with the action barrier
    assert not safety.ready
    safety.action_accuracy_ema.fill_(0.71)
    assert safety.ready
    safety.force_ready = False
    assert not safety.ready


@pytest.mark.parametrize("release", [None, 0.6])
def test_readiness_gate_hysteresis(tiny_safety, release):
    safety = tiny_safety(hazard(), ready_min_updates=2, ready_min_unsafe=1, ready_accuracy=0.7,
                         experimental=SafetyModelExperimental(ready_release_accuracy=release))
    safety.barrier_trainer.num_updates = 2
    safety.unsafe_seen.fill_(5)

    def accuracies(value):
        safety.accuracy_ema.fill_(value)
        safety.action_accuracy_ema.fill_(value)

    accuracies(0.65)
    safety._refresh_gate()  # what every update() call ends with
    assert not safety.ready  # never opened: the entry threshold applies
    accuracies(0.75)
    safety._refresh_gate()
    assert safety.ready
    accuracies(0.65)  # below entry, above release
    assert safety.ready is (release is not None)
    safety._refresh_gate()
    accuracies(0.55)  # below both
    safety._refresh_gate()
    assert not safety.ready
    accuracies(0.65)  # closed again: the entry threshold applies again
    assert not safety.ready


def test_ready_release_accuracy_is_validated(tiny_safety):
    with pytest.raises(ValueError, match="ready_release_accuracy must be in"):
        tiny_safety(hazard(), ready_accuracy=0.7,
                    experimental=SafetyModelExperimental(ready_release_accuracy=0.8))


def test_readiness_gate_without_action_barrier(tiny_safety):
    safety = tiny_safety(hazard(), ready_min_updates=2, ready_min_unsafe=1, ready_accuracy=0.7,
                         action_barrier=None)
    assert safety.action_barrier is None
    assert safety.shield_filter.config.predictor == "prior"
    safety.barrier_trainer.num_updates = 2
    safety.unsafe_seen.fill_(5)
    safety.accuracy_ema.fill_(0.71)
    assert safety.ready


def test_checkpoint_round_trip(tmp_path, tiny_safety):
    env = hazard()
    safety = tiny_safety(env)
    fill(safety, env)
    safety.update(1)
    path = tmp_path / "safety.pt"
    safety.save(path, include_replay=True)
    loaded = LatentSafetyModel.load(path, device="cpu")
    for (name, a), b in zip(safety.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b) or (a.isnan().all() and b.isnan().all()), name
    assert len(loaded.replay) == len(safety.replay)
    assert loaded.wm_trainer.num_updates == 1
    state = safety.world_model.initial_state(1)
    action = torch.zeros(1, 2)
    torch.testing.assert_close(safety.world_model.img_step(state, action, sample=False).deter,
                               loaded.world_model.img_step(state, action, sample=False).deter)
    from conftest import TINY_WORLD_MODEL

    other = tiny_safety(env, world_model_overrides={**TINY_WORLD_MODEL, "stoch_dim": 6})
    with pytest.raises(IncompatibleCheckpointError, match="stoch_dim"):
        other.load_checkpoint(path)


def test_bad_checkpoints_are_refused_and_saving_is_atomic(tmp_path, tiny_safety, monkeypatch):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(IncompatibleCheckpointError, match="could not be read"):
        LatentSafetyModel.load(junk)
    torch.save({"format": "something.else"}, tmp_path / "other.pt")
    with pytest.raises(IncompatibleCheckpointError, match="not an lbwrap safety-model"):
        LatentSafetyModel.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        LatentSafetyModel.load(tmp_path / "missing.pt")
    safety = tiny_safety(hazard())
    path = tmp_path / "good.pt"
    safety.save(path)
    good = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        safety.save(path)
    assert path.read_bytes() == good  # the earlier checkpoint is intact
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".good")] == []


def test_check_spaces_messages(tiny_safety):
    safety = tiny_safety(hazard(32))
    with pytest.raises(ValueError, match="built for 2-d actions"):
        safety.check_spaces(hazard(32).observation_space, gym.spaces.Box(-1, 1, (3,), np.float32))
    with pytest.raises(ValueError, match="action box"):
        safety.check_spaces(hazard(32).observation_space, gym.spaces.Box(-2, 2, (2,), np.float32))


def test_seed_fixes_initial_weights_whatever_ran_before_and_leaves_global_rng_alone(tiny_safety):
    torch.manual_seed(1)
    first = tiny_safety(hazard(), seed=7)
    torch.manual_seed(2)  # another global state, as after another run in the same process
    state = torch.random.get_rng_state()
    second = tiny_safety(hazard(), seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # construction drew nothing globally
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b) or (a.isnan().all() and b.isnan().all()), name
    other = tiny_safety(hazard(), seed=8)
    assert not torch.equal(next(other.world_model.parameters()),
                           next(first.world_model.parameters()))


def test_bf16_autocast_trains_in_mixed_precision_with_float32_weights():
    """config.autocast="bf16": the forward passes run in bfloat16 (losses differ slightly from
    float32, on the same batch), weights and optimiser states stay float32, nothing is skipped."""
    import numpy as np
    import torch
    from conftest import make_tiny_safety

    import lbwrap

    env = lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=32)
    losses = {}
    for mode in ("off", "bf16"):
        safety = make_tiny_safety(env, autocast=mode)
        rng = np.random.default_rng(0)
        obs, _ = env.reset(seed=0)
        first = True
        for _ in range(60):
            action = rng.uniform(-1, 1, 2).astype(np.float32)
            nxt, reward, term, _trunc, info = env.step(action)
            safety.add_step(obs[None], action[None], np.array([reward]), np.array([info["cost"]]),
                            np.array([first]), np.array([term]))
            obs, first = nxt, False
        metrics = safety.update(1)
        losses[mode] = metrics["world_model/loss"], metrics["barrier/loss"]
        assert metrics["world_model/step_skipped"] == 0.0 and metrics["barrier/step_skipped"] == 0.0
        assert {p.dtype for p in safety.parameters()} == {torch.float32}
    assert losses["bf16"] != losses["off"]  # autocast engaged
    np.testing.assert_allclose(losses["bf16"], losses["off"], rtol=0.05)
    env.close()
    with pytest.raises(ValueError, match="autocast must be 'off' or 'bf16'"):
        lbwrap.SafetyModelConfig(autocast="fp8")
