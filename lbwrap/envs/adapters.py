"""Turn any Gymnasium env into a *pixel + cost* env with one uniform interface.

Every env that lbwrap consumes looks the same after :class:`PixelCostEnv`:

* observation: ``Box(0, 255, (3, size, size), uint8)`` (channel-first; ``channel_first=False``
  gives ``(size, size, 3)``), taken from an image observation, a key of a Dict observation, or
  ``render()`` in ``rgb_array`` mode; nothing else of the original observation reaches the agent
  (safety-gymnasium's Dict also holds lidars that would leak privileged state);
* ``step`` is the Gymnasium 5-tuple; under ``action_repeat=k`` the action is repeated ``k``
  times, reward and cost are *summed* over the sub-steps, and the episode ends early when a
  sub-step ends it;
  safety-gymnasium tasks render their camera only for the last sub-step, the frame the agent
  sees (their observation of the other sub-steps is thrown away; rendering is most of a vision
  step's time), with physics, rewards and costs unchanged;
* ``info["cost"]``: the summed cost; ``info["violations"]``: how many sub-steps had cost > 0.
  The cost is read from the env's 6-tuple ``step`` (safety-gymnasium), an ``info`` key, or a
  user function;
* ``render()`` (``render_mode`` is always ``"rgb_array"``): the camera frame the agent saw last,
  ``(size, size, 3)`` uint8, so Gymnasium's ``check_env`` and video recorders work on every
  adapted env (safety-gymnasium's vision tasks refuse their own ``render()``). The source env's
  own rendering stays reachable as ``env.env.render()``.

Float images: non-uint8 frames with values in 0-255 are clipped and cast, as before; float
images in [0, 1] are *refused* with a ``ValueError`` that says how to convert them (casting them
would give black frames), and so are images with NaN or inf pixels. The same policy holds in
:class:`~lbwrap.wrappers.LatentObservation`, :class:`~lbwrap.sb3.VecLatentObservation` and
:class:`~lbwrap.latent_tracker.LatentTracker` (which refuse every non-uint8 frame).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["CostFn", "NoCostSignalError", "PixelCostEnv", "as_pixel_env", "resize_image"]

#: ``cost_fn(raw_obs, reward, info) -> float`` computes a step's cost from what the env returned.
CostFn = Callable[[Any, float, dict], float]

_IMAGE_KEYS = ("vision", "pixels", "image", "rgb", "camera")


class NoCostSignalError(KeyError):
    """The wrapped env does not provide the safety cost the way the adapter was told to read it."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def _is_image_box(space: gym.Space) -> bool:
    if not isinstance(space, spaces.Box) or space.dtype != np.uint8 or len(space.shape) != 3:
        return False
    return space.shape[-1] in (1, 3) or space.shape[0] in (1, 3)


def _float_image_error(space: gym.Space, where: str) -> ValueError | None:
    """The error for a float image Box (e.g. images in [0, 1]), ``None`` for other spaces."""
    if not isinstance(space, spaces.Box) or len(space.shape) != 3:
        return None
    assert space.dtype is not None  # a Box always has a dtype
    if space.dtype.kind != "f":
        return None
    if not (space.shape[-1] in (1, 3) or space.shape[0] in (1, 3)):
        return None
    scale = "(o * 255).round().astype(np.uint8)" if float(np.max(space.high)) <= 1.0 else \
        "np.clip(o, 0, 255).astype(np.uint8)"
    return ValueError(
        f"{where} is a float image space {space}; lbwrap needs uint8 RGB images (0-255) and "
        f"never casts floats (images in [0, 1] would become black frames). Convert them first "
        f"with a gymnasium.ObservationWrapper whose observation(o) returns {scale} and whose "
        f"observation_space is Box(0, 255, {space.shape}, np.uint8), then call as_pixel_env.")


def _hwc_shape(space: spaces.Box) -> tuple[int, int, int]:
    """(H, W, C) of an image Box, whether it is channel-last or channel-first."""
    h, w, c = space.shape
    if c in (1, 3):
        return h, w, c
    c, h, w = space.shape
    return h, w, c


