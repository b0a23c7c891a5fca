"""lbwrap: safe reinforcement learning from pixels.

A latent world model learned from camera images, a latent barrier-like function B(z) on top of it
(B >= 0 safe, B < 0 unsafe), and the Gymnasium / Stable-Baselines3 parts that use them. Public
names are imported lazily, so ``import lbwrap`` stays cheap (no torch, no SB3). It does import
:mod:`lbwrap.envs` (numpy + Gymnasium only), which registers the built-in ids: right after
``import lbwrap``, ``gym.make("lbwrap/PixelHazard-v0")`` works and ``lbwrap.envs`` is there.
"""

from __future__ import annotations

import importlib
from typing import Any

from lbwrap._quiet import import_gymnasium_quietly

__version__ = "0.1.0"

# gymnasium-robotics (a safety-gymnasium dependency) prints a notice when gymnasium loads its
# plugins; importing gymnasium here, quietly, keeps later imports (e.g. SB3's) quiet too.
import_gymnasium_quietly()

# Registers lbwrap/PixelHazard-v0 and lbwrap/PixelHazardRun-v0 with Gymnasium (a few ms).
from lbwrap import envs as envs  # re-exported: lbwrap.envs

# public name -> module that defines it
_LAZY: dict[str, str] = {
    # envs
    "make_pixel_env": "lbwrap.envs",
    "as_pixel_env": "lbwrap.envs",
    "PixelCostEnv": "lbwrap.envs",
    "PIXEL_HAZARD_ID": "lbwrap.envs",
    "PIXEL_HAZARD_RUN_ID": "lbwrap.envs",
    "PixelHazardEnv": "lbwrap.envs.pixel_hazard",
    "PixelHazardRunEnv": "lbwrap.envs.pixel_hazard_run",
    # core
    "LatentState": "lbwrap.latent_state",
    "WorldModel": "lbwrap.world_model",
    "WorldModelConfig": "lbwrap.world_model",
    "SequenceReplay": "lbwrap.world_model",
    "BarrierNet": "lbwrap.barrier",
    "BarrierConfig": "lbwrap.barrier",
    "SafeActionFilter": "lbwrap.barrier",
    "FilterConfig": "lbwrap.barrier",
    "LatentSafetyModel": "lbwrap.safety_model",
    "SafetyModelConfig": "lbwrap.safety_model",
    # wrappers
    "LatentObservation": "lbwrap.wrappers",
    "BarrierShield": "lbwrap.wrappers",
    "BarrierPenalty": "lbwrap.wrappers",
    # SB3
    "CoTrainCallback": "lbwrap.sb3",
    "VecLatentObservation": "lbwrap.sb3",
    "VecBarrierShield": "lbwrap.sb3",
    "VecBarrierPenalty": "lbwrap.sb3",
    "VecRewardScale": "lbwrap.sb3",
    "BarrierSAC": "lbwrap.sb3",
    "VecLagrangianPenalty": "lbwrap.sb3",
    "LagrangianLoggerCallback": "lbwrap.sb3",
    "LatentRefresher": "lbwrap.sb3",
    "SafePixelAgent": "lbwrap.sb3",
    "AgentSettings": "lbwrap.sb3",
}

__all__ = list(_LAZY) + ["__version__"]


#: Submodules reachable as attributes without an import of their own (``lbwrap.experimental``).
_SUBMODULES = ("experimental",)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"lbwrap.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lbwrap' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
