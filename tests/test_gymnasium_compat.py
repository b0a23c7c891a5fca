"""safety-gymnasium 1.0.0 on Gymnasium 0.29 (nothing patched) and 1.x (each patch of
``lbwrap.envs.safety_gym`` restores what it names, and only during / for safety-gymnasium).

The 1.x tests run in the compatibility matrix's newest cells (``make test-compat``)."""

from __future__ import annotations

import sys

import gymnasium
import numpy as np
import pytest

from lbwrap.envs import safety_gym

gym_1 = pytest.mark.skipif(not safety_gym.GYMNASIUM_1, reason="Gymnasium 1.x only")
gym_029 = pytest.mark.skipif(safety_gym.GYMNASIUM_1, reason="Gymnasium 0.29 only")
REMOVED = ("compatibility", "time_limit", "normalize", "env_checker", "autoreset")


def test_version_flag_matches_the_installed_gymnasium():
    assert safety_gym.GYMNASIUM_1 == gymnasium.__version__.startswith("1.")


@gym_029
def test_nothing_is_patched_on_gymnasium_029():
    from gymnasium.envs.registration import EnvSpec

    sg = safety_gym.import_safety_gymnasium()
    from safety_gymnasium.bases import underlying
    from safety_gymnasium.utils import registration

    assert registration.EnvSpec is EnvSpec
    assert underlying.OffScreenViewer.__module__ == "gymnasium.envs.mujoco.mujoco_rendering"
    for name in REMOVED:  # gymnasium's own modules, still there on 0.29
        module = __import__(f"gymnasium.wrappers.{name}", fromlist=["_"])
        assert module.__file__ is not None
    assert sg.__version__ == "1.0.0"


@gym_1
def test_removed_wrapper_modules_exist_only_during_the_import():
    from gymnasium import wrappers

    with safety_gym._removed_wrapper_modules():
        from gymnasium.wrappers.autoreset import AutoResetWrapper
        from gymnasium.wrappers.compatibility import EnvCompatibility
        from gymnasium.wrappers.time_limit import TimeLimit

        assert AutoResetWrapper is wrappers.Autoreset and TimeLimit is wrappers.TimeLimit
        with pytest.raises(NotImplementedError, match="old gym step API"):
            EnvCompatibility(None)
    assert not any(f"gymnasium.wrappers.{name}" in sys.modules for name in REMOVED)


@gym_1
def test_spec_fields_and_viewer_size_are_restored_for_safety_gymnasium():
    safety_gym.import_safety_gymnasium()
    from safety_gymnasium.utils import registration

    spec = registration._find_spec("SafetyPointGoal1Vision-v0")
    assert spec.autoreset is False and spec.apply_api_compatibility is False
    assert spec.id == "SafetyPointGoal1Vision-v0"
    made = registration.EnvSpec(id="X-v0", entry_point="x:y", autoreset=False,
                                apply_api_compatibility=False)
    assert made.id == "X-v0"
    import lbwrap

    env = lbwrap.make_pixel_env("SafetyPointGoal1Vision-v0", size=32)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 32, 32) and obs.dtype == np.uint8 and obs.std() > 0
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert "cost" in info
    env.close()


def test_unclosed_safety_env_prints_no_renderer_traceback_at_exit():
    """Renderers of envs never closed are freed by an exit hook before EGL goes away."""
    import subprocess

    code = ("import lbwrap; env = lbwrap.make_pixel_env('SafetyPointGoal1Vision-v0', size=32); "
            "env.reset(seed=0); print('ok')")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr
