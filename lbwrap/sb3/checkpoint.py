"""Checkpoint sets: agent, safety model, wrapper settings and run state, written as one unit.

A checkpoint is a folder ``<root>/step-<agent steps>/`` holding

* ``agent.zip`` — the SB3 agent (SAC, TD3, PPO or :class:`~lbwrap.sb3.BarrierSAC`);
* ``safety_model.pt`` — world model, barrier, action barrier, their optimisers, counters and the
  readiness gate (:meth:`~lbwrap.safety_model.LatentSafetyModel.save`; its pixel replay too with
  ``include_replay``);
* ``sac_replay.npz`` — optionally, the filled part of an off-policy agent's replay, compressed;
* ``shield_rng.pt`` — the state of the shield's candidate generator, so that a loaded agent
  draws the same candidate actions the live one would have drawn next;
* ``run_state.json`` — optionally, the caller's own state (counters of a training script);
* ``manifest.json`` — written last: format, version, step, the :class:`AgentSettings` (how the
  agent acts on pixels) and the size and SHA-256 of every other file.

The folder is assembled under a hidden temporary name and renamed into place only when complete;
then ``<root>/latest`` (a one-line text file, replaced atomically) names it, and older sets and
leftovers of interrupted saves are removed. A reader therefore never mixes files of two steps:
:func:`find_checkpoint` takes the set ``latest`` names if its checksums verify, else the newest
set that verifies, so a kill at any moment loses at most the save in progress.

Trust: the manifest, ``safety_model.pt`` (with its replay), the generator state and the agent's
replay are read without executing code (JSON, ``torch.load(weights_only=True)``,
``np.load(allow_pickle=False)``); ``agent.zip`` is read by SB3, whose zip keeps some objects
(e.g. schedules) as cloudpickle data that SB3 unpickles, so only load checkpoints you trust.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer

from lbwrap._atomic import atomic_write, atomic_write_text, fsync_dir
from lbwrap.safety_model import LatentSafetyModel

__all__ = [
    "CHECKPOINT_SET_FORMAT",
    "CHECKPOINT_SET_VERSION",
    "AgentSettings",
    "CheckpointError",
    "CheckpointSet",
    "find_checkpoint",
    "load_sb3_replay",
    "save_checkpoint_set",
    "save_sb3_replay",
]

CHECKPOINT_SET_FORMAT = "lbwrap.checkpoint_set"
CHECKPOINT_SET_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "latest"
AGENT_FILE = "agent.zip"
SAFETY_FILE = "safety_model.pt"
REPLAY_FILE = "sac_replay.npz"
RUN_STATE_FILE = "run_state.json"
SHIELD_RNG_FILE = "shield_rng.pt"
_TMP_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt or of another format."""


@dataclass(frozen=True)
class AgentSettings:
    """How a trained agent acts on pixels: everything the wrapper stack adds besides weights."""

    mode: str
    """Safety mode it was trained in (``lbwrap.sb3.recipes.MODES``)."""
    algorithm: str
    """SB3 class name of the agent: ``SAC``, ``TD3``, ``PPO`` or ``BarrierSAC``."""
    shield: bool
    """Whether executed actions pass the barrier shield (as in training)."""
    observation_shape: tuple[int, ...]
    """Shape of one pixel observation, e.g. ``(3, 64, 64)`` (channel-first) or ``(64, 64, 3)``."""
    shield_selection: str = "closest"
    """How the shield picks a substitute: ``closest``, ``critic`` (the agent's critic) or
    ``reward`` (the world model's predicted reward)."""
    intervention_penalty: float = 0.0
    """Training-only reward shaping of the shield (recorded, not used for acting)."""
    reward_scale: float = 1.0
    """Training-only reward multiplier (recorded, not used for acting)."""
    env_id: str | None = None
    """Pixel env id it was trained on, when known (``lbwrap.make_pixel_env``)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Arguments of ``lbwrap.make_pixel_env`` besides the id (size, action repeat, level...)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "observation_shape", tuple(int(d) for d in self.observation_shape))
        if self.algorithm not in _algorithm_names():
            raise ValueError(f"algorithm must be one of {_algorithm_names()}, got {self.algorithm!r}")
        if self.shield_selection not in ("closest", "critic", "reward"):
            raise ValueError(f"shield_selection must be 'closest', 'critic' or 'reward', got "
                             f"{self.shield_selection!r}")

    @property
    def channel_first(self) -> bool:
        """Whether observations are ``(C, H, W)`` (else ``(H, W, C)``)."""
        return not (self.observation_shape[-1] == 3 and self.observation_shape[0] != 3)

    def make_env(self, **overrides: Any) -> Any:
        """A new pixel env like the training one (needs ``env_id``)."""
        if self.env_id is None:
            raise ValueError("these settings do not name the env (env_id=None): build it yourself")
        import lbwrap

        return lbwrap.make_pixel_env(self.env_id, **{**self.env_kwargs, **overrides})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["observation_shape"] = list(self.observation_shape)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CheckpointError(f"unknown agent settings {unknown}: saved by a newer lbwrap?")
        return cls(**data)


def _algorithm_names() -> tuple[str, ...]:
    return tuple(_algorithms())


def _algorithms() -> dict[str, type[BaseAlgorithm]]:
    from stable_baselines3 import PPO, SAC, TD3

    from lbwrap.sb3.policy import BarrierSAC

    return {"SAC": SAC, "TD3": TD3, "PPO": PPO, "BarrierSAC": BarrierSAC}


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    """The SB3 class saved under ``name`` in a checkpoint's settings."""
    try:
        return _algorithms()[name]
    except KeyError:
        raise CheckpointError(f"unknown agent class {name!r}; lbwrap loads "
                              f"{_algorithm_names()}") from None


