"""Sequence replay of pixel episodes from N parallel envs (uint8 frames, bounded memory).

Each env has its own ring buffer of ``capacity // num_envs`` steps; :meth:`SequenceReplay.add`
writes one step to every stream (or to the streams named by ``env_ids``). Step ``t`` of a
stream stores ``obs[t]``, the action that led into it (zeros at an episode's first step), the
reward and cost received on arriving at it, ``is_first`` and ``is_terminal`` (see
:mod:`lbwrap.world_model.rssm`). Sampled windows are contiguous in one env's stream and never
cross the ring's write head; a window may contain an episode start, which ``is_first`` marks
(the model resets there).

Every stream also counts the steps ever written to it (:attr:`SequenceReplay.steps_written`): the
``k``-th step written to stream ``e`` has *step number* ``k``, which stays valid while the ring
wraps. :meth:`SequenceReplay.stored_range`, :meth:`SequenceReplay.get` and
:meth:`SequenceReplay.stream` read stored steps by step number, so a consumer that remembered a
step number can tell later whether that step is still stored (used by
:class:`lbwrap.sb3.refresh.LatentRefresher`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lbwrap._atomic import atomic_write

__all__ = ["SequenceReplay"]

_FIELDS = ("obs", "action", "reward", "cost", "is_first", "is_terminal")
_STATE_VERSION = 2  # 1 (no marker): the whole preallocated rings; 2: the stored steps only


class SequenceReplay:
    """Ring-buffered sequence replay for ``num_envs`` env streams (one ring each)."""

    def __init__(
        self, capacity: int, obs_shape: tuple[int, ...], action_dim: int, num_envs: int = 1,
        seed: int | None = None,
    ) -> None:
        for name, value in (("capacity", capacity), ("action_dim", action_dim),
                            ("num_envs", num_envs)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"SequenceReplay: {name} must be a positive int, got {value!r}")
        if capacity < num_envs:
            raise ValueError(f"SequenceReplay: capacity {capacity} < num_envs {num_envs}")
        obs_shape = tuple(int(s) for s in obs_shape)
        if not obs_shape or min(obs_shape) < 1:
            raise ValueError(f"SequenceReplay: bad obs_shape {obs_shape}")
        self.obs_shape = obs_shape
        self.action_dim = int(action_dim)
        self.num_envs = int(num_envs)
        self.env_capacity = int(capacity) // self.num_envs
        self.capacity = self.env_capacity * self.num_envs
        e, p = self.num_envs, self.env_capacity
        self._data: dict[str, np.ndarray] = {
            "obs": np.zeros((e, p) + obs_shape, dtype=np.uint8),
            "action": np.zeros((e, p, self.action_dim), dtype=np.float32),
            "reward": np.zeros((e, p), dtype=np.float32),
            "cost": np.zeros((e, p), dtype=np.float32),
            "is_first": np.zeros((e, p), dtype=bool),
            "is_terminal": np.zeros((e, p), dtype=bool),
        }
        self._pos = np.zeros(e, dtype=np.int64)  # next write index, per env
        self._size = np.zeros(e, dtype=np.int64)  # valid steps, per env
        self._written = np.zeros(e, dtype=np.int64)  # steps ever written, per env (monotonic)
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------ properties
    def __len__(self) -> int:
        """Steps stored, over all envs."""
        return int(self._size.sum())

    @property
    def steps_per_env(self) -> int:
        """Valid steps in the fullest env's stream (streams fill at their own pace)."""
        return int(self._size.max())

    @property
    def steps_written(self) -> np.ndarray:
        """(E,) steps ever written to each stream (a copy; never decreases, survives wrapping).

        The step written last to stream ``e`` has step number ``steps_written[e] - 1``. Saved by
        :meth:`state_dict`; a state without it (older files) counts the stored steps.
        """
        return self._written.copy()

    def stored_range(self, env_id: int) -> tuple[int, int]:
        """``(first, stop)``: the step numbers of stream ``env_id`` still stored are ``first..stop-1``."""
        if not 0 <= int(env_id) < self.num_envs:
            raise IndexError(f"SequenceReplay: env_id {env_id} not in [0, {self.num_envs})")
        stop = int(self._written[env_id])
        return stop - int(self._size[env_id]), stop

    def get(
        self, env_ids: np.ndarray | int, steps: np.ndarray | int,
        keys: tuple[str, ...] | None = None,
    ) -> dict[str, np.ndarray]:
        """Fields of stored steps addressed by (stream, step number); arrays are copies.

        ``env_ids`` and ``steps`` broadcast against each other to a shape S; each returned array
        has shape ``S + field_shape``. ``keys`` selects fields (default: all of ``obs``,
        ``action``, ``reward``, ``cost``, ``is_first``, ``is_terminal``). Raises ``IndexError``
        when a step was never written or has been overwritten.
        """
        env, step = np.broadcast_arrays(np.asarray(env_ids, np.int64), np.asarray(steps, np.int64))
        if env.size and (env.min() < 0 or env.max() >= self.num_envs):
            raise IndexError(f"SequenceReplay.get: env_ids must be in [0, {self.num_envs})")
        written = self._written[env]
        if env.size and (np.any(step >= written) or np.any(step < written - self._size[env])):
            raise IndexError("SequenceReplay.get: some steps are not stored (never written or "
                             "overwritten); check stored_range() first")
        ring = (self._pos[env] - (written - step)) % self.env_capacity
        names = _FIELDS if keys is None else keys
        unknown = [k for k in names if k not in self._data]
        if unknown:
            raise KeyError(f"SequenceReplay.get: unknown fields {unknown}; fields are {_FIELDS}")
        return {k: self._data[k][env, ring] for k in names}

    def stream(self, env_id: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Every stored step of stream ``env_id`` in chronological order (oldest first), as copies."""
        first, stop = self.stored_range(env_id)
        return self.get(int(env_id), np.arange(first, stop), keys)

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated arrays."""
        return sum(a.nbytes for a in self._data.values())

    def _valid_cost(self, threshold: float = 0.0) -> np.ndarray:
        """(E, P) mask of stored steps with cost > threshold."""
        mask = self._data["cost"] > threshold
        written = np.arange(self.env_capacity)[None, :] < self._size[:, None]
        return mask & written  # pos == size until a stream is full, so unwritten is [size:)

    @property
    def num_cost_steps(self) -> int:
        """Stored steps whose cost is > 0."""
        return int(self._valid_cost().sum())

    # ------------------------------------------------------------------ add
    def _check(self, name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if arr.shape != shape:
            raise ValueError(f"SequenceReplay.add: {name} must have shape {shape} "
                             f"(one row per env written), got {arr.shape}")
        return arr

    def add(
        self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, cost: np.ndarray,
        is_first: np.ndarray, is_terminal: np.ndarray, env_ids: np.ndarray | None = None,
    ) -> None:
        """Append one step to each of the given env streams (default: all ``num_envs``).

        ``obs`` uint8 (N, *obs_shape); ``action`` (N, A) is the action that led into ``obs``;
        ``reward``/``cost`` (N,) received on arriving at ``obs``; ``is_first``/``is_terminal``
        (N,) booleans (0/1 integers are accepted). ``env_ids`` (N,) distinct stream indices
        when only some streams get a step (e.g. an extra episode-start frame for one env).
        """
        if env_ids is None:
            ids = np.arange(self.num_envs)
        else:
            ids = np.asarray(env_ids, dtype=np.int64).reshape(-1)
            if ids.size == 0:
                return
            if ids.min() < 0 or ids.max() >= self.num_envs or np.unique(ids).size != ids.size:
                raise ValueError(f"SequenceReplay.add: env_ids must be distinct indices in "
                                 f"[0, {self.num_envs}), got {ids}")
        n = ids.size
        obs = self._check("obs", obs, (n,) + self.obs_shape)
        if obs.dtype != np.uint8:
            raise TypeError(f"SequenceReplay.add: obs must be uint8 (channel-first frames), got "
                            f"{obs.dtype}")
        action = self._check("action", action, (n, self.action_dim))
        reward = self._check("reward", reward, (n,))
        cost = self._check("cost", cost, (n,))
        for name, arr in (("action", action), ("reward", reward), ("cost", cost)):
            if arr.dtype.kind not in "fiu":
                raise TypeError(f"SequenceReplay.add: {name} must be numeric, got {arr.dtype}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"SequenceReplay.add: {name} contains NaN or inf: {arr}")
        flags = {}
        for name, value in (("is_first", is_first), ("is_terminal", is_terminal)):
            arr = self._check(name, value, (n,))
            if arr.dtype != bool and not (arr.dtype.kind in "iu" and np.isin(arr, (0, 1)).all()):
                raise TypeError(f"SequenceReplay.add: {name} must be bool (or 0/1 ints), got "
                                f"{arr.dtype} {arr}")
            flags[name] = arr.astype(bool)
        p = self._pos[ids]
        d = self._data
        d["obs"][ids, p] = obs
        d["action"][ids, p] = action
        d["reward"][ids, p] = reward
        d["cost"][ids, p] = cost
        d["is_first"][ids, p] = flags["is_first"]
        d["is_terminal"][ids, p] = flags["is_terminal"]
        self._pos[ids] = (p + 1) % self.env_capacity
        self._size[ids] = np.minimum(self._size[ids] + 1, self.env_capacity)
        self._written[ids] += 1

    # --------------------------------------------------------------- sample
    def _oldest(self) -> np.ndarray:
        """(E,) ring index of each stream's oldest valid step."""
        return (self._pos - self._size) % self.env_capacity

    def sample(
        self, batch_size: int, seq_len: int, cost_fraction: float = 0.0,
        cost_threshold: float = 0.0,
    ) -> dict[str, np.ndarray]:
        """``batch_size`` contiguous windows of ``seq_len`` steps, each from one env's stream.

        Returns arrays with layout (B, T, ...): obs uint8, action float32, reward, cost
        float32, is_first, is_terminal bool. At least ``ceil(cost_fraction * batch_size)``
        windows contain a step with cost > ``cost_threshold`` when any such step is stored.
        """
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if not 0.0 <= cost_fraction <= 1.0:
            raise ValueError(f"cost_fraction must be in [0, 1], got {cost_fraction}")
        if seq_len > self.env_capacity:
            raise ValueError(f"seq_len {seq_len} exceeds the per-env capacity "
                             f"{self.env_capacity} (capacity // num_envs)")
        n_start = np.maximum(self._size - seq_len + 1, 0)  # chronological window starts per env
        if n_start.sum() == 0:
            raise ValueError(f"no env has {seq_len} steps yet (at most {self.steps_per_env} "
                             "stored per env); collect more before sampling")
        rng = self.rng
        # uniform over all valid windows: envs weighted by how many windows they hold
        env = rng.choice(self.num_envs, size=batch_size, p=n_start / n_start.sum())
        start = (rng.random(batch_size) * n_start[env]).astype(np.int64)
        n_cost = int(np.ceil(cost_fraction * batch_size - 1e-9)) if cost_fraction > 0 else 0
        if n_cost:
            self._cost_windows(env, start, n_cost, seq_len, cost_threshold)
        oldest = self._oldest()[env]
        idx = (oldest[:, None] + start[:, None] + np.arange(seq_len)) % self.env_capacity
        rows = env[:, None]
        return {k: v[rows, idx] for k, v in self._data.items()}

    def _cost_windows(
        self, env: np.ndarray, start: np.ndarray, n_cost: int, seq_len: int, threshold: float
    ) -> None:
        """Overwrite the first ``n_cost`` (env, start) pairs with windows holding a cost step."""
        mask = self._valid_cost(threshold)
        mask[self._size < seq_len] = False  # streams too short to hold a window
        cost_env, cost_pos = np.nonzero(mask)
        if cost_env.size == 0:
            return
        pick = self.rng.integers(0, cost_env.size, size=n_cost)
        e = cost_env[pick]
        chrono = (cost_pos[pick] - self._oldest()[e]) % self.env_capacity  # index in stream
        low = np.maximum(0, chrono - seq_len + 1)
        high = np.minimum(chrono, self._size[e] - seq_len)  # inclusive
        env[:n_cost] = e
        start[:n_cost] = low + (self.rng.random(n_cost) * (high - low + 1)).astype(np.int64)

    def sample_torch(
        self, batch_size: int, seq_len: int, device: torch.device | str = "cpu",
        cost_fraction: float = 0.0, cost_threshold: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """:meth:`sample` as torch tensors on ``device``."""
        batch = self.sample(batch_size, seq_len, cost_fraction, cost_threshold)
        non_blocking = torch.device(device).type == "cuda"
        return {k: torch.from_numpy(v).to(device, non_blocking=non_blocking)
                for k, v in batch.items()}

    # ------------------------------------------------------------ persistence
    def _stored_index(self, pos: np.ndarray, size: np.ndarray, capacity: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(env, ring index) of every stored step: stream 0 oldest..newest, then stream 1, ..."""
        env = np.repeat(np.arange(self.num_envs), size)
        offsets = np.concatenate(([0], np.cumsum(size)[:-1]))
        k = np.arange(env.size) - np.repeat(offsets, size)  # index within its stream
        return env, (pos[env] - size[env] + k) % capacity

    def state_dict(self) -> dict[str, Any]:
        """The stored steps only (copies), with write positions, sizes and step counts.

        Each field (``obs``, ``action``, ...) holds ``size.sum()`` rows: stream 0's stored steps
        oldest first, then stream 1's, and so on (``size`` splits them), so the state grows with
        what is stored, not with the capacity. Only numpy arrays: :meth:`save` writes it with
        ``np.savez_compressed`` and :meth:`load` reads it with ``allow_pickle=False``.
        """
        env, ring = self._stored_index(self._pos, self._size, self.env_capacity)
        state: dict[str, Any] = {k: v[env, ring] for k, v in self._data.items()}
        state.update(pos=self._pos.copy(), size=self._size.copy(), written=self._written.copy(),
                     num_envs=self.num_envs, env_capacity=self.env_capacity,
                     action_dim=self.action_dim, obs_shape=np.asarray(self.obs_shape),
                     replay_version=_STATE_VERSION)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (or the full-capacity layout of older lbwrap files).

        ``num_envs``, ``action_dim`` and ``obs_shape`` must match this buffer. The capacity may
        differ as long as every stream's stored steps fit: with the same capacity the ring is
        restored exactly (write positions included, so sampling continues as it would have);
        with another, each stream's steps are laid out oldest first from ring index 0.
        """
        for key, expected in (("num_envs", self.num_envs), ("action_dim", self.action_dim)):
            if int(state[key]) != expected:
                raise ValueError(f"replay state has {key}={int(state[key])}, this buffer has "
                                 f"{expected}")
        if tuple(np.asarray(state["obs_shape"]).tolist()) != self.obs_shape:
            raise ValueError(f"replay state has obs_shape {tuple(state['obs_shape'])}, this "
                             f"buffer has {self.obs_shape}")
        e = self.num_envs
        pos = np.broadcast_to(np.asarray(state["pos"], np.int64), (e,)).copy()
        size = np.broadcast_to(np.asarray(state["size"], np.int64), (e,)).copy()
        written = np.broadcast_to(np.asarray(state.get("written", size), np.int64), (e,)).copy()
        saved_capacity = int(state["env_capacity"])
        if "replay_version" not in state:  # older files: the whole preallocated rings
            if saved_capacity != self.env_capacity:
                raise ValueError(f"replay state has env_capacity={saved_capacity}, this buffer "
                                 f"has {self.env_capacity}")
            for key in _FIELDS:
                self._data[key][...] = state[key]
            self._pos, self._size, self._written = pos, size, written
            return
        if int(state["replay_version"]) != _STATE_VERSION:
            raise ValueError(f"replay state version {int(state['replay_version'])} is not "
                             f"supported (this lbwrap reads version {_STATE_VERSION})")
        if size.max() > self.env_capacity:
            stream = int(size.argmax())
            raise ValueError(
                f"replay state holds {int(size.max())} steps in stream {stream}, this buffer "
                f"holds at most {self.env_capacity} per stream (capacity {self.capacity} // "
                f"num_envs {e}); build it with capacity >= {int(size.max()) * e}")
        if (size.min() < 0 or size.max() > saved_capacity or pos.min() < 0
                or pos.max() >= saved_capacity or np.any(written < size)):
            raise ValueError(f"replay state is inconsistent: pos {pos.tolist()}, size "
                             f"{size.tolist()}, written {written.tolist()}, env_capacity "
                             f"{saved_capacity}")
        total = int(size.sum())
        rows: dict[str, np.ndarray] = {}
        for key in _FIELDS:
            arr = np.asarray(state[key])
            expected_shape = (total,) + self._data[key].shape[2:]
            if arr.shape != expected_shape:
                raise ValueError(f"replay state field {key!r} has shape {arr.shape}, expected "
                                 f"{expected_shape} (sum of size {size.tolist()} rows)")
            rows[key] = arr
        if saved_capacity != self.env_capacity:
            pos = size % self.env_capacity  # oldest step at ring index 0
        for stream, old in enumerate(self._size):  # clear what this buffer held (only that:
            for key in _FIELDS:                     # untouched pages of a big ring stay unmapped)
                self._data[key][stream, :old] = 0
        env, ring = self._stored_index(pos, size, self.env_capacity)
        for key in _FIELDS:
            self._data[key][env, ring] = rows[key]
        self._pos, self._size, self._written = pos, size, written

    def to_bytes(self) -> bytes:
        """:meth:`state_dict` as the bytes of a compressed ``.npz`` (what :meth:`save` writes)."""
        handle = io.BytesIO()
        np.savez_compressed(handle, **self.state_dict())
        return handle.getvalue()

    def load_bytes(self, data: bytes | bytearray | memoryview | np.ndarray | torch.Tensor) -> None:
        """Load :meth:`to_bytes` output (also as a uint8 array or tensor) into this buffer."""
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        if isinstance(data, np.ndarray):
            data = data.tobytes()
        with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as npz:
            self.load_state_dict({k: npz[k] for k in npz.files})

    def save(self, path: str | os.PathLike) -> None:
        """Atomically write the stored steps to a compressed ``.npz`` file (:meth:`state_dict`)."""
        atomic_write(path, lambda handle: np.savez_compressed(handle, **self.state_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike, seed: int | None = None,
             capacity: int | None = None) -> SequenceReplay:
        """Build a buffer from a file written by :meth:`save` (read with ``allow_pickle=False``).

        ``capacity``: of the new buffer (all envs together); default: the saved one.
        """
        with np.load(os.fspath(path), allow_pickle=False) as data:
            state = {k: data[k] for k in data.files}
        num_envs = int(state["num_envs"])
        if capacity is None:
            capacity = int(state["env_capacity"]) * num_envs
        buf = cls(capacity, tuple(state["obs_shape"].tolist()), int(state["action_dim"]),
                  num_envs, seed)
        buf.load_state_dict(state)
        return buf
