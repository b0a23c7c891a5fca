"""Environments: pixels + safety cost in one uniform form.

* :func:`make_pixel_env` — safety-gymnasium vision tasks (``Safety*Vision-v0``) and any registered id.
* :func:`as_pixel_env` — adapt an existing Gymnasium env (image obs, Dict key or ``render()``).
* ``lbwrap/PixelHazard-v0`` — a fast built-in numpy pixel env with hazards and goals (see
  :mod:`lbwrap.envs.pixel_hazard`).
* ``lbwrap/PixelHazardRun-v0`` — its run task: progress along +x through an endless hazard field
  (see :mod:`lbwrap.envs.pixel_hazard_run`).
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
PIXEL_HAZARD_RUN_ID = "lbwrap/PixelHazardRun-v0"

if PIXEL_HAZARD_ID not in gym.registry:
    gym.register(id=PIXEL_HAZARD_ID, entry_point="lbwrap.envs.pixel_hazard:PixelHazardEnv")
if PIXEL_HAZARD_RUN_ID not in gym.registry:
    gym.register(id=PIXEL_HAZARD_RUN_ID,
                 entry_point="lbwrap.envs.pixel_hazard_run:PixelHazardRunEnv")

__all__ = [
    "PIXEL_HAZARD_ID",
    "PIXEL_HAZARD_RUN_ID",
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
