"""PixelHazardRun: run along an endless corridor of hazards, seen through an egocentric camera.

The velocity ("run") counterpart of :mod:`lbwrap.envs.pixel_hazard`, modelled on Safety
Gymnasium's run tasks: the reward is progress along a fixed heading (+x), so a pixel agent learns
it quickly, while hazards it does not know in advance lie in its way, so staying safe needs vision.
Plain numpy, like PixelHazard (same colours, same observation / ``info["cost"]`` contract).

World
    An endless corridor along x: ``|y| <= corridor_half`` (default 1.0), walls beyond it (grey,
    free to touch; they clip the robot's centre to ``|y| <= corridor_half - robot_radius``). The
    robot starts at ``x = 0`` with ``y`` uniform in ``[-corridor_half / 2, corridor_half / 2]``.

Hazards
    Laid out in chunks of ``chunk_length`` (default 1.0) world units along x. Chunk ``k`` holds
    ``hazards_per_chunk`` circles of radius ``hazard_radius`` whose centres are uniform in the
    chunk's x-range and in ``|y| <= corridor_half - hazard_radius``, at least
    ``1.6 * hazard_radius`` apart within the chunk; chunks with ``k * chunk_length <
    clear_start`` stay empty, so the robot never starts in or next to a hazard. Each chunk is
    drawn from its own generator, seeded by the episode's layout seed and ``k``: the layout
    depends on the reset seed only, never on where the robot went, and is generated lazily as
    the robot advances (forwards or backwards). ``level`` 0 / 1 / 2 selects 0 / 1 / 2 hazards per
    chunk unless ``hazards_per_chunk`` is given.

Dynamics, reward, cost
    Holonomic velocity control exactly as in PixelHazard: the action in ``Box(-1, 1, (2,))`` is
    sanitised (non-finite entries -> 0, clipped, rescaled to norm <= 1), optionally smoothed by
    ``inertia``, and moves the robot by at most ``max_step`` per step. ``reward =
    reward_progress * (x' - x)`` (so at most ``reward_progress * max_step`` per step, 25 per
    default 500-step episode). ``info["cost"] = 1.0`` when the step ends with the robot's centre
    strictly inside a hazard circle, else 0.0. Episodes never terminate; the env truncates them
    after ``max_episode_steps`` itself.

Observation
    ``Box(0, 255, (size, size, 3), uint8)``, channel-last, an axis-aligned window of half-width
    ``view_radius`` (default 1.0, so the agent sees one unit, 20 steps at full speed, ahead)
    centred on the robot and snapped to a world-fixed pixel grid (no resampling jitter): dark
    floor, grey walls, blue hazards, red robot.

Diagnostics (privileged; for scripted policies, tests and analysis, never for agents)
    ``robot_pos``, :meth:`PixelHazardRunEnv.hazards_between` and
    :meth:`PixelHazardRunEnv.hazard_distance`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lbwrap.envs.pixel_hazard import (
    FLOOR_COLOUR,
    HAZARD_COLOUR,
    ROBOT_COLOUR,
    WALL_COLOUR,
    _is_int,
    _is_real,
    _resolve_options,
)

__all__ = ["LEVEL_HAZARDS_PER_CHUNK", "PixelHazardRunConfig", "PixelHazardRunEnv"]

#: Hazards per chunk selected by each ``level`` (when ``hazards_per_chunk`` is not given).
LEVEL_HAZARDS_PER_CHUNK: dict[int, int] = {0: 0, 1: 1, 2: 2}

_HAZARD_SEPARATION = 1.6  # minimum centre distance within a chunk, in hazard radii
_MAX_TRIES = 200  # rejection-sampling draws per hazard before the chunk keeps fewer
_MIN_DRAW_RADIUS_PX = 0.75  # every disk covers at least one pixel centre
_CHUNK_CACHE = 64  # chunks kept in memory (the robot sees at most a few at a time)


@dataclass(frozen=True)
class PixelHazardRunConfig:
    """Options of :class:`PixelHazardRunEnv` (validated; bad values raise ``ValueError``).

    Attributes:
        level: 0, 1 or 2: 0, 1 or 2 hazards per chunk.
        hazards_per_chunk: explicit hazards per chunk (overrides ``level``).
        chunk_length: length of a layout chunk along x, world units.
        clear_start: chunks that begin before this x stay free of hazards.
        size: side of the square observation image in pixels (>= 16).
        view_radius: half-width of the egocentric window in world units.
        corridor_half: the corridor is ``|y| <= corridor_half``.
        robot_radius: radius of the robot disk (walls and drawing).
        hazard_radius: radius of the hazard circles (cost when the robot centre is inside).
        max_step: maximum robot displacement per step, in world units.
        inertia: velocity smoothing in ``[0, 1)``; 0 means pure velocity control.
        reward_progress: reward per world unit of progress along +x.
        max_episode_steps: the episode is truncated after this many steps.
    """

    level: int = 2
    hazards_per_chunk: int | None = None
    chunk_length: float = 1.0
    clear_start: float = 1.0
    size: int = 64
    view_radius: float = 1.0
    corridor_half: float = 1.0
    robot_radius: float = 0.1
    hazard_radius: float = 0.25
    max_step: float = 0.05
    inertia: float = 0.0
    reward_progress: float = 1.0
    max_episode_steps: int = 500

    def __post_init__(self) -> None:
        if not _is_int(self.level) or self.level not in LEVEL_HAZARDS_PER_CHUNK:
            raise ValueError(
                f"level must be one of {sorted(LEVEL_HAZARDS_PER_CHUNK)}, got {self.level!r}"
            )
        n = self.hazards_per_chunk
        if n is not None and (not _is_int(n) or n < 0):
            raise ValueError(f"hazards_per_chunk must be None or an int >= 0, got {n!r}")
        if not _is_int(self.size) or self.size < 16:
            raise ValueError(f"size must be an int >= 16 (pixels), got {self.size!r}")
        for name in ("chunk_length", "view_radius", "corridor_half", "robot_radius",
                     "hazard_radius", "max_step"):
            value = getattr(self, name)
            if not _is_real(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not _is_real(self.clear_start) or self.clear_start < 0:
            raise ValueError(f"clear_start must be a finite number >= 0, got {self.clear_start!r}")
        for name in ("robot_radius", "hazard_radius"):
            if getattr(self, name) >= self.corridor_half:
                raise ValueError(
                    f"{name} must be smaller than corridor_half={self.corridor_half}, "
                    f"got {getattr(self, name)!r}"
                )
        if not _is_real(self.inertia) or not 0.0 <= self.inertia < 1.0:
            raise ValueError(f"inertia must be a number in [0, 1), got {self.inertia!r}")
        if not _is_real(self.reward_progress):
            raise ValueError(f"reward_progress must be a finite number, got {self.reward_progress!r}")
        if not _is_int(self.max_episode_steps) or self.max_episode_steps < 1:
            raise ValueError(
                f"max_episode_steps must be an int >= 1, got {self.max_episode_steps!r}"
            )

    @property
    def hazard_count(self) -> int:
        """Hazards per chunk actually used (``hazards_per_chunk`` or the level's)."""
        if self.hazards_per_chunk is None:
            return LEVEL_HAZARDS_PER_CHUNK[self.level]
        return int(self.hazards_per_chunk)


def _chunk_key(k: int) -> int:
    """A non-negative integer for chunk index ``k`` (SeedSequence needs non-negative entropy)."""
    return 2 * k if k >= 0 else -2 * k - 1


class PixelHazardRunEnv(gym.Env):
    """A point robot running along +x through an endless hazard field, observed as an RGB image.

    Construct with keyword options (see :class:`PixelHazardRunConfig`), optionally from a
    ``config``::

        env = PixelHazardRunEnv(level=2, size=64)

    Args:
        render_mode: ``None`` or ``"rgb_array"`` (``render()`` then returns the current frame).
        config: base options; keyword options override its fields.
        **kwargs: any :class:`PixelHazardRunConfig` field.

    Raises:
        ValueError: on an unknown option or an invalid value.
    """

    # A class attribute (gym.make reads it off the class); gymnasium declares it as an instance
    # attribute, so a ClassVar annotation would conflict with the base class.
    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 30}  # noqa: RUF012

    def __init__(
        self,
        render_mode: str | None = None,
        config: PixelHazardRunConfig | None = None,
        **kwargs: Any,
    ) -> None:
        cfg = _resolve_options(self, PixelHazardRunConfig, render_mode, config, kwargs)
        self.config: PixelHazardRunConfig = cfg
        self.render_mode = render_mode
        self.hazards_per_chunk: int = cfg.hazard_count

        s = cfg.size
        self.observation_space = spaces.Box(0, 255, shape=(s, s, 3), dtype=np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        # World-fixed pixel grid: global column j has its centre at x = (j + 0.5) * px, global
        # row i at y = -(i + 0.5) * px (rows grow downwards, as in an image).
        self._px = 2.0 * cfg.view_radius / s
        self._offsets = np.arange(s, dtype=np.float64) + 0.5
        self._min_r = _MIN_DRAW_RADIUS_PX * self._px
        self._bound = cfg.corridor_half - cfg.robot_radius

        self._layout_seed = 0
        self._chunks: dict[int, np.ndarray] = {}
        self._near_key: tuple[int, int] | None = None
        self._near = np.zeros((0, 2))
        self._x = self._y = self._vx = self._vy = 0.0
        self._t = 0
        self._frame: np.ndarray | None = None
        self._needs_reset = True

    # ------------------------------------------------------------------ privileged state
    @property
    def robot_pos(self) -> np.ndarray:
        """Robot centre, a (2,) float64 array (a copy; privileged, for diagnostics only)."""
        return np.array([self._x, self._y], dtype=np.float64)

    @property
    def elapsed_steps(self) -> int:
        """Steps taken since the last reset."""
        return self._t

    def hazards_between(self, x_min: float, x_max: float) -> np.ndarray:
        """Centres (K, 2) of the hazards whose centre x lies in ``[x_min, x_max]`` (privileged)."""
        length = self.config.chunk_length
        k0, k1 = math.floor(x_min / length), math.floor(x_max / length)
        if k1 - k0 > 10_000:
            raise ValueError(f"hazards_between: range [{x_min}, {x_max}] is too long")
        parts = [self._chunk(k) for k in range(k0, k1 + 1)]
        hazards = np.concatenate(parts) if parts else np.zeros((0, 2))
        keep = (hazards[:, 0] >= x_min) & (hazards[:, 0] <= x_max)
        return hazards[keep]

    def hazard_distance(self) -> float:
        """Signed distance from the robot centre to the nearest hazard edge (negative inside);
        ``inf`` when no hazard is within a chunk."""
        near = self._hazards_near(self._x)
        if near.shape[0] == 0:
            return math.inf
        d2 = (near[:, 0] - self._x) ** 2 + (near[:, 1] - self._y) ** 2
        return math.sqrt(float(d2.min())) - self.config.hazard_radius

    # ------------------------------------------------------------------ gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode on a layout drawn from ``self.np_random`` and return ``(obs, info)``.

        ``options`` is accepted for API compatibility and ignored.
        """
        super().reset(seed=seed)
        self._layout_seed = int(self.np_random.integers(0, 2**63 - 1))
        self._chunks.clear()
        self._near_key = None
        half = 0.5 * self.config.corridor_half
        self._x = 0.0
        self._y = float(self.np_random.uniform(-half, half))
        self._vx = self._vy = 0.0
        self._t = 0
        self._needs_reset = False
        self._frame = self._render_frame()
        return self._frame.copy(), {"cost": 0.0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move the robot; return ``(obs, reward, terminated=False, truncated, info)``.

        ``info["cost"]`` is 1.0 inside a hazard, else 0.0. Out-of-range or non-finite actions are
        sanitised (module docstring); an action without exactly two entries raises ``ValueError``.
        """
        if self._needs_reset:
            raise RuntimeError("PixelHazardRunEnv: call reset() before step()")
        cfg = self.config
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape[0] != 2:
            raise ValueError(f"action must have 2 entries, got shape {np.shape(action)}")
        ax, ay = float(a[0]), float(a[1])
        ax = min(max(ax, -1.0), 1.0) if math.isfinite(ax) else 0.0
        ay = min(max(ay, -1.0), 1.0) if math.isfinite(ay) else 0.0
        norm = math.hypot(ax, ay)
        if norm > 1.0:
            ax /= norm
            ay /= norm
        k = cfg.inertia
        if k > 0.0:
            self._vx = k * self._vx + (1.0 - k) * ax
            self._vy = k * self._vy + (1.0 - k) * ay
        else:
            self._vx, self._vy = ax, ay
        x_before = self._x
        self._x += cfg.max_step * self._vx
        y = self._y + cfg.max_step * self._vy
        b = self._bound
        if y < -b or y > b:
            y = -b if y < -b else b
            self._vy = 0.0
        self._y = y
        reward = cfg.reward_progress * (self._x - x_before)

        cost = 0.0
        near = self._hazards_near(self._x)
        if near.shape[0]:
            d2 = (near[:, 0] - self._x) ** 2 + (near[:, 1] - self._y) ** 2
            if float(d2.min()) < cfg.hazard_radius * cfg.hazard_radius:
                cost = 1.0
        self._t += 1
        truncated = self._t >= cfg.max_episode_steps
        obs = self._render_frame()
        self._frame = obs
        return obs, float(reward), False, truncated, {"cost": cost}

    # gymnasium types Env.render() with a free TypeVar (RenderFrame) that no concrete
    # return type can match.
    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """The current frame (a copy) in ``"rgb_array"`` mode; ``None`` otherwise or before reset."""
        if self.render_mode != "rgb_array" or self._frame is None:
            return None
        return self._frame.copy()

    # ------------------------------------------------------------------ layout
    def _chunk(self, k: int) -> np.ndarray:
        """Hazard centres (n, 2) of chunk ``k``: a pure function of the layout seed and ``k``."""
        cached = self._chunks.get(k)
        if cached is not None:
            return cached
        cfg = self.config
        n = self.hazards_per_chunk
        x0 = k * cfg.chunk_length
        hazards = np.zeros((0, 2))
        if n and x0 >= cfg.clear_start:
            rng = np.random.default_rng([self._layout_seed, _chunk_key(k)])
            y_max = cfg.corridor_half - cfg.hazard_radius
            sep2 = (_HAZARD_SEPARATION * cfg.hazard_radius) ** 2
            placed: list[tuple[float, float]] = []
            for _ in range(n):
                for _ in range(_MAX_TRIES):
                    hx = x0 + cfg.chunk_length * float(rng.random())
                    hy = y_max * (2.0 * float(rng.random()) - 1.0)
                    if all((hx - px) ** 2 + (hy - py) ** 2 >= sep2 for px, py in placed):
                        placed.append((hx, hy))
                        break
            hazards = np.array(placed, dtype=np.float64).reshape(-1, 2)
        if len(self._chunks) >= _CHUNK_CACHE:  # forget the chunk furthest from this one
            del self._chunks[max(self._chunks, key=lambda j: abs(j - k))]
        self._chunks[k] = hazards
        return hazards

    def _hazards_near(self, x: float) -> np.ndarray:
        """Hazards that can touch the x-range ``[x - reach, x + reach]``, reach = view + radius.

        Cached per range of chunks, so a step costs one dictionary look-up in the common case.
        """
        cfg = self.config
        reach = cfg.view_radius + cfg.hazard_radius + self._px
        k0 = math.floor((x - reach) / cfg.chunk_length)
        k1 = math.floor((x + reach) / cfg.chunk_length)
        if self._near_key != (k0, k1):
            parts = [self._chunk(k) for k in range(k0, k1 + 1)]
            self._near = np.concatenate(parts) if parts else np.zeros((0, 2))
            self._near_key = (k0, k1)
        return self._near

    # ------------------------------------------------------------------ rendering
    def _render_frame(self) -> np.ndarray:
        cfg = self.config
        s, px = cfg.size, self._px
        j0 = math.floor(self._x / px - 0.5 * s + 0.5)  # global column of the frame's column 0
        i0 = math.floor(-self._y / px - 0.5 * s + 0.5)  # global row of the frame's row 0
        xs = (j0 + self._offsets) * px  # column centres
        ys = -(i0 + self._offsets) * px  # row centres (decreasing)
        frame = np.empty((s, s, 3), dtype=np.uint8)
        frame[:] = FLOOR_COLOUR
        frame[np.abs(ys) > cfg.corridor_half] = WALL_COLOUR
        for hx, hy in self._hazards_near(self._x):
            self._stamp(frame, xs, ys, float(hx), float(hy), cfg.hazard_radius, HAZARD_COLOUR)
        self._stamp(frame, xs, ys, self._x, self._y, cfg.robot_radius, ROBOT_COLOUR)
        return frame

    def _stamp(self, frame: np.ndarray, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float,
               radius: float, colour: np.ndarray) -> None:
        """Paint the pixels whose centres lie strictly inside the disk (its bounding box only)."""
        r = max(radius, self._min_r)
        s, px = frame.shape[0], self._px
        c0 = max(math.ceil((cx - r - xs[0]) / px), 0)
        c1 = min(math.floor((cx + r - xs[0]) / px), s - 1)
        r0 = max(math.ceil((ys[0] - cy - r) / px), 0)
        r1 = min(math.floor((ys[0] - cy + r) / px), s - 1)
        if c0 > c1 or r0 > r1:
            return
        dx = xs[c0 : c1 + 1] - cx
        dy = ys[r0 : r1 + 1] - cy
        mask = dy[:, None] ** 2 + dx[None, :] ** 2 < r * r
        frame[r0 : r1 + 1, c0 : c1 + 1][mask] = colour
