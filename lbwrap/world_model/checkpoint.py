"""Atomic checkpoint files for the world model (``{"format", "version", "config", ...}``)."""

from __future__ import annotations

import os
from typing import Any

import torch

from lbwrap._atomic import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "atomic_torch_save", "read_checkpoint"]

CHECKPOINT_FORMAT = "lbwrap.world_model"
CHECKPOINT_VERSION = 1


def atomic_torch_save(payload: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`lbwrap._atomic.atomic_write` (temporary file next to
    ``path``, fsync, ``os.replace``): if anything fails, an existing ``path`` is untouched."""
    atomic_write(path, lambda handle: torch.save(payload, handle))


def read_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> dict[str, Any]:
    """Load and check a world-model checkpoint; return its dict (config, state_dict, ...).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not
    an lbwrap world-model checkpoint (or has an unsupported version).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"world-model checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for non-checkpoint files
        raise ValueError(
            f"{path} is not an lbwrap world-model checkpoint (torch.load failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not an lbwrap world-model checkpoint (expected a dict with "
            f"format={CHECKPOINT_FORMAT!r}); was it saved with WorldModel.save()?"
        )
    version = payload.get("version")
    if version != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has world-model checkpoint version {version!r}; this lbwrap reads "
            f"version {CHECKPOINT_VERSION}"
        )
    for key in ("config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            msg = f"{path}: world-model checkpoint is missing its {key!r} entry"
            raise ValueError(msg)  # noqa: TRY004
    return payload
