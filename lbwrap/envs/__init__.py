"""Environments: pixels + safety cost in one uniform form.

* :func:`make_pixel_env` — safety-gymnasium vision tasks (``Safety*Vision-v0``) and any registered id.
* :func:`as_pixel_env` — adapt an existing Gymnasium env (image obs, Dict key or ``render()``).
* ``lbwrap/PixelHazard-v0`` — a fast built-in numpy pixel env with hazards (see
  :mod:`lbwrap.envs.pixel_hazard`).
"""

from lbwrap._quiet import import_gymnasium_quietly

import_gymnasium_quietly()

import gymnasium as gym

from lbwrap.envs.adapters import NoCostSignalError, PixelCostEnv, as_pixel_env, resize_image
from lbwrap.envs.make import make_pixel_env
from lbwrap.envs.safety_gym import (
    RenderBackendError,
    SafetyGymUnavailableError,
    ensure_render_backend,
    import_safety_gymnasium,
    is_safety_vision_id,
)

PIXEL_HAZARD_ID = "lbwrap/PixelHazard-v0"

if PIXEL_HAZARD_ID not in gym.registry:
    gym.register(id=PIXEL_HAZARD_ID, entry_point="lbwrap.envs.pixel_hazard:PixelHazardEnv")

__all__ = [
    "PIXEL_HAZARD_ID",
    "NoCostSignalError",
    "PixelCostEnv",
    "RenderBackendError",
    "SafetyGymUnavailableError",
    "as_pixel_env",
    "ensure_render_backend",
    "import_safety_gymnasium",
    "is_safety_vision_id",
    "make_pixel_env",
    "resize_image",
]