def algorithm_name(agent: BaseAlgorithm) -> str:
    """The name under which ``agent``'s class is saved (its nearest supported base class)."""
    for name, cls in reversed(list(_algorithms().items())):  # BarrierSAC before SAC
        if isinstance(agent, cls):
            return name
    raise TypeError(f"lbwrap checkpoints hold SAC, TD3, PPO or BarrierSAC agents, got "
                    f"{type(agent).__name__}")


# ------------------------------------------------------------------------------- SB3 replay
_REPLAY_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def save_sb3_replay(buffer: ReplayBuffer, path: str | Path) -> Path:
    """Write the filled part of an SB3 ``ReplayBuffer`` to a compressed ``.npz`` (atomically).

    SB3's own ``save_replay_buffer`` pickles the whole preallocated buffer; this stores only
    the transitions held, and loads without unpickling (:func:`load_sb3_replay`).
    """
    if type(buffer) is not ReplayBuffer:
        raise TypeError(f"save_sb3_replay stores SB3's plain ReplayBuffer, got "
                        f"{type(buffer).__name__}; use agent.save_replay_buffer for it")
    rows = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {name: getattr(buffer, name)[:rows] for name in _REPLAY_FIELDS
              if getattr(buffer, name, None) is not None}
    meta = np.asarray([buffer.pos, int(buffer.full), buffer.buffer_size, buffer.n_envs], np.int64)

    def write(handle: Any) -> None:
        np.savez_compressed(handle, meta=meta, **arrays)

    return atomic_write(path, write)


def load_sb3_replay(buffer: ReplayBuffer, path: str | Path) -> None:
    """Fill ``buffer`` from :func:`save_sb3_replay`'s file; shapes must match."""
    with np.load(Path(path), allow_pickle=False) as data:
        pos, full, size, n_envs = (int(v) for v in data["meta"])
        if n_envs != buffer.n_envs or (full and size != buffer.buffer_size) or (
                not full and pos > buffer.buffer_size):
            raise CheckpointError(
                f"{path}: the saved replay ({pos if not full else size} transitions, "
                f"{n_envs} envs, capacity {size}) does not fit this agent's buffer (capacity "
                f"{buffer.buffer_size}, {buffer.n_envs} envs): resume with the saved "
                "--buffer-size")
        for name in _REPLAY_FIELDS:
            target = getattr(buffer, name, None)
            if target is None or name not in data.files:
                continue
            stored = data[name]
            if stored.shape[1:] != target.shape[1:]:
                raise CheckpointError(f"{path}: saved {name} have shape {stored.shape[1:]}, the "
                                      f"agent's buffer {target.shape[1:]}")
            target[: len(stored)] = stored
    buffer.pos = pos % buffer.buffer_size if full else pos
    buffer.full = bool(full)