def _as_uint8(frame: np.ndarray) -> np.ndarray:
    """A non-uint8 (H, W, C) image in 0-255 -> uint8; float [0, 1] or NaN/inf images raise."""
    if frame.dtype.kind == "f" and frame.size:
        if not np.isfinite(frame).all():
            raise ValueError(
                f"The env returned a {frame.dtype} image with NaN or inf pixels; lbwrap refuses "
                "it rather than feed the world model garbage. Fix the env's rendering (or replace "
                "them, e.g. np.nan_to_num, in a wrapper inside as_pixel_env).")
        low, high = float(frame.min()), float(frame.max())
        if 0.0 <= low and 0.0 < high <= 1.0:
            raise ValueError(
                f"The env returned a {frame.dtype} image with values in [0, 1]; lbwrap needs "
                "uint8 RGB images (0-255) and does not guess the scale (casting would give black "
                "frames). Convert it inside as_pixel_env: env = gymnasium.wrappers."
                "TransformObservation(env, lambda o: (o * 255).round().astype(np.uint8)) (for "
                "rendered frames, return (frame * 255).round().astype(np.uint8) from render()).")
    return np.clip(frame, 0, 255).astype(np.uint8)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, C) uint8 image to (size, size, C).

    Integer down-scaling averages blocks (area interpolation); anything else uses nearest
    neighbour. Pure numpy, no extra dependency.
    """
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    if h % size == 0 and w % size == 0:
        fh, fw = h // size, w // size
        blocks = image.reshape(size, fh, size, fw, image.shape[2]).astype(np.float32)
        return blocks.mean(axis=(1, 3)).round().astype(np.uint8)
    rows = (np.arange(size) * h / size).astype(np.int64)
    cols = (np.arange(size) * w / size).astype(np.int64)
    return image[rows][:, cols]


class PixelCostEnv(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Pixels-only observations, a cost in ``info``, optional action repeat (see module doc).

    Args:
        env: any Gymnasium env with a ``Box`` action space (safety-gymnasium's 6-tuple envs too).
        pixels: where the image comes from: ``"auto"`` (an image observation, else a Dict key
            among ``vision``/``pixels``/``image``/``rgb``/``camera``, else ``render()``),
            ``"render"``, ``"observation"``, or the name of a Dict key.
        cost: the name of the ``info`` key holding the cost, or ``cost_fn(raw_obs, reward, info)``.
            Ignored when the env's ``step`` returns the cost itself (safety-gymnasium 6-tuple).
        size: output image side in pixels (square); ``None`` keeps the source size (must be square).
        action_repeat: how many env steps each action is repeated for (>= 1).
        channel_first: ``(3, size, size)`` when true (PyTorch/SB3 ``CnnPolicy`` layout), else HWC.
    """

    def __init__(
        self,
        env: gym.Env,
        pixels: str = "auto",
        cost: str | CostFn = "cost",
        size: int | None = 64,
        action_repeat: int = 1,
        channel_first: bool = True,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, pixels=pixels, cost=cost, size=size, action_repeat=action_repeat,
            channel_first=channel_first,
        )
        gym.Wrapper.__init__(self, env)
        if not isinstance(env.action_space, spaces.Box):
            raise TypeError(
                f"lbwrap needs a continuous Box action space, got {env.action_space}. Discrete "
                "action envs are not supported by the barrier shield."
            )
        if int(action_repeat) < 1:
            raise ValueError(f"action_repeat must be >= 1, got {action_repeat}.")
        if size is not None and (int(size) != size or not 16 <= int(size) <= 1024):
            raise ValueError(f"size must be an integer in [16, 1024] (e.g. 64), got {size!r}.")
        if not (isinstance(cost, str) or callable(cost)):
            raise TypeError(f"cost must be an info key (str) or a callable, got {type(cost)}.")
        self.action_repeat = int(action_repeat)
        self.channel_first = bool(channel_first)
        self._cost = cost
        self._source, self._key = self._resolve_pixel_source(env, pixels)
        src_h, src_w, _ = self._source_shape(env)
        if size is None:
            if src_h != src_w:
                raise ValueError(
                    f"The env's images are {src_h}x{src_w}; pass size=<int> to resize them to a "
                    "square image."
                )
            size = src_h
        self.size = int(size)
        shape = (3, self.size, self.size) if self.channel_first else (self.size, self.size, 3)
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)
        box = env.action_space
        # float32 actions (SB3's recommendation); cast back to the env's dtype on the way in.
        self.action_space = spaces.Box(
            box.low.astype(np.float32), box.high.astype(np.float32), box.shape, np.float32
        )
        self._env_action_dtype = box.dtype
        self.metadata = {**getattr(env, "metadata", {}), "render_modes": ["rgb_array"]}
        self._last_frame: np.ndarray | None = None
        self._task = _safety_gym_task(env)
        self._last_raw_obs: Any = None
        self.skip_substep_observations = self._task is not None
        """Whether sub-steps before the last one skip the env's observation (safety-gymnasium
        tasks; set False to render every sub-step, e.g. to compare)."""

    @property
    def render_mode(self) -> str:  # type: ignore[override]
        """Always ``"rgb_array"``: :meth:`render` returns the camera frame the agent saw."""
        return "rgb_array"

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """The latest camera frame, ``(size, size, 3)`` uint8 (channel-last, as Gymnasium's
        ``rgb_array`` mode wants it, whatever ``channel_first``); ``None`` before ``reset``."""
        return None if self._last_frame is None else self._last_frame.copy()

    # ------------------------------------------------------------------ set-up helpers
    @staticmethod
    def _resolve_pixel_source(env: gym.Env, pixels: str) -> tuple[str, str | None]:
        space = env.observation_space
        render_ok = getattr(env, "render_mode", None) == "rgb_array"
        if pixels == "auto":
            if _is_image_box(space):
                return "observation", None
            if isinstance(space, spaces.Dict):
                for key in _IMAGE_KEYS:
                    if key in space.spaces and _is_image_box(space.spaces[key]):
                        return "key", key
            if render_ok:
                return "render", None
            floats = _float_image_error(space, "The env's observation space")
            if isinstance(space, spaces.Dict):
                for key in _IMAGE_KEYS:
                    if floats is None and key in space.spaces:
                        floats = _float_image_error(space.spaces[key], f"Dict key {key!r}")
            if floats is not None:
                raise floats
            raise ValueError(
                f"The env has no image observation (observation_space={space}) and does not render "
                "in 'rgb_array' mode. Create it with render_mode='rgb_array' (e.g. "
                "gym.make(id, render_mode='rgb_array')) or pass pixels=<Dict key of the image>."
            )
        if pixels == "render":
            if not render_ok:
                raise ValueError(
                    f"pixels='render' needs an env created with render_mode='rgb_array', "
                    f"this one has render_mode={getattr(env, 'render_mode', None)!r}."
                )
            return "render", None
        if pixels == "observation":
            floats = _float_image_error(space, "The env's observation space")
            if floats is not None:
                raise floats
            if not _is_image_box(space):
                raise ValueError(
                    f"pixels='observation' needs a uint8 image observation space (H, W, 3) or "
                    f"(3, H, W), got {space}."
                )
            return "observation", None
        if isinstance(space, spaces.Dict) and pixels in space.spaces:
            floats = _float_image_error(space.spaces[pixels], f"Dict key {pixels!r}")
            if floats is not None:
                raise floats
            if not _is_image_box(space.spaces[pixels]):
                raise ValueError(
                    f"Dict key {pixels!r} is not a uint8 image, it is {space.spaces[pixels]}."
                )
            return "key", pixels
        raise ValueError(
            f"pixels={pixels!r} is neither 'auto', 'render', 'observation' nor a key of the "
            f"observation Dict (observation_space={space})."
        )

    def _source_shape(self, env: gym.Env) -> tuple[int, int, int]:
        if self._source == "observation":
            # _resolve_pixel_source checked that these are image Boxes
            return _hwc_shape(cast(spaces.Box, env.observation_space))
        if self._source == "key":
            assert self._key is not None
            obs_space = cast(spaces.Dict, env.observation_space)
            return _hwc_shape(cast(spaces.Box, obs_space.spaces[self._key]))
        return (-1, -1, 3)  # render(): known after the first frame

    # ------------------------------------------------------------------ per-step helpers
    def _image(self, raw_obs: Any) -> np.ndarray:
        if self._source == "observation":
            frame = raw_obs
        elif self._source == "key":
            frame = raw_obs[self._key]
        else:
            frame = self.env.render()
            if frame is None:
                raise RuntimeError("env.render() returned None; create the env with render_mode='rgb_array'.")
        frame = np.asarray(frame)
        if frame.ndim != 3:
            raise ValueError(f"Expected an image of shape (H, W, C) or (C, H, W), got {frame.shape}.")
        if frame.shape[-1] not in (1, 3) and frame.shape[0] in (1, 3):
            frame = np.moveaxis(frame, 0, -1)  # CHW -> HWC
        if frame.shape[-1] == 1:
            frame = np.repeat(frame, 3, axis=-1)
        if frame.dtype != np.uint8:
            frame = _as_uint8(frame)
        if frame.shape[0] != self.size or frame.shape[1] != self.size:
            frame = resize_image(frame, self.size)
        self._last_frame = frame
        if self.channel_first:
            frame = frame.transpose(2, 0, 1)
        return np.ascontiguousarray(frame)

    def _read_cost(self, raw_obs: Any, reward: float, info: dict) -> float:
        if callable(self._cost):
            return float(self._cost(raw_obs, reward, info))
        if self._cost not in info:
            raise NoCostSignalError(
                f"The env's info has no {self._cost!r} key (keys: {sorted(info)}), so lbwrap "
                "cannot see the safety cost. Pass cost=<the info key that holds it> or "
                "cost=lambda obs, reward, info: <float> to as_pixel_env/make_pixel_env."
            )
        return float(info[self._cost])

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        base = self.env.unwrapped
        rng_before = getattr(base, "_np_random", None)
        raw_obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None and getattr(base, "_np_random", None) is rng_before:
            # The env seeded itself without ``super().reset(seed=seed)`` (safety-gymnasium's
            # Builder does this): give it the standard Gymnasium generator for that seed too,
            # so ``env.np_random`` follows the Gymnasium seeding contract.
            base._np_random, _ = gym.utils.seeding.np_random(seed)
        info = dict(info)
        info["cost"] = 0.0
        info["violations"] = 0
        self._last_raw_obs = raw_obs
        return self._image(raw_obs), info

    def _substep(self, action: np.ndarray, last: bool) -> tuple:
        """One env step; before the last sub-step of a repeat, a safety-gymnasium task returns
        its previous observation instead of computing (rendering) a new one, which the repeat
        would throw away. ``Builder.step`` calls ``task.obs()`` only to return it, after the
        physics step already ran ``mj_forward``, so nothing else changes."""
        if last or self._task is None or self._last_raw_obs is None:
            result = self.env.step(action)
            self._last_raw_obs = result[0]
            return result
        task = self._task
        previous = self._last_raw_obs
        task.obs = lambda: previous  # instance attribute: shadows the method for this call
        try:
            return self.env.step(action)
        finally:
            del task.obs

    def step(self, action):
        total_reward = 0.0
        total_cost = 0.0
        violations = 0
        terminated = truncated = False
        info: dict = {}
        raw_obs = None
        action = np.asarray(action, dtype=self._env_action_dtype)
        skipped = False
        for k in range(self.action_repeat):
            skipped = self.skip_substep_observations and k < self.action_repeat - 1
            result = self._substep(action, last=not skipped)
            if len(result) == 6:  # safety-gymnasium: obs, reward, cost, terminated, truncated, info
                raw_obs, reward, cost, terminated, truncated, info = result
                cost = float(cost)
            else:
                raw_obs, reward, terminated, truncated, info = result
                cost = self._read_cost(raw_obs, float(reward), info)
            total_reward += float(reward)
            total_cost += cost
            violations += int(cost > 0.0)
            if terminated or truncated:
                break
        if skipped and self._task is not None:  # the episode ended before the last sub-step
            raw_obs = self._task.obs()
            self._last_raw_obs = raw_obs
        info = dict(info)
        info["cost"] = total_cost
        info["violations"] = violations
        return self._image(raw_obs), total_reward, bool(terminated), bool(truncated), info


def _safety_gym_task(env: gym.Env) -> Any:
    """The task of a safety-gymnasium ``Builder`` env (it computes observations in
    ``task.obs()``), or None for other envs."""
    base = env.unwrapped
    task = getattr(base, "task", None)
    module = type(base).__module__ or ""
    if module.startswith("safety_gymnasium") and callable(getattr(task, "obs", None)):
        return task
    return None


def as_pixel_env(
    env: gym.Env,
    *,
    pixels: str = "auto",
    cost: str | CostFn = "cost",
    size: int | None = 64,
    action_repeat: int = 1,
    channel_first: bool = True,
) -> PixelCostEnv:
    """Make any Gymnasium env a pixel + cost env in one call (see :class:`PixelCostEnv`).

    Example::

        env = gym.make("Pendulum-v1", render_mode="rgb_array")
        env = lbwrap.as_pixel_env(env, cost=lambda obs, r, info: float(abs(obs[2]) > 6.0))
    """
    return PixelCostEnv(
        env, pixels=pixels, cost=cost, size=size, action_repeat=action_repeat,
        channel_first=channel_first,
    )

