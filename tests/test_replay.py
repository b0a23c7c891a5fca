"""Tests of the sequence replay (ring buffers per env, window sampling, validation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lbwrap.world_model import SequenceReplay

OBS = (1, 4, 4)
A = 2


def fill(
    buf: SequenceReplay, steps: int, episode_len: int | list[int] = 7,
    cost_at: set[tuple[int, int]] | None = None,
) -> list[list[bool]]:
    """Add ``steps`` steps; reward encodes the global step, action[:, 0] the env id.

    ``obs`` holds ``step % 256``; ``is_first`` marks episode starts every ``episode_len``
    steps (per env, with an env-dependent phase). Returns the is_first history per env.
    """
    n = buf.num_envs
    lens = [episode_len] * n if isinstance(episode_len, int) else episode_len
    history: list[list[bool]] = [[] for _ in range(n)]
    for step in range(steps):
        first = np.array([(step + e) % lens[e] == 0 or step == 0 for e in range(n)])
        obs = np.full((n,) + OBS, step % 256, dtype=np.uint8)
        action = np.stack([np.arange(n), np.full(n, step)], axis=1).astype(np.float32)
        action[first] = 0.0
        action[:, 0] = np.arange(n)  # env id survives the zeroing for the checks
        cost = np.array([1.0 if (e, step) in (cost_at or set()) else 0.0 for e in range(n)])
        buf.add(obs, action, np.full(n, float(step)), cost, first, np.zeros(n, dtype=bool))
        for e in range(n):
            history[e].append(bool(first[e]))
    return history


def test_window_shapes_and_dtypes() -> None:
    buf = SequenceReplay(100, OBS, A, num_envs=2, seed=0)
    fill(buf, 30)
    batch = buf.sample(5, 8)
    assert batch["obs"].shape == (5, 8) + OBS and batch["obs"].dtype == np.uint8
    assert batch["action"].shape == (5, 8, A) and batch["action"].dtype == np.float32
    for key in ("reward", "cost"):
        assert batch[key].shape == (5, 8) and batch[key].dtype == np.float32
    for key in ("is_first", "is_terminal"):
        assert batch[key].shape == (5, 8) and batch[key].dtype == bool
    tb = buf.sample_torch(5, 8, "cpu")
    assert tb["obs"].dtype == torch.uint8 and tb["is_first"].dtype == torch.bool
    assert tb["action"].dtype == torch.float32 and tb["obs"].shape == (5, 8) + OBS
    assert len(buf) == 60 and buf.steps_per_env == 30


def test_windows_never_cross_write_head_after_wraparound() -> None:
    buf = SequenceReplay(2 * 20, OBS, A, num_envs=2, seed=1)
    total = 53  # wraps the 20-step rings more than twice
    fill(buf, total)
    assert len(buf) == 40
    seen_starts = set()
    for _ in range(200):
        batch = buf.sample(8, 6)
        steps = batch["reward"]
        # contiguous in time (a jump would mean crossing the write head) ...
        assert np.all(np.diff(steps, axis=1) == 1)
        # ... and only the most recent 20 steps of each stream are valid
        assert steps.min() >= total - 20 and steps.max() <= total - 1
        # one env per window
        assert np.all(batch["action"][:, :, 0] == batch["action"][:, :1, 0])
        assert np.all(batch["obs"][:, :, 0, 0, 0] == (steps % 256))
        seen_starts.update(steps[:, 0].astype(int).tolist())
    assert seen_starts == set(range(total - 20, total - 6 + 1))  # every valid start reachable


def test_is_first_flags_consistent() -> None:
    buf = SequenceReplay(3 * 50, OBS, A, num_envs=3, seed=2)
    history = fill(buf, 80, episode_len=[5, 7, 11])
    for _ in range(50):
        batch = buf.sample(16, 10)
        for b in range(16):
            env = int(batch["action"][b, 0, 0])
            steps = batch["reward"][b].astype(int)
            expected = [history[env][s] for s in steps]
            assert batch["is_first"][b].tolist() == expected
            # the convention: the action leading into a first step is zero
            assert np.all(batch["action"][b, batch["is_first"][b], 1] == 0)


def test_cost_fraction_honoured() -> None:
    buf = SequenceReplay(2 * 500, OBS, A, num_envs=2, seed=3)
    fill(buf, 700, cost_at={(1, 650), (0, 150)})  # (0, 150) was overwritten
    assert buf.num_cost_steps == 1
    for fraction, batch_size in ((0.5, 32), (0.25, 10), (1.0, 4)):
        batch = buf.sample(batch_size, 20, cost_fraction=fraction)
        has_cost = (batch["cost"] > 0).any(axis=1)
        assert has_cost.sum() >= int(np.ceil(fraction * batch_size))
        assert np.all(np.diff(batch["reward"], axis=1) == 1)
        assert batch["reward"].min() >= 200
    plain = [(buf.sample(32, 20)["cost"] > 0).any(axis=1).mean() for _ in range(20)]
    assert np.mean(plain) < 0.1  # without the fraction, cost windows stay rare


def test_cost_fraction_without_cost_steps() -> None:
    buf = SequenceReplay(100, OBS, A, seed=0)
    fill(buf, 40)
    batch = buf.sample(4, 10, cost_fraction=0.5)
    assert batch["cost"].sum() == 0
    with pytest.raises(ValueError, match="cost_fraction"):
        buf.sample(4, 10, cost_fraction=1.5)


def test_cost_window_near_buffer_edges() -> None:
    buf = SequenceReplay(30, OBS, A, seed=4)
    fill(buf, 47, cost_at={(0, 17), (0, 46)})  # oldest stored step and newest step
    for _ in range(50):
        batch = buf.sample(6, 12, cost_fraction=1.0)
        assert (batch["cost"] > 0).any(axis=1).all()
        assert np.all(np.diff(batch["reward"], axis=1) == 1)
        assert batch["reward"].min() >= 17 and batch["reward"].max() <= 46


def test_not_enough_steps_error() -> None:
    buf = SequenceReplay(100, OBS, A, num_envs=2)
    fill(buf, 5)
    with pytest.raises(ValueError, match="no env has 10 steps"):
        buf.sample(2, 10)
    with pytest.raises(ValueError, match="per-env capacity"):
        buf.sample(2, 60)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"capacity": 0}, "capacity"), ({"num_envs": 0}, "num_envs"),
     ({"action_dim": -1}, "action_dim"), ({"capacity": 3, "num_envs": 4}, "capacity"),
     ({"obs_shape": (3, 0, 4)}, "obs_shape")],
)
def test_constructor_validation(kwargs, message) -> None:
    args = {"capacity": 10, "obs_shape": OBS, "action_dim": A, "num_envs": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SequenceReplay(**args)


def test_add_validation() -> None:
    buf = SequenceReplay(20, OBS, A, num_envs=2)
    good = {
        "obs": np.zeros((2,) + OBS, dtype=np.uint8), "action": np.zeros((2, A)),
        "reward": np.zeros(2), "cost": np.zeros(2), "is_first": np.ones(2, dtype=bool),
        "is_terminal": np.zeros(2, dtype=bool),
    }
    buf.add(**good)
    bad_cases = [
        ({"obs": np.zeros((2,) + OBS, dtype=np.float32)}, TypeError, "uint8"),
        ({"obs": np.zeros((2, 4, 4, 1), dtype=np.uint8)}, ValueError, "obs must have shape"),
        ({"action": np.zeros((2, 3))}, ValueError, "action"),
        ({"reward": np.zeros(3)}, ValueError, "reward"),
        ({"cost": np.array([0.0, np.nan])}, ValueError, "cost contains NaN"),
        ({"is_first": np.array([0.5, 1.0])}, TypeError, "is_first"),
        ({"is_terminal": np.zeros((2, 1), dtype=bool)}, ValueError, "is_terminal"),
    ]
    for override, error, message in bad_cases:
        with pytest.raises(error, match=message):
            buf.add(**{**good, **override})
    buf.add(**{**good, "is_first": np.array([0, 1]), "obs": torch.zeros((2,) + OBS,
                                                                          dtype=torch.uint8)})
    assert len(buf) == 4


def test_memory_is_preallocated_and_bounded() -> None:
    buf = SequenceReplay(64, (3, 8, 8), A, num_envs=4)
    arrays_before = {k: v for k, v in buf._data.items()}
    nbytes = buf.nbytes
    assert buf._data["obs"].shape == (4, 16, 3, 8, 8)
    rng = np.random.default_rng(0)
    for step in range(100):
        buf.add(rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8), np.zeros((4, A)),
                np.zeros(4), np.zeros(4), np.full(4, step == 0), np.zeros(4, dtype=bool))
    assert buf.nbytes == nbytes and len(buf) == 64
    assert all(buf._data[k] is v for k, v in arrays_before.items())


def test_save_load_roundtrip(tmp_path) -> None:
    buf = SequenceReplay(60, OBS, A, num_envs=3, seed=5)
    fill(buf, 33, cost_at={(2, 30)})
    path = tmp_path / "replay.npz"
    buf.save(path)
    loaded = SequenceReplay.load(path, seed=5)
    assert len(loaded) == len(buf) and loaded.num_cost_steps == 1
    for key in buf._data:
        np.testing.assert_array_equal(loaded._data[key], buf._data[key])
    buf.rng = np.random.default_rng(9)
    loaded.rng = np.random.default_rng(9)
    a, b = buf.sample(4, 5), loaded.sample(4, 5)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    other = SequenceReplay(60, OBS, A + 1, num_envs=3)
    with pytest.raises(ValueError, match="action_dim"):
        other.load_state_dict(buf.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["replay.npz"]


def test_partial_adds_with_env_ids() -> None:
    """Streams written at different paces (``env_ids``) wrap independently."""
    buf = SequenceReplay(3 * 12, OBS, A, num_envs=3, seed=6)
    counters = [0, 0, 0]

    def add(ids: list[int]) -> None:
        n = len(ids)
        steps = np.array([counters[i] for i in ids], dtype=np.float32)
        action = np.stack([np.array(ids, np.float32), steps], axis=1)
        buf.add(np.zeros((n,) + OBS, np.uint8), action, steps, np.zeros(n),
                steps == 0, np.zeros(n, bool), env_ids=np.array(ids))
        for i in ids:
            counters[i] += 1

    for step in range(30):
        add([0, 1, 2] if step % 3 == 0 else [1] if step % 3 == 1 else [1, 2])
    assert counters == [10, 30, 20]
    assert len(buf) == 10 + 12 + 12 and buf.steps_per_env == 12
    for _ in range(100):
        batch = buf.sample(8, 10)
        env = batch["action"][:, 0, 0].astype(int)
        assert np.all(batch["action"][:, :, 0] == env[:, None])
        assert np.all(np.diff(batch["reward"], axis=1) == 1)
        for e, first_step, last_step in zip(env, batch["reward"][:, 0], batch["reward"][:, -1]):
            assert first_step >= max(0, counters[e] - 12) and last_step <= counters[e] - 1
    with pytest.raises(ValueError, match="env_ids"):
        buf.add(np.zeros((2,) + OBS, np.uint8), np.zeros((2, A)), np.zeros(2), np.zeros(2),
                np.zeros(2, bool), np.zeros(2, bool), env_ids=np.array([1, 1]))
    with pytest.raises(ValueError, match="no env has 13 steps|per-env capacity"):
        buf.sample(2, 13)