# ------------------------------------------------------------------------------- sets
@dataclass(frozen=True)
class CheckpointSet:
    """A verified checkpoint folder (see the module doc); paths point inside it."""

    folder: Path
    step: int
    settings: AgentSettings
    manifest: dict[str, Any]

    @property
    def agent_path(self) -> Path:
        return self.folder / AGENT_FILE

    @property
    def safety_path(self) -> Path:
        return self.folder / SAFETY_FILE

    @property
    def replay_path(self) -> Path | None:
        """The agent's saved replay, or None when the set holds none."""
        return self.folder / REPLAY_FILE if REPLAY_FILE in self.manifest["files"] else None

    def restore_shield_rng(self, safety: LatentSafetyModel) -> None:
        """Put the saved candidate-generator state into ``safety``'s shield (if the set has one)."""
        if SHIELD_RNG_FILE in self.manifest["files"]:
            state = torch.load(self.folder / SHIELD_RNG_FILE, weights_only=True)
            safety.shield_filter.generator.set_state(state)

    def run_state(self) -> dict[str, Any]:
        """The caller's run state saved with the set (empty if none)."""
        if RUN_STATE_FILE not in self.manifest["files"]:
            return {}
        return json.loads((self.folder / RUN_STATE_FILE).read_text())

    def load_agent(self, env: Any = None, device: str = "auto", safety: LatentSafetyModel | None = None,
                   **kwargs: Any) -> BaseAlgorithm:
        """Load ``agent.zip`` (for BarrierSAC into ``safety`` when given), and its replay."""
        cls = algorithm_class(self.settings.algorithm)
        if self.settings.algorithm == "BarrierSAC" and safety is not None:
            kwargs["safety"] = safety
        agent = cls.load(self.agent_path, env=env, device=device, **kwargs)
        replay_buffer = getattr(agent, "replay_buffer", None)  # off-policy algorithms only
        if self.replay_path is not None and isinstance(replay_buffer, ReplayBuffer):
            load_sb3_replay(replay_buffer, self.replay_path)
        return agent


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint_set(
    root: str | Path,
    agent: BaseAlgorithm,
    safety: LatentSafetyModel,
    settings: AgentSettings,
    run_state: dict[str, Any] | None = None,
    include_replay: bool = False,
) -> CheckpointSet:
    """Write agent, safety model (and replays, and ``run_state``) as one set under ``root``.

    ``include_replay``: also the safety model's pixel replay and the agent's replay (the filled
    part, compressed), so that a resumed run trains on the data collected so far.
    Returns the new set; ``root/latest`` names it once this returns.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    step = int(agent.num_timesteps)
    tmp = root / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        agent.save(tmp / AGENT_FILE)
        safety.save(tmp / SAFETY_FILE, include_replay=include_replay)
        rng_state = safety.shield_filter.generator.get_state()
        atomic_write(tmp / SHIELD_RNG_FILE, lambda handle: torch.save(rng_state, handle))
        buffer = getattr(agent, "replay_buffer", None)
        if include_replay and isinstance(buffer, ReplayBuffer):
            save_sb3_replay(buffer, tmp / REPLAY_FILE)
        if run_state is not None:
            atomic_write_text(tmp / RUN_STATE_FILE, json.dumps(run_state, indent=2, default=str))
        import lbwrap

        manifest = {
            "format": CHECKPOINT_SET_FORMAT, "version": CHECKPOINT_SET_VERSION,
            "step": step, "lbwrap_version": lbwrap.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": settings.to_dict(),
            "files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                      for p in sorted(tmp.iterdir()) if not p.name.startswith(".")},
        }
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2))
        fsync_dir(tmp)
        final = root / f"step-{step:010d}"
        k = 1
        while final.exists():  # saved again at the same step: a new name, the old stays intact
            final = root / f"step-{step:010d}-{k}"
            k += 1
        tmp.rename(final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, final.name + "\n")
    for other in root.iterdir():  # older sets and leftovers of interrupted saves
        if other.is_dir() and other != final and (other.name.startswith("step-")
                                                  or other.name.startswith(_TMP_PREFIX)):
            shutil.rmtree(other, ignore_errors=True)
    return CheckpointSet(final, step, settings, manifest)


def read_checkpoint_set(folder: str | Path) -> CheckpointSet:
    """Verify one set folder (manifest, sizes, checksums); :class:`CheckpointError` otherwise."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{folder} is not a complete lbwrap checkpoint ({MANIFEST} missing)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{manifest_path} is unreadable ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_SET_FORMAT:
        raise CheckpointError(f"{manifest_path} is not an lbwrap checkpoint manifest")
    if manifest.get("version") != CHECKPOINT_SET_VERSION:
        raise CheckpointError(f"{manifest_path} has checkpoint version {manifest.get('version')}; "
                              f"this lbwrap reads version {CHECKPOINT_SET_VERSION}")
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
        if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise CheckpointError(f"{path} does not match its checksum in {MANIFEST}: the file "
                                  "was truncated or changed after the checkpoint was written")
    return CheckpointSet(folder, int(manifest["step"]), AgentSettings.from_dict(manifest["settings"]),
                         manifest)


def find_checkpoint(path: str | Path) -> CheckpointSet:
    """The checkpoint at ``path``: a set folder, a root of sets, or a run folder holding
    ``checkpoints/``. From a root, the set ``latest`` names, else the newest set that verifies.
    """
    path = Path(path)
    if (path / MANIFEST).exists():
        return read_checkpoint_set(path)
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not root.is_dir():
        raise FileNotFoundError(f"No lbwrap checkpoint at {path}.")
    errors: list[str] = []
    candidates: list[Path] = []
    latest = root / LATEST
    if latest.is_file():
        candidates.append(root / latest.read_text().strip())
    candidates += sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True,
                         key=lambda p: p.name)
    for folder in candidates:
        try:
            return read_checkpoint_set(folder)
        except CheckpointError as exc:
            errors.append(str(exc))
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise FileNotFoundError(f"No complete lbwrap checkpoint in {root}{detail}.")

