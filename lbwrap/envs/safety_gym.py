"""Loading safety-gymnasium on Python 3.10-3.12 and building its vision tasks.

safety-gymnasium 1.0.0 (the only release on PyPI) does not import on Python >= 3.11: dataclasses in
``safety_gymnasium.assets`` use numpy arrays as field defaults, which Python 3.11 rejects as
mutable defaults. :func:`import_safety_gymnasium` imports it with a *scoped* fix: only while the
package is being imported, an ndarray default becomes a ``default_factory`` that returns a copy.
``dataclasses`` is restored right afterwards, even when the import fails.

On Gymnasium >= 1.0 it does not import either (upstream's "Add support for Gymnasium v1.0" is
unmerged): :func:`_gymnasium_1_compat` restores, only there and only for that import, the three
things it needs: the wrapper modules Gymnasium 1.0 removed, the two ``EnvSpec`` fields it
dropped, and ``OffScreenViewer``'s old size defaults. On Gymnasium 0.29 nothing is patched.

MuJoCo renders the camera images. Without a display we need an off-screen OpenGL backend:
:func:`ensure_render_backend` sets ``MUJOCO_GL=egl`` unless the user chose a backend, and
:func:`check_rendering` turns a failing backend into an error that says what to install.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib
import io
import os
import re
import sys
import warnings
import weakref
from collections.abc import Iterator
from types import ModuleType
from typing import Any, ClassVar

import gymnasium
import numpy as np

__all__ = [
    "VISION_ID_PATTERN",
    "RenderBackendError",
    "SafetyGymUnavailableError",
    "ensure_render_backend",
    "import_safety_gymnasium",
    "is_safety_vision_id",
    "make_safety_vision_env",
]

#: Ids of safety-gymnasium's vision tasks, e.g. ``SafetyPointGoal1Vision-v0``.
VISION_ID_PATTERN = re.compile(
    r"^Safety(Point|Car|Racecar|Doggo|Ant)(Goal|Button|Push|Circle)[0-2]Vision(Gymnasium)?-v0$"
)
_DEFAULT_GL_BACKEND = "egl"


class SafetyGymUnavailableError(ImportError):
    """safety-gymnasium (or one of its real dependencies) cannot be imported."""


class RenderBackendError(RuntimeError):
    """MuJoCo cannot render off-screen with the selected OpenGL backend."""


@contextlib.contextmanager
def _ndarray_defaults_as_factories() -> Iterator[None]:
    """Let dataclasses accept ``np.ndarray`` field defaults (as Python <= 3.10 did), scoped.

    Each ndarray default is replaced by ``field(default_factory=<copy of it>)`` before the
    dataclass machinery inspects it. Every instance gets its own copy, which is what the
    authors of such code usually meant.
    """
    original = dataclasses._get_field  # type: ignore[attr-defined]

    def patched(cls: type, a_name: str, *args: Any, **kwargs: Any) -> Any:
        default = cls.__dict__.get(a_name, dataclasses.MISSING)
        if isinstance(default, np.ndarray):
            frozen = default.copy()
            setattr(cls, a_name, dataclasses.field(default_factory=frozen.copy))
        return original(cls, a_name, *args, **kwargs)

    dataclasses._get_field = patched  # type: ignore[attr-defined]
    try:
        yield
    finally:
        dataclasses._get_field = original  # type: ignore[attr-defined]


GYMNASIUM_1 = int(gymnasium.__version__.split(".")[0]) >= 1
"""Whether the installed Gymnasium is 1.x (safety-gymnasium 1.0.0 was written for 0.28/0.29)."""


@contextlib.contextmanager
def _removed_wrapper_modules() -> Iterator[None]:
    """Gymnasium 1.0 removed ``gymnasium.wrappers.{compatibility, time_limit, normalize,
    env_checker, autoreset}``; safety-gymnasium imports classes from them. While it is imported,
    these names point to modules that hold the same classes under their 0.29 names (the
    ``EnvCompatibility`` stand-in only refuses: safety-gymnasium uses it for the old gym API,
    which lbwrap never asks for). Afterwards the names are gone again."""
    import types

    from gymnasium import wrappers
    from gymnasium.wrappers.utils import RunningMeanStd

    class EnvCompatibility:  # a stand-in, never instantiated by lbwrap
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError("the old gym step API (apply_api_compatibility) is not "
                                      "available on Gymnasium >= 1.0")

    contents: dict[str, dict[str, Any]] = {
        "compatibility": {"EnvCompatibility": EnvCompatibility},
        "time_limit": {"TimeLimit": wrappers.TimeLimit},
        "normalize": {"NormalizeObservation": wrappers.NormalizeObservation,
                      "NormalizeReward": wrappers.NormalizeReward,
                      "RunningMeanStd": RunningMeanStd},
        "env_checker": {"PassiveEnvChecker": wrappers.PassiveEnvChecker},
        "autoreset": {"AutoResetWrapper": getattr(wrappers, "Autoreset")},  # noqa: B009 - 1.x only
    }
    added = []
    for name, members in contents.items():
        full = f"gymnasium.wrappers.{name}"
        if full in sys.modules:
            continue
        module = types.ModuleType(full)
        module.__dict__.update(members)
        sys.modules[full] = module
        added.append(full)
    try:
        yield
    finally:
        for full in added:
            sys.modules.pop(full, None)


def _patch_imported_safety_gymnasium() -> None:
    """After the import, on Gymnasium 1.x: the ``EnvSpec`` fields and the viewer size."""
    from gymnasium.envs.registration import EnvSpec
    from safety_gymnasium.bases import underlying
    from safety_gymnasium.utils import registration

    # safety-gymnasium's make() reads spec.autoreset / spec.apply_api_compatibility, fields that
    # Gymnasium 1.0 dropped (neither applies there), and builds specs with both set to False.
    old_spec = _spec_class_with_old_fields(EnvSpec)
    find_spec = registration._find_spec

    def find_spec_with_old_fields(env_id: str) -> Any:
        spec = find_spec(env_id)
        return old_spec(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(EnvSpec)
                           if f.init})

    registration._find_spec = find_spec_with_old_fields
    registration.EnvSpec = old_spec
    # Gymnasium 1.0's OffScreenViewer needs width and height; 0.29 took the model's offscreen
    # buffer size (what the vision tasks set to the camera size), so pass exactly that.
    viewer_cls = underlying.OffScreenViewer

    def offscreen_viewer(model: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
        if not args and "width" not in kwargs:
            kwargs.update(width=model.vis.global_.offwidth, height=model.vis.global_.offheight)
        return viewer_cls(model, data, *args, **kwargs)

    underlying.OffScreenViewer = offscreen_viewer


def _spec_class_with_old_fields(spec_cls: type) -> type:
    """Gymnasium 1.x's ``EnvSpec`` with 0.29's ``autoreset`` and ``apply_api_compatibility``."""

    @dataclasses.dataclass
    class EnvSpecWithOldFields(spec_cls):
        autoreset: bool = False
        apply_api_compatibility: bool = False

    return EnvSpecWithOldFields


def ensure_render_backend() -> str:
    """Select MuJoCo's off-screen OpenGL backend before mujoco is imported.

    Keeps a backend the user chose (``MUJOCO_GL``); otherwise sets ``MUJOCO_GL=egl``, which works
    headless with Mesa's software EGL and with NVIDIA drivers. Returns the backend in force.
    """
    backend = os.environ.get("MUJOCO_GL")
    if not backend:
        backend = _DEFAULT_GL_BACKEND
        os.environ["MUJOCO_GL"] = backend
        if "mujoco" in sys.modules:  # too late for mujoco to pick it up by itself
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def import_safety_gymnasium() -> ModuleType:
    """Import and return the ``safety_gymnasium`` module (Python 3.10-3.12).

    Raises:
        SafetyGymUnavailableError: if it is not installed or one of its needs is missing.
    """
    if "safety_gymnasium" in sys.modules:
        return sys.modules["safety_gymnasium"]
    ensure_render_backend()
    removed_modules = _removed_wrapper_modules() if GYMNASIUM_1 else contextlib.nullcontext()
    try:
        with _ndarray_defaults_as_factories(), removed_modules, warnings.catch_warnings():
            # gymnasium-robotics warns about its Adroit envs at import; irrelevant here.
            warnings.simplefilter("ignore")
            # ...and prints a notice about them to stderr; keep the user's terminal clean.
            with contextlib.redirect_stderr(io.StringIO()):
                sg = importlib.import_module("safety_gymnasium")
        if GYMNASIUM_1:
            _patch_imported_safety_gymnasium()
        return sg
    except ImportError as exc:
        raise SafetyGymUnavailableError(
            f"safety-gymnasium could not be imported ({exc}). It must be installed without its "
            "impossible pins: run `scripts/setup_env.sh` (or `make setup`), which installs "
            "`safety-gymnasium==1.0.0 gymnasium-robotics==1.2.2` with --no-deps and their real "
            "needs from pyproject.toml."
        ) from exc


def is_safety_vision_id(env_id: str) -> bool:
    """True for ids like ``SafetyPointGoal1Vision-v0`` (and their ``...VisionGymnasium-v0`` twins)."""
    return bool(VISION_ID_PATTERN.match(env_id))


def make_safety_vision_env(env_id: str, size: int = 64, **make_kwargs: Any) -> Any:
    """Build a safety-gymnasium vision task whose camera renders at ``size`` x ``size`` directly.

    The returned env is safety-gymnasium's own (6-tuple ``step`` with the cost as third value, or
    the 5-tuple Gymnasium twin with ``info["cost"]``); :func:`lbwrap.envs.make_pixel_env` adapts it.
    """
    if not is_safety_vision_id(env_id):
        raise ValueError(
            f"{env_id!r} is not a safety-gymnasium vision task. Expected an id like "
            "'SafetyPointGoal1Vision-v0' (Safety{Point,Car,Racecar,Doggo,Ant}{Goal,Button,Push}"
            "{0,1,2}Vision-v0)."
        )
    sg = import_safety_gymnasium()
    gymnasium_twin = env_id.endswith("Gymnasium-v0")
    if env_id not in sg.utils.registration.safe_registry and env_id not in gymnasium.registry:
        raise ValueError(f"{env_id!r} is not registered in safety-gymnasium {sg.__version__}.")
    spec = gymnasium.spec(env_id)
    base_config = dict(spec.kwargs.get("config", {}))
    # A dotted key reaches into the nested vision config; ``config=`` replaces the registered
    # config wholesale, hence the merge.
    config = {**base_config, "vision_env_conf.vision_size": (int(size), int(size))}
    if gymnasium_twin:
        env = gymnasium.make(env_id, config=config, **make_kwargs)
    else:
        env = sg.make(env_id, config=config, **make_kwargs)
    return ReleaseRenderersOnClose(env)


class ReleaseRenderersOnClose(gymnasium.Wrapper, gymnasium.utils.RecordConstructorArgs):
    """Free MuJoCo's off-screen GL contexts in ``close()``, and at interpreter exit for envs that
    were never closed.

    safety-gymnasium never frees its renderers, so their EGL contexts are destroyed by the garbage
    collector at interpreter exit, after EGL itself is gone, which prints tracebacks (with newer
    mujoco releases). Closing the env frees them deterministically; an ``atexit`` hook (run before
    that teardown) frees those of envs still open.
    """

    _open: ClassVar[weakref.WeakSet[ReleaseRenderersOnClose]] = weakref.WeakSet()

    def __init__(self, env: gymnasium.Env) -> None:
        gymnasium.utils.RecordConstructorArgs.__init__(self)
        gymnasium.Wrapper.__init__(self, env)
        ReleaseRenderersOnClose._open.add(self)

    def reset(self, **kwargs: Any) -> Any:
        out = self.env.reset(**kwargs)
        if not _EXIT_HOOK:
            # after the first render set EGL up, so that it runs before EGL's own exit hook
            atexit.register(_free_open_renderers)
            _EXIT_HOOK.append(True)
        return out

    def free_renderers(self) -> None:
        """Free the task's off-screen viewers now (they are rebuilt on the next render)."""
        task = getattr(self.env.unwrapped, "task", None)
        viewers = getattr(task, "_viewers", None) or {}
        for viewer in list(viewers.values()):
            free = getattr(viewer, "free", None)
            if callable(free):
                free()
        viewers.clear()
        if task is not None and hasattr(task, "viewer"):
            task.viewer = None

    def close(self) -> None:
        self.free_renderers()
        ReleaseRenderersOnClose._open.discard(self)
        super().close()


_EXIT_HOOK: list[bool] = []


def _free_open_renderers() -> None:
    for env in list(ReleaseRenderersOnClose._open):
        with contextlib.suppress(Exception):
            env.free_renderers()


def check_rendering(env: Any) -> None:
    """Reset ``env`` once to prove that MuJoCo can render; raise a helpful error if it cannot."""
    try:
        env.reset(seed=0)
    except Exception as exc:  # the GL stacks raise many different types
        backend = os.environ.get("MUJOCO_GL", "<unset>")
        raise RenderBackendError(
            f"MuJoCo could not render off-screen with MUJOCO_GL={backend} ({type(exc).__name__}: "
            f"{exc}). Headless machines need EGL: `apt-get install libegl1 libgl1` (Mesa) or an "
            "NVIDIA driver; alternatively set MUJOCO_GL=osmesa with libosmesa6 installed, or "
            "MUJOCO_GL=glfw with a display."
        ) from exc
