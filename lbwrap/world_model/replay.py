"""Sequence replay of pixel episodes from N parallel envs (uint8 frames, bounded memory).

Each env has its own ring buffer of ``capacity // num_envs`` steps; :meth:`SequenceReplay.add`
writes one step to every stream (or to the streams named by ``env_ids``). Step ``t`` of a
stream stores ``obs[t]``, the action that led into it (zeros at an episode's first step), the
reward and cost received on arriving at it, ``is_first`` and ``is_terminal`` (see
:mod:`lbwrap.world_model.rssm`). Sampled windows are contiguous in one env's stream and never
cross the ring's write head; a window may contain an episode start, which ``is_first`` marks
(the model resets there).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["SequenceReplay"]

_FIELDS = ("obs", "action", "reward", "cost", "is_first", "is_terminal")


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
    def state_dict(self) -> dict[str, Any]:
        """Arrays, write position and sizes (arrays are not copied)."""
        state: dict[str, Any] = dict(self._data)
        state.update(pos=self._pos.copy(), size=self._size.copy(), num_envs=self.num_envs,
                     env_capacity=self.env_capacity, action_dim=self.action_dim,
                     obs_shape=np.asarray(self.obs_shape))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; shapes must match this buffer."""
        for key, expected in (("num_envs", self.num_envs), ("env_capacity", self.env_capacity),
                              ("action_dim", self.action_dim)):
            if int(state[key]) != expected:
                raise ValueError(f"replay state has {key}={int(state[key])}, this buffer has "
                                 f"{expected}")
        if tuple(np.asarray(state["obs_shape"]).tolist()) != self.obs_shape:
            raise ValueError(f"replay state has obs_shape {tuple(state['obs_shape'])}, this "
                             f"buffer has {self.obs_shape}")
        for key in _FIELDS:
            self._data[key][...] = state[key]
        self._pos = np.broadcast_to(np.asarray(state["pos"], np.int64), (self.num_envs,)).copy()
        self._size = np.broadcast_to(np.asarray(state["size"], np.int64), (self.num_envs,)).copy()

    def save(self, path: str | os.PathLike) -> None:
        """Atomically write the buffer to an uncompressed ``.npz`` file."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **self.state_dict())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, seed: int | None = None) -> SequenceReplay:
        """Build a buffer from a file written by :meth:`save`."""
        with np.load(os.fspath(path)) as data:
            state = {k: data[k] for k in data.files}
        buf = cls(int(state["env_capacity"]) * int(state["num_envs"]),
                  tuple(state["obs_shape"].tolist()), int(state["action_dim"]),
                  int(state["num_envs"]), seed)
        buf.load_state_dict(state)
        return buf
