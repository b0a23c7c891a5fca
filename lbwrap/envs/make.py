"""``make_pixel_env``: one call from an env id to lbwrap's pixel + cost interface."""

from __future__ import annotations

from numbers import Integral
from typing import Any

import gymnasium as gym

from lbwrap.envs.adapters import CostFn, PixelCostEnv
from lbwrap.envs.safety_gym import check_rendering, is_safety_vision_id, make_safety_vision_env

__all__ = ["make_pixel_env"]


def make_pixel_env(
    env_id: str,
    size: int = 64,
    action_repeat: int = 2,
    *,
    channel_first: bool = True,
    pixels: str = "auto",
    cost: str | CostFn = "cost",
    **make_kwargs: Any,
) -> PixelCostEnv:
    """Build a pixels-only env with a safety cost, ready for lbwrap and SB3.

    * ``Safety*Vision-v0`` ids (safety-gymnasium): the camera renders at ``size`` x ``size``
      directly (no down-scaling from 256), only the ``vision`` image reaches the agent (vector
      sensors and lidars are dropped: they would leak privileged state), reward and cost are summed
      over the ``action_repeat`` sub-steps, ``info["violations"]`` counts sub-steps with cost > 0.
    * Any other registered id (e.g. ``lbwrap/PixelHazard-v0``, or an env that renders in
      ``rgb_array`` mode): made with ``gym.make(env_id, **make_kwargs)`` and adapted by
      :class:`~lbwrap.envs.adapters.PixelCostEnv` (``pixels`` and ``cost`` say where image and cost
      come from).

    Args:
        env_id: a registered env id (a string; an env *instance* goes to
            :func:`~lbwrap.envs.adapters.as_pixel_env` instead).
        size: image side in pixels (16..1024).
        action_repeat: env steps per agent step (an int >= 1; the paper uses 2).
        channel_first: ``(3, size, size)`` observations if true, else ``(size, size, 3)``.
        pixels, cost: see :class:`~lbwrap.envs.adapters.PixelCostEnv`.
        **make_kwargs: passed to the env's constructor (``gym.make``); ``max_episode_steps``, if
            given, must be an int >= 1 (``gym.make`` applies it as a ``TimeLimit`` in env steps).

    Bad arguments raise before any env is built (a ``TypeError`` for an env instance, a
    ``ValueError`` naming the valid values otherwise, ``gym.error.NameNotFound`` for unknown ids).
    ``render()`` returns the camera frame the agent saw (``render_mode`` is ``"rgb_array"``), so
    ``gymnasium.utils.env_checker.check_env`` passes on the built-in envs and the vision tasks.

    Action boxes are the env's own, not rescaled: the built-in envs and the Point/Car vision tasks
    use [-1, 1]^2, but ``SafetyRacecar*Vision-v0`` does not: its box is
    [-20, 20] x [-0.785, 0.785] (wheel velocity, steering angle). lbwrap's shield stays inside
    whatever box the env declares; rescale it yourself (e.g. ``gymnasium.wrappers.RescaleAction``
    before ``as_pixel_env``) if your agent assumes [-1, 1].

    Seeding: ``env.reset(seed=s)`` fixes the layout; the same seed gives the same layout.
    """
    _check_arguments(env_id, size, action_repeat, make_kwargs)
    if is_safety_vision_id(env_id):
        env = make_safety_vision_env(env_id, size=size, **make_kwargs)
        try:
            check_rendering(env)
        except Exception:
            env.close()
            raise
        return PixelCostEnv(
            env, pixels="vision", cost="cost", size=size, action_repeat=action_repeat,
            channel_first=channel_first,
        )
    if env_id.startswith("Safety") and not is_safety_vision_id(env_id):
        raise ValueError(
            f"{env_id!r} is not a pixel task: lbwrap learns from camera images, so use a vision id "
            f"such as {_vision_twin(env_id)!r}."
        )
    if env_id not in gym.registry:
        import difflib

        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise gym.error.NameNotFound(
            f"Unknown env id {env_id!r}.{hint} Use a safety-gymnasium vision id "
            "(e.g. 'SafetyPointGoal1Vision-v0'), 'lbwrap/PixelHazard-v0', or any registered "
            "Gymnasium id whose env gives images or renders in rgb_array mode."
        )
    env_kwargs = dict(make_kwargs)
    if pixels in ("auto", "render") and "render_mode" not in env_kwargs:
        spec = gym.spec(env_id)
        creator = spec.entry_point
        modes = getattr(creator, "metadata", {}).get("render_modes", []) if callable(creator) else []
        if not modes and isinstance(creator, str):
            modes = getattr(gym.envs.registration.load_env_creator(creator), "metadata", {}).get(
                "render_modes", []
            )
        if "rgb_array" in modes:
            env_kwargs["render_mode"] = "rgb_array"
    env = gym.make(env_id, **env_kwargs)
    return PixelCostEnv(
        env, pixels=pixels, cost=cost, size=size, action_repeat=action_repeat,
        channel_first=channel_first,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_arguments(env_id: Any, size: Any, action_repeat: Any, make_kwargs: dict[str, Any]) -> None:
    """Raise before anything is built, naming the problem and the fix."""
    if not isinstance(env_id, str):
        if isinstance(env_id, gym.Env):
            raise TypeError(
                f"make_pixel_env takes an env id (a string such as 'lbwrap/PixelHazard-v0'), got "
                f"the env instance {env_id}: adapt an existing env with "
                "lbwrap.as_pixel_env(env, size=..., action_repeat=...) instead.")
        raise TypeError(
            f"make_pixel_env takes an env id (a string such as 'lbwrap/PixelHazard-v0'), got "
            f"{type(env_id).__name__}; for an existing env use lbwrap.as_pixel_env(env).")
    if not _is_int(size) or not 16 <= int(size) <= 1024:
        raise ValueError(f"size must be an int in [16, 1024] (the paper uses 64), got {size!r}.")
    if not _is_int(action_repeat) or int(action_repeat) < 1:
        raise ValueError(
            f"action_repeat must be an int >= 1 (env steps per agent step; 1: no repeat, the paper "
            f"uses 2), got {action_repeat!r}.")
    steps = make_kwargs.get("max_episode_steps")
    if steps is not None and (not _is_int(steps) or int(steps) < 1):
        raise ValueError(
            f"max_episode_steps must be an int >= 1 (env steps per episode) or left out for the "
            f"env's default, got {steps!r}.")


def _vision_twin(env_id: str) -> str:
    name, _, version = env_id.partition("-")
    if name.endswith("Gymnasium"):
        return f"{name[: -len('Gymnasium')]}VisionGymnasium-{version}"
    return f"{name}Vision-{version}"
