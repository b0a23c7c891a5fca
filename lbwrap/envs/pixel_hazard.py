"""PixelHazard: a fast, numpy-only pixel environment in the spirit of Safety Gym's PointGoal.

A point robot moves on a bounded square plane with a goal and circular hazards at random
positions. Everything (dynamics and rendering) is plain numpy: no MuJoCo, no pygame. The env is
meant for fast tests, teaching and CPU-sized safe-RL experiments from pixels.

World
    The arena is the square ``[-arena_half, arena_half]^2`` (default ``arena_half=1.5``), with
    ``y`` pointing up. Walls clip the robot's centre to ``[-arena_half + robot_radius,
    arena_half - robot_radius]`` on each axis; touching a wall costs nothing.

Dynamics
    Holonomic velocity control. The action ``a`` in ``Box(-1, 1, (2,), float32)`` is a desired
    velocity (direction times magnitude). It is sanitised (non-finite entries become 0, each entry
    is clipped to ``[-1, 1]``, then the vector is rescaled to norm <= 1), smoothed with
    ``v <- inertia * v + (1 - inertia) * a`` (``inertia=0``: pure velocity control), and the robot
    moves by ``max_step * v`` (so at most ``max_step`` world units per step in any direction).

Layout
    At ``reset(seed=...)`` hazard centres, the goal and the robot start are drawn from
    ``self.np_random``: hazards lie fully inside the arena and their centres are at least
    ``1.6 * hazard_radius`` apart (they overlap a little at most); the goal disk does not touch
    any hazard disk; the robot disk does not touch any hazard disk and starts at least
    ``goal_radius + robot_radius + 0.3`` from the goal centre. The same seed gives the same layout.
    ``level`` selects the number of hazards (0 -> 0, 1 -> 8, 2 -> 16) unless ``num_hazards`` is
    given.

Reward, cost, episodes
    ``reward = reward_distance * (previous_goal_distance - goal_distance)`` each step, plus
    ``reward_goal`` on the step the robot's centre gets within ``goal_radius`` of the goal centre;
    then a new goal is drawn (not touching a hazard, away from the robot) and the episode goes on.
    ``info["cost"]`` is ``1.0`` when the step ends with the robot's centre strictly inside a
    hazard circle (distance < ``hazard_radius``), else ``0.0``; ``info["goal_met"]`` is a bool.
    Nothing else is put in ``info`` and the observation never contains hazard positions as
    numbers: the agent must learn from pixels (and the cost signal) what the blue disks mean.
    Episodes never terminate; they are truncated after ``max_episode_steps`` steps by the env
    itself (no ``TimeLimit`` wrapper needed, so direct construction and ``gym.make`` agree).

Observation
    An RGB image ``Box(0, 255, (size, size, 3), uint8)``, channel-last. Colours: dark floor,
    blue hazards (as in Safety Gym), green goal, red robot disk, grey walls / outside of the
    arena. Disks are rasterised by pixel centres (hard edges, no anti-aliasing); any disk is drawn
    with a radius of at least ``0.75`` pixel so that it always covers at least one pixel.

    ``view="topdown"``
        A fixed camera that shows exactly the whole arena, like a map: the image covers
        ``[-arena_half, arena_half]^2``, i.e. ``size / (2 * arena_half)`` pixels per world unit
        (64 px -> 21.3 px/unit: robot radius ~2.1 px, hazard radius ~5.3 px, goal radius ~6.4 px).
        Row 0 is the top of the arena (largest ``y``), column 0 its left side (smallest ``x``).
    ``view="egocentric"`` (default)
        Like Safety Gym's robot-mounted camera, an axis-aligned window of half-width ``view_radius`` (default 1.0) that follows the
        robot: ``size / (2 * view_radius)`` pixels per world unit (64 px -> 32 px/unit). Whatever
        lies outside the arena is drawn in the wall colour. The window is snapped to the pixel
        grid of a world-fixed raster, so the robot appears within half a pixel of the image centre
        and every object is rasterised exactly as in the world frame (no resampling jitter).
        The default because it mirrors Safety Gym's camera and because "robot inside a hazard"
        is then a fixed region of the image: measured on random-policy data (level 2, CPU preset
        world model), the barrier's held-out balanced accuracy reached 0.90 after 100 updates,
        while with the top-down map it stayed near chance for hundreds of updates
        (``benchmarks/core_speed.py``).

Performance
    Pixel-centre coordinates are precomputed once; the static layer (floor, walls, hazards, goal)
    is cached and redrawn only when the layout or the goal changes. Each step copies the cached
    layer (the whole of it for topdown, a window for egocentric) and stamps the robot disk in its
    small bounding box.

Diagnostics
    ``env.unwrapped.hazards`` ((K, 2) array), ``robot_pos`` and ``goal_pos`` ((2,) arrays; both
    settable, e.g. in tests) and :meth:`PixelHazardEnv.hazard_distance` expose privileged state
    for tests and analysis; agents should not use them.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["LEVEL_NUM_HAZARDS", "VIEWS", "PixelHazardConfig", "PixelHazardEnv"]

#: Number of hazards selected by each ``level`` (when ``num_hazards`` is not given).
LEVEL_NUM_HAZARDS: dict[int, int] = {0: 0, 1: 8, 2: 16}
#: Valid values of the ``view`` option.
VIEWS: tuple[str, ...] = ("topdown", "egocentric")

# Layout constants (see the module docstring).
_HAZARD_SEPARATION = 1.6  # minimum hazard centre distance, in hazard radii
_GOAL_ROBOT_MARGIN = 0.3  # extra distance between the robot disk and the goal disk at (re)spawn
_BATCH = 64  # candidates drawn at once by the rejection sampler
_MAX_BATCHES = 20  # batches per object before a layout attempt is abandoned
_MAX_LAYOUT_ATTEMPTS = 100
_MIN_DRAW_RADIUS_PX = 0.75  # every disk covers at least one pixel centre
_MAX_RASTER_SIDE = 4096  # guards against absurd memory use (tiny view_radius, huge size)

# Colours (RGB, uint8).
FLOOR_COLOUR = np.array([30, 30, 38], dtype=np.uint8)
WALL_COLOUR = np.array([128, 128, 128], dtype=np.uint8)
HAZARD_COLOUR = np.array([40, 90, 230], dtype=np.uint8)
GOAL_COLOUR = np.array([40, 200, 70], dtype=np.uint8)
ROBOT_COLOUR = np.array([225, 40, 40], dtype=np.uint8)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class PixelHazardConfig:
    """Options of :class:`PixelHazardEnv` (all validated; bad values raise ``ValueError``).

    Attributes:
        level: 0, 1 or 2; selects the default number of hazards (0, 8, 16).
        num_hazards: explicit number of hazards (overrides ``level``); ``None`` uses the level's.
        size: side of the square observation image in pixels (>= 16).
        view: ``"topdown"`` (fixed camera on the whole arena) or ``"egocentric"`` (follows the
            robot).
        view_radius: half-width of the egocentric window in world units.
        arena_half: the arena is ``[-arena_half, arena_half]^2``.
        robot_radius: radius of the robot disk (used for walls, spawning and drawing).
        hazard_radius: radius of the hazard circles (cost when the robot centre is inside).
        goal_radius: radius of the goal circle (goal met when the robot centre is inside).
        max_step: maximum robot displacement per step, in world units.
        inertia: velocity smoothing in ``[0, 1)``; 0 means pure velocity control.
        reward_distance: reward per world unit of progress towards the goal.
        reward_goal: bonus on reaching the goal.
        max_episode_steps: the episode is truncated after this many steps.
    """

    level: int = 1
    num_hazards: int | None = None
    size: int = 64
    view: str = "egocentric"
    view_radius: float = 1.0
    arena_half: float = 1.5
    robot_radius: float = 0.1
    hazard_radius: float = 0.25
    goal_radius: float = 0.3
    max_step: float = 0.05
    inertia: float = 0.0
    reward_distance: float = 1.0
    reward_goal: float = 1.0
    max_episode_steps: int = 500

    def __post_init__(self) -> None:
        if not _is_int(self.level) or self.level not in LEVEL_NUM_HAZARDS:
            raise ValueError(
                f"level must be one of {sorted(LEVEL_NUM_HAZARDS)}, got {self.level!r}"
            )
        if self.num_hazards is not None and (not _is_int(self.num_hazards) or self.num_hazards < 0):
            raise ValueError(f"num_hazards must be None or an int >= 0, got {self.num_hazards!r}")
        if not _is_int(self.size) or self.size < 16:
            raise ValueError(f"size must be an int >= 16 (pixels), got {self.size!r}")
        if self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {self.view!r}")
        for name in (
            "view_radius",
            "arena_half",
            "robot_radius",
            "hazard_radius",
            "goal_radius",
            "max_step",
        ):
            value = getattr(self, name)
            if not _is_real(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("robot_radius", "hazard_radius", "goal_radius"):
            if getattr(self, name) >= self.arena_half:
                raise ValueError(
                    f"{name} must be smaller than arena_half={self.arena_half}, "
                    f"got {getattr(self, name)!r}"
                )
        if not _is_real(self.inertia) or not 0.0 <= self.inertia < 1.0:
            raise ValueError(f"inertia must be a number in [0, 1), got {self.inertia!r}")
        for name in ("reward_distance", "reward_goal"):
            if not _is_real(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if not _is_int(self.max_episode_steps) or self.max_episode_steps < 1:
            raise ValueError(
                f"max_episode_steps must be an int >= 1, got {self.max_episode_steps!r}"
            )
        if self.view == "egocentric":
            side = 2 * (self.arena_half + self.view_radius) / (2 * self.view_radius / self.size)
            if side + 2 > _MAX_RASTER_SIDE:
                raise ValueError(
                    f"view_radius={self.view_radius} is too small for size={self.size} and "
                    f"arena_half={self.arena_half}: the egocentric raster would be "
                    f"{int(side)} px wide (limit {_MAX_RASTER_SIDE})"
                )

    @property
    def hazard_count(self) -> int:
        """The number of hazards actually used (``num_hazards`` or the level's default)."""
        return LEVEL_NUM_HAZARDS[self.level] if self.num_hazards is None else int(self.num_hazards)


_ConfigT = TypeVar("_ConfigT", bound="DataclassInstance")


def _resolve_options(env: gym.Env, config_cls: type[_ConfigT], render_mode: str | None,
                     config: _ConfigT | None, kwargs: dict[str, Any]) -> _ConfigT:
    """Check ``render_mode``, ``config`` and keyword options of a built-in env; return its config
    (``config`` or the defaults, with ``kwargs`` applied). Raises ``ValueError`` naming the problem."""
    modes = env.metadata["render_modes"]
    if render_mode is not None and render_mode not in modes:
        raise ValueError(f"render_mode must be None or one of {modes}, got {render_mode!r}")
    if config is not None and not isinstance(config, config_cls):
        raise ValueError(f"config must be a {config_cls.__name__}, got {type(config).__name__}")
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(
            f"unknown {type(env).__name__} option(s) {unknown}; valid options: {sorted(valid)}"
        )
    return dataclasses.replace(config or config_cls(), **kwargs)


class PixelHazardEnv(gym.Env):
    """Point robot, goal and hidden-meaning hazards on a square plane, observed as an RGB image.

    Construct with keyword options (see :class:`PixelHazardConfig` for all of them and their
    defaults), optionally starting from a ``config``::

        env = PixelHazardEnv(level=2, view="egocentric", size=64)

    Args:
        render_mode: ``None`` or ``"rgb_array"`` (``render()`` then returns the current frame).
        config: base options; keyword options override its fields.
        **kwargs: any :class:`PixelHazardConfig` field.

    Raises:
        ValueError: on an unknown option or an invalid value.
    """

    # A class attribute (gym.make reads it off the class); gymnasium declares it as an instance
    # attribute, so a ClassVar annotation would conflict with the base class.
    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 30}  # noqa: RUF012

    def __init__(
        self,
        render_mode: str | None = None,
        config: PixelHazardConfig | None = None,
        **kwargs: Any,
    ) -> None:
        cfg = _resolve_options(self, PixelHazardConfig, render_mode, config, kwargs)
        self.config: PixelHazardConfig = cfg
        self.render_mode = render_mode
        self.num_hazards: int = cfg.hazard_count

        s = cfg.size
        self.observation_space = spaces.Box(0, 255, shape=(s, s, 3), dtype=np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

        # World-fixed raster: pixel size, left/top edges, pixel-centre coordinates.
        if cfg.view == "topdown":
            self._px = 2.0 * cfg.arena_half / s
            side = s
        else:
            self._px = 2.0 * cfg.view_radius / s
            side = math.ceil(2.0 * (cfg.arena_half + cfg.view_radius) / self._px) + 2
        self._side = side
        self._x0 = -0.5 * side * self._px  # world x of the left edge of column 0
        self._ytop = 0.5 * side * self._px  # world y of the top edge of row 0
        idx = np.arange(side, dtype=np.float64) + 0.5
        self._xs = self._x0 + idx * self._px  # column centres (increasing)
        self._ys = self._ytop - idx * self._px  # row centres (decreasing)
        self._min_r = _MIN_DRAW_RADIUS_PX * self._px

        # Base layer (floor + walls), hazards added at reset, goal on a copy of it.
        inside = (np.abs(self._ys)[:, None] <= cfg.arena_half) & (
            np.abs(self._xs)[None, :] <= cfg.arena_half
        )
        self._floor = np.empty((side, side, 3), dtype=np.uint8)
        self._floor[:] = WALL_COLOUR
        self._floor[inside] = FLOOR_COLOUR
        self._base = self._floor.copy()
        self._static = self._floor.copy()

        self._bound = cfg.arena_half - cfg.robot_radius
        self._hazards = np.zeros((0, 2), dtype=np.float64)
        self._hx = self._hazards[:, 0]
        self._hy = self._hazards[:, 1]
        self._x = 0.0
        self._y = 0.0
        self._vx = 0.0
        self._vy = 0.0
        self._goal = np.zeros(2, dtype=np.float64)
        self._prev_goal_dist = 0.0
        self._t = 0
        self._frame: np.ndarray | None = None
        self._needs_reset = True

    # ------------------------------------------------------------------ public state (diagnostics)

    @property
    def hazards(self) -> np.ndarray:
        """Hazard centres, a (K, 2) float64 array (a copy; privileged, for diagnostics only)."""
        return self._hazards.copy()

    @property
    def robot_pos(self) -> np.ndarray:
        """Robot centre, a (2,) float64 array (a copy).

        Setting it teleports the robot (clipped to the arena), zeroes its velocity, makes the
        next step's progress reward relative to the new position and redraws the current frame.
        It does not check the goal: that happens at the next step.
        """
        return np.array([self._x, self._y], dtype=np.float64)

    @robot_pos.setter
    def robot_pos(self, value: Any) -> None:
        x, y = (float(v) for v in np.asarray(value, dtype=np.float64).reshape(2))
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"robot_pos must be finite, got {(x, y)}")
        b = self._bound
        self._x = min(max(x, -b), b)
        self._y = min(max(y, -b), b)
        self._vx = self._vy = 0.0
        self._prev_goal_dist = self._goal_distance()
        self._frame = self._render_frame()

    @property
    def goal_pos(self) -> np.ndarray:
        """Goal centre, a (2,) float64 array (a copy).

        Setting it moves the goal (no validity check), makes the next step's progress reward
        relative to the new goal and redraws the static layer and the current frame.
        """
        return self._goal.copy()

    @goal_pos.setter
    def goal_pos(self, value: Any) -> None:
        goal = np.asarray(value, dtype=np.float64).reshape(2).copy()
        if not np.all(np.isfinite(goal)):
            raise ValueError(f"goal_pos must be finite, got {goal}")
        self._set_goal(goal)
        self._prev_goal_dist = self._goal_distance()
        self._frame = self._render_frame()

    @property
    def elapsed_steps(self) -> int:
        """Steps taken since the last reset."""
        return self._t

    def hazard_distance(self) -> float:
        """Signed distance from the robot centre to the nearest hazard edge.

        Negative inside a hazard (exactly the steps that cost 1), ``inf`` without hazards.
        """
        if self.num_hazards == 0:
            return math.inf
        d2 = (self._hx - self._x) ** 2 + (self._hy - self._y) ** 2
        return math.sqrt(float(d2.min())) - self.config.hazard_radius

    # ------------------------------------------------------------------------------ gym API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw a new layout (from ``self.np_random``) and return ``(obs, info)``.

        ``options`` is accepted for API compatibility and ignored.
        """
        super().reset(seed=seed)
        hazards, goal, robot = self._sample_layout()
        self._hazards = hazards
        self._hx = np.ascontiguousarray(hazards[:, 0])
        self._hy = np.ascontiguousarray(hazards[:, 1])
        self._base = self._floor.copy()
        r = self.config.hazard_radius
        for hx, hy in hazards:
            self._stamp_disk(self._base, 0, 0, float(hx), float(hy), r, HAZARD_COLOUR)
        self._set_goal(goal)
        self._x, self._y = float(robot[0]), float(robot[1])
        self._vx = self._vy = 0.0
        self._prev_goal_dist = self._goal_distance()
        self._t = 0
        self._needs_reset = False
        self._frame = self._render_frame()
        return self._frame.copy(), {"cost": 0.0, "goal_met": False}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move the robot, return ``(obs, reward, terminated=False, truncated, info)``.

        ``info`` holds ``"cost"`` (1.0 inside a hazard, else 0.0) and ``"goal_met"`` (bool).
        Out-of-range or non-finite actions are sanitised (see the module docstring); an action
        that does not have exactly two entries raises ``ValueError``.
        """
        if self._needs_reset:
            raise RuntimeError("PixelHazardEnv: call reset() before step()")
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
        b = self._bound
        x = self._x + cfg.max_step * self._vx
        y = self._y + cfg.max_step * self._vy
        if x < -b or x > b:
            x = -b if x < -b else b
            self._vx = 0.0
        if y < -b or y > b:
            y = -b if y < -b else b
            self._vy = 0.0
        self._x, self._y = x, y

        dist = self._goal_distance()
        reward = cfg.reward_distance * (self._prev_goal_dist - dist)
        goal_met = dist < cfg.goal_radius
        if goal_met:
            reward += cfg.reward_goal
            self._resample_goal()
            dist = self._goal_distance()
        self._prev_goal_dist = dist

        cost = 0.0
        if self.num_hazards:
            d2 = (self._hx - x) ** 2 + (self._hy - y) ** 2
            if float(d2.min()) < cfg.hazard_radius * cfg.hazard_radius:
                cost = 1.0

        self._t += 1
        truncated = self._t >= cfg.max_episode_steps
        obs = self._render_frame()
        self._frame = obs
        return obs, float(reward), False, truncated, {"cost": cost, "goal_met": bool(goal_met)}

    # gymnasium types Env.render() with a free TypeVar (RenderFrame) that no concrete
    # return type can match.
    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """Return the current frame (a copy, ``(size, size, 3)`` uint8) in ``"rgb_array"`` mode.

        Returns ``None`` when ``render_mode`` is ``None`` or before the first reset.
        """
        if self.render_mode != "rgb_array" or self._frame is None:
            return None
        return self._frame.copy()

    # ------------------------------------------------------------------------------ internals

    def _goal_distance(self) -> float:
        return math.hypot(self._x - float(self._goal[0]), self._y - float(self._goal[1]))

    def _sample_free(
        self,
        bound: float,
        hazards: np.ndarray,
        clearance: float,
        avoid: np.ndarray | None = None,
        avoid_dist: float = 0.0,
    ) -> np.ndarray | None:
        """A uniform point in ``[-bound, bound]^2`` at least ``clearance`` from every hazard
        centre and ``avoid_dist`` from ``avoid``; ``None`` if rejection sampling gives up."""
        rng = self.np_random
        c2 = clearance * clearance
        a2 = avoid_dist * avoid_dist
        for _ in range(_MAX_BATCHES):
            cand = rng.uniform(-bound, bound, size=(_BATCH, 2))
            ok = np.ones(_BATCH, dtype=bool)
            if hazards.shape[0]:
                d2 = ((cand[:, None, :] - hazards[None, :, :]) ** 2).sum(-1)
                ok &= (d2 >= c2).all(axis=1)
            if avoid is not None:
                ok &= ((cand - avoid) ** 2).sum(-1) >= a2
            hits = np.flatnonzero(ok)
            if hits.size:
                return cand[hits[0]].copy()
        return None

    def _sample_layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.config
        rh, rg, rr = cfg.hazard_radius, cfg.goal_radius, cfg.robot_radius
        sep = _HAZARD_SEPARATION * rh
        for _ in range(_MAX_LAYOUT_ATTEMPTS):
            hazards = np.zeros((self.num_hazards, 2), dtype=np.float64)
            ok = True
            for i in range(self.num_hazards):
                point = self._sample_free(cfg.arena_half - rh, hazards[:i], sep)
                if point is None:
                    ok = False
                    break
                hazards[i] = point
            if not ok:
                continue
            goal = self._sample_free(cfg.arena_half - rg, hazards, rh + rg)
            if goal is None:
                continue
            robot = self._sample_free(
                self._bound, hazards, rh + rr, goal, rg + rr + _GOAL_ROBOT_MARGIN
            )
            if robot is None:
                continue
            return hazards, goal, robot
        raise RuntimeError(
            f"PixelHazardEnv could not place {self.num_hazards} hazards of radius {rh} plus the "
            f"goal and robot in an arena of half-width {cfg.arena_half}; use fewer or smaller "
            "hazards or a larger arena"
        )

    def _resample_goal(self) -> None:
        cfg = self.config
        rh, rg = cfg.hazard_radius, cfg.goal_radius
        robot = np.array([self._x, self._y])
        goal = self._sample_free(
            cfg.arena_half - rg,
            self._hazards,
            rh + rg,
            robot,
            rg + cfg.robot_radius + _GOAL_ROBOT_MARGIN,
        )
        if goal is None:  # practically unreachable; relax the distance to the robot
            goal = self._sample_free(cfg.arena_half - rg, self._hazards, rh + rg)
        if goal is not None:
            self._set_goal(goal)

    def _set_goal(self, goal: np.ndarray) -> None:
        self._goal = goal
        self._static = self._base.copy()
        self._stamp_disk(
            self._static,
            0,
            0,
            float(goal[0]),
            float(goal[1]),
            self.config.goal_radius,
            GOAL_COLOUR,
        )

    def _stamp_disk(
        self,
        img: np.ndarray,
        row_off: int,
        col_off: int,
        cx: float,
        cy: float,
        radius: float,
        colour: np.ndarray,
    ) -> None:
        """Paint the pixels of ``img`` whose centres lie strictly inside the disk.

        ``img`` is the window of the world raster starting at raster row ``row_off`` and column
        ``col_off``.
        """
        r = max(radius, self._min_r)
        px = self._px
        h, w = img.shape[0], img.shape[1]
        c0 = max(math.ceil((cx - r - self._x0) / px - 0.5), col_off)
        c1 = min(math.floor((cx + r - self._x0) / px - 0.5), col_off + w - 1)
        r0 = max(math.ceil((self._ytop - cy - r) / px - 0.5), row_off)
        r1 = min(math.floor((self._ytop - cy + r) / px - 0.5), row_off + h - 1)
        if c0 > c1 or r0 > r1:
            return
        dx = self._xs[c0 : c1 + 1] - cx
        dy = self._ys[r0 : r1 + 1] - cy
        mask = dy[:, None] ** 2 + dx[None, :] ** 2 < r * r
        img[r0 - row_off : r1 - row_off + 1, c0 - col_off : c1 - col_off + 1][mask] = colour

    def _render_frame(self) -> np.ndarray:
        s = self.config.size
        if self.config.view == "topdown":
            i0 = j0 = 0
            frame = self._static.copy()
        else:
            last = self._side - s
            j0 = math.floor((self._x - self._x0) / self._px - 0.5 * s + 0.5)
            i0 = math.floor((self._ytop - self._y) / self._px - 0.5 * s + 0.5)
            j0 = min(max(j0, 0), last)
            i0 = min(max(i0, 0), last)
            frame = self._static[i0 : i0 + s, j0 : j0 + s].copy()
        self._stamp_disk(frame, i0, j0, self._x, self._y, self.config.robot_radius, ROBOT_COLOUR)
        return frame
