"""Bad input gets a clear error, raised early, that names the problem and the fix (issue 16, 6).

Policies pinned here:

* float images are refused, never cast (a cast turns [0, 1] floats into black frames): the
  adapter (``as_pixel_env``) refuses [0, 1] floats and NaN/inf pixels, ``LatentObservation``,
  ``VecLatentObservation`` and ``LatentTracker`` refuse every non-uint8 frame; each error names
  the conversion;
* NaN/inf actions are refused (``ValueError``) before the env is stepped or the world model fed;
* actions must come as ``(N, A)`` (or ``(A,)`` for one env), never reshaped from another layout;
* latents must be in the model's dtype (float32), never converted silently.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import make_tiny_safety
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper

import lbwrap
from lbwrap.latent_tracker import LatentTracker
from lbwrap.safety_model import shield_decision
from lbwrap.sb3 import VecBarrierShield, VecLatentObservation
from lbwrap.wrappers import BarrierShield, LatentObservation

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_sac_shielded.py"
NAN2 = np.array([np.nan, 0.0], np.float32)


def pixel_env(size: int = 32, **kwargs):
    return lbwrap.make_pixel_env(lbwrap.PIXEL_HAZARD_ID, size=size, **kwargs)


class FloatFrameEnv(gym.Env):
    """Declares uint8 (3, 32, 32) images but returns floats: ``scale`` 1.0 gives [0, 1] images,
    255.0 gives 0-255 floats; ``nan`` puts a NaN pixel in every frame."""

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(self, scale: float = 1.0, nan: bool = False, channel_last: bool = False):
        shape = (32, 32, 3) if channel_last else (3, 32, 32)
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.scale, self.nan, self.shape = scale, nan, shape
        self.steps = 0

    def _obs(self):
        frame = np.full(self.shape, 0.5 * self.scale, np.float32)
        if self.nan:
            frame[0, 0, 0] = np.nan
        return frame

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        self.steps += 1
        return self._obs(), 0.0, False, False, {"cost": 0.0}


class FloatBoxEnv(FloatFrameEnv):
    """An honest float image space, Box(0, 1, float32), with no rendering."""

    def __init__(self):
        super().__init__(channel_last=True)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (32, 32, 3), np.float32)


class ScaleTo01(VecEnvWrapper):
    """A (misplaced) normalising VecEnv wrapper: frames / 255 as float32."""

    def reset(self):
        return self.venv.reset().astype(np.float32) / 255.0

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        return obs.astype(np.float32) / 255.0, rewards, dones, infos


@pytest.fixture(scope="module")
def ctx():
    """Shared pieces, built once: a tiny safety model for PixelHazard at 32 px, the example."""
    base = pixel_env()
    safety = make_tiny_safety(base)
    spec = importlib.util.spec_from_file_location("train_sac_shielded_bad_input", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses resolve annotations through it
    spec.loader.exec_module(example)

    def latent():
        env = LatentObservation(pixel_env(), safety)
        env.reset(seed=0)
        return env

    def shield():
        env = BarrierShield(LatentObservation(pixel_env(), safety), safety)
        env.reset(seed=0)
        return env

    def vec(n: int = 2):
        return DummyVecEnv([pixel_env] * n)

    def vec_shield(n: int = 2):
        venv = VecBarrierShield(VecLatentObservation(vec(n), safety), safety)
        venv.reset()
        return venv

    def vec_latent(n: int = 2):
        venv = VecLatentObservation(vec(n), safety)
        venv.reset()
        return venv

    def tracker(n: int = 1):
        return LatentTracker(safety.world_model, n)

    yield SimpleNamespace(safety=safety, example=example, latent=latent, shield=shield, vec=vec,
                          vec_shield=vec_shield, vec_latent=vec_latent, tracker=tracker)
    sys.modules.pop(spec.name, None)


def _state(c, n: int = 1):
    return c.tracker(n).state


def _observe_with_float64_state(tracker):
    tracker.state = tracker.state.map(lambda t: t.double())
    tracker.observe(np.zeros((1, 3, 32, 32), np.uint8), None, np.ones(1, bool))


def _resolve(c, **kwargs):
    return c.example.resolve(c.example.Args.of(**kwargs))


CASES = [
    # ------------------------------------------------------------------ float images, NaN pixels
    pytest.param(lambda c: LatentObservation(FloatFrameEnv(1.0), c.safety).reset(seed=0),
                 ValueError, r"\(frame \* 255\)\.round\(\)\.astype\(np\.uint8\)",
                 id="latent-obs-float-frames-in-0-1"),
    pytest.param(lambda c: LatentObservation(FloatFrameEnv(255.0), c.safety).reset(seed=0),
                 ValueError, r"np\.clip\(frame, 0, 255\)\.round\(\)\.astype\(np\.uint8\)",
                 id="latent-obs-float-frames-in-0-255"),
    pytest.param(lambda c: LatentObservation(FloatFrameEnv(1.0, nan=True), c.safety).reset(seed=0),
                 ValueError, r"NaN or inf.*np\.nan_to_num", id="latent-obs-nan-pixels"),
    pytest.param(lambda c: VecLatentObservation(ScaleTo01(c.vec()), c.safety).reset(),
                 ValueError, r"\(frame \* 255\)\.round\(\)\.astype\(np\.uint8\)",
                 id="vec-latent-float-frames-in-0-1"),
    pytest.param(lambda c: c.tracker().observe(np.full((1, 3, 32, 32), 0.5, np.float32), None,
                                               np.ones(1, bool)),
                 ValueError, r"\(frame \* 255\)\.round\(\)", id="tracker-float-frames"),
    pytest.param(lambda c: c.tracker().observe(np.zeros((1, 32, 32, 3), np.uint8), None,
                                               np.ones(1, bool)),
                 ValueError, r"shape \(1, 3, 32, 32\).*channel-first", id="tracker-channel-last"),
    pytest.param(lambda c: lbwrap.as_pixel_env(FloatFrameEnv(1.0, channel_last=True),
                                               size=32).reset(seed=0),
                 ValueError, r"TransformObservation\(env, lambda o: \(o \* 255\)",
                 id="adapter-float-frames-in-0-1"),
    pytest.param(lambda c: lbwrap.as_pixel_env(FloatFrameEnv(255.0, nan=True, channel_last=True),
                                               size=32).reset(seed=0),
                 ValueError, r"NaN or inf.*np\.nan_to_num", id="adapter-nan-pixels"),
    pytest.param(lambda c: lbwrap.as_pixel_env(FloatBoxEnv(), size=32),
                 ValueError, r"ObservationWrapper.*\(o \* 255\)\.round\(\)\.astype\(np\.uint8\)",
                 id="adapter-float-image-space"),
    # ------------------------------------------------------------------ NaN / inf actions
    pytest.param(lambda c: c.latent().step(NAN2), ValueError, r"NaN or inf.*np\.nan_to_num",
                 id="latent-obs-nan-action"),
    pytest.param(lambda c: c.latent().step(np.array([np.inf, 0.0])), ValueError,
                 r"NaN or inf.*np\.nan_to_num", id="latent-obs-inf-action"),
    pytest.param(lambda c: c.shield().step(NAN2), ValueError, r"NaN or inf.*np\.nan_to_num",
                 id="shield-nan-proposal"),
    pytest.param(lambda c: c.vec_shield().step(np.stack([NAN2, NAN2])), ValueError,
                 r"env rows \[0, 1\].*np\.nan_to_num", id="vec-shield-nan-proposals"),
    pytest.param(lambda c: c.vec_latent().step(np.array([[0.0, 0.0], [-np.inf, 0.0]])),
                 ValueError, r"env rows \[1\].*np\.nan_to_num", id="vec-latent-inf-action"),
    pytest.param(lambda c: shield_decision(c.safety, _state(c), NAN2), ValueError,
                 r"NaN or inf.*np\.nan_to_num", id="shield-decision-nan"),
    # ------------------------------------------------------------------ wrong wrapper for the env
    pytest.param(lambda c: LatentObservation(c.vec(), c.safety), TypeError,
                 r"VecLatentObservation\(vec_env, safety\)", id="latent-obs-on-vec-env"),
    pytest.param(lambda c: LatentObservation(gym.vector.SyncVectorEnv([pixel_env]), c.safety),
                 TypeError, r"DummyVecEnv.*VecLatentObservation", id="latent-obs-on-gym-vector-env"),
    pytest.param(lambda c: VecLatentObservation(pixel_env(), c.safety), TypeError,
                 r"LatentObservation\(env, safety\)", id="vec-latent-on-gym-env"),
    pytest.param(lambda c: BarrierShield(pixel_env(), c.safety), ValueError,
                 r"LatentObservation inside.*BarrierShield\(LatentObservation",
                 id="shield-without-latent-obs"),
    pytest.param(lambda c: BarrierShield(c.vec(), c.safety), TypeError,
                 r"VecBarrierShield\(VecLatentObservation", id="shield-on-vec-env"),
    pytest.param(lambda c: VecBarrierShield(LatentObservation(pixel_env(), c.safety), c.safety),
                 TypeError, r"BarrierShield\(LatentObservation\(env", id="vec-shield-on-gym-env"),
    # ------------------------------------------------------------------ make_pixel_env arguments
    pytest.param(lambda c: lbwrap.make_pixel_env(pixel_env()), TypeError,
                 r"lbwrap\.as_pixel_env\(env", id="make-pixel-env-given-an-env"),
    pytest.param(lambda c: lbwrap.make_pixel_env("lbwrap/PixelHazrd-v0"), gym.error.NameNotFound,
                 r"Did you mean \['lbwrap/PixelHazard-v0'", id="make-pixel-env-unknown-id"),
    pytest.param(lambda c: pixel_env(max_episode_steps=0), ValueError,
                 r"max_episode_steps must be an int >= 1", id="max-episode-steps-zero"),
    pytest.param(lambda c: pixel_env(max_episode_steps=-5), ValueError,
                 r"max_episode_steps must be an int >= 1", id="max-episode-steps-negative"),
    pytest.param(lambda c: pixel_env(size=8), ValueError, r"size must be an int in \[16, 1024\]",
                 id="size-too-small"),
    pytest.param(lambda c: pixel_env(size=32.5), ValueError, r"size must be an int in \[16, 1024\]",
                 id="size-not-an-int"),
    pytest.param(lambda c: pixel_env(action_repeat=0), ValueError,
                 r"action_repeat must be an int >= 1", id="action-repeat-zero"),
    # ------------------------------------------------------------------ action shapes
    pytest.param(lambda c: shield_decision(c.safety, _state(c), np.zeros(4, np.float32)),
                 ValueError, r"shape \(1, 2\) \(num_envs, action_dim\) or \(2,\), got \(4,\)",
                 id="shield-decision-flat-4-for-1-env"),
    pytest.param(lambda c: shield_decision(c.safety, _state(c), np.zeros((2, 2), np.float32)),
                 ValueError, r"shape \(1, 2\).*got \(2, 2\)", id="shield-decision-2-rows-for-1-env"),
    pytest.param(lambda c: shield_decision(c.safety, _state(c, 2), np.zeros(4, np.float32)),
                 ValueError, r"shape \(2, 2\) \(num_envs, action_dim\), got \(4,\)",
                 id="shield-decision-flat-batch"),
    pytest.param(lambda c: c.shield().step(np.zeros((1, 2), np.float32)), ValueError,
                 r"shape \(2,\) \(one env\), got \(1, 2\)", id="shield-proposal-1x2"),
    pytest.param(lambda c: c.shield().step(np.zeros(4, np.float32)), ValueError,
                 r"shape \(2,\) \(one env\), got \(4,\)", id="shield-proposal-4"),
    pytest.param(lambda c: c.vec_shield().step(np.zeros(4, np.float32)), ValueError,
                 r"shape \(2, 2\) \(num_envs, action_dim\), got \(4,\)", id="vec-shield-flat"),
    pytest.param(lambda c: c.latent().step(np.zeros(3, np.float32)), ValueError,
                 r"shape \(2,\) \(one env\), got \(3,\)", id="latent-obs-action-3-dims"),
    pytest.param(lambda c: c.vec_latent().step(np.zeros((2, 1), np.float32)), ValueError,
                 r"shape \(2, 2\).*got \(2, 1\)", id="vec-latent-action-shape"),
    # ------------------------------------------------------------------ float64 latents
    pytest.param(lambda c: shield_decision(c.safety, _state(c).map(lambda t: t.double()), [0, 0]),
                 TypeError, r"state\.map\(lambda t: t\.to\(torch\.float32\)\)",
                 id="shield-decision-float64-state"),
    pytest.param(lambda c: shield_decision(c.safety, _state(c), [0, 0],
                                           embed=c.tracker().embed.double()),
                 TypeError, r"embed\.to\(torch\.float32\)", id="shield-decision-float64-embed"),
    pytest.param(lambda c: _observe_with_float64_state(c.tracker()), TypeError, r"state\.map\(lambda t: t\.to\(torch\.float32\)\)",
                 id="tracker-float64-state"),
    pytest.param(lambda c: shield_decision(c.safety, torch.zeros(1, 20), [0, 0]), TypeError,
                 r"LatentState.*latent_state", id="shield-decision-not-a-state"),
    # ------------------------------------------------------------------ the example's flags
    *[pytest.param(lambda c, f=flag: _resolve(c, **{f: -1}), ValueError,
                   rf"--{flag.replace('_', '-')} must be >= 0", id=f"example-negative-{flag}")
      for flag in ("checkpoint_every", "learning_starts", "eval_episodes", "model_learning_starts",
                   "pretrain_updates")],
    pytest.param(lambda c: _resolve(c, env_id=lbwrap.PIXEL_HAZARD_ID, model_seq_len=300),
                 ValueError, r"--model-seq-len <= 250", id="example-seq-len-longer-than-episode"),
    pytest.param(lambda c: _resolve(c, env_id=lbwrap.PIXEL_HAZARD_ID, max_episode_steps=40,
                                    action_repeat=4), ValueError, r"--model-seq-len <= 10",
                 id="example-seq-len-vs-short-episodes"),
    pytest.param(lambda c: _resolve(c, env_id="SafetyPointGoal1Vision-v0", level=1), ValueError,
                 r"--level applies to the built-in envs only.*drop the flag",
                 id="example-level-on-safety-gym"),
    pytest.param(lambda c: _resolve(c, ent_coef="bogus"), ValueError,
                 r"'auto' or 'auto_<initial float > 0>'", id="example-ent-coef-bogus"),
    pytest.param(lambda c: _resolve(c, ent_coef="auto_-0.1"), ValueError,
                 r"'auto' or 'auto_<initial float > 0>'", id="example-ent-coef-auto-negative"),
    pytest.param(lambda c: _resolve(c, device="tpu9"), ValueError,
                 r"auto, cpu, cuda, cuda:N \(N = GPU index\), mps; got 'tpu9'",
                 id="example-device-tpu9"),
]


@pytest.mark.parametrize(("make", "exc", "fix"), CASES)
def test_bad_input_is_refused_naming_the_fix(ctx, make, exc, fix):
    with pytest.raises(exc, match=fix) as info:
        make(ctx)
    assert "\n" not in str(info.value)  # one line


def test_there_are_enough_cases():
    assert len(CASES) >= 30


# ----------------------------------------------------------------------------- nothing is lost
def test_refused_actions_never_reach_the_env_or_the_model(ctx):
    env = ctx.shield()
    base = env.unwrapped
    before = base.elapsed_steps
    state = env.latent.latent_state
    for bad in (NAN2, np.zeros((1, 2)), np.zeros(4)):
        with pytest.raises(ValueError):
            env.step(bad)
    assert base.elapsed_steps == before  # the env was not stepped
    assert env.latent.latent_state is state  # nor the world model fed
    env.step(np.zeros(2, np.float32))  # and it carries on with a valid action
    assert base.elapsed_steps == before + 2  # action_repeat 2


def test_valid_input_is_accepted_as_before(ctx):
    # (A,) for one env is the same decision as (1, A); 0-255 floats are still cast by the adapter
    state = _state(ctx)
    one = shield_decision(ctx.safety, state, np.array([0.3, -2.0]))
    batch = shield_decision(ctx.safety, state, np.array([[0.3, -2.0]]))
    np.testing.assert_array_equal(one.executed, batch.executed)
    np.testing.assert_array_equal(one.executed, np.array([[0.3, -1.0]], np.float32))
    obs, _ = lbwrap.as_pixel_env(FloatFrameEnv(255.0, channel_last=True), size=32).reset(seed=0)
    assert obs.dtype == np.uint8 and (obs == 127).all()


# ----------------------------------------------------------------------------- render, check_env
@pytest.mark.parametrize("env_id", [lbwrap.PIXEL_HAZARD_ID, lbwrap.PIXEL_HAZARD_RUN_ID])
def test_check_env_with_render_passes_on_builtin_envs(env_id):
    env = lbwrap.make_pixel_env(env_id, size=32)
    assert env.render_mode == "rgb_array" and env.render() is None  # nothing seen yet
    gym_check_env(env)  # render check included
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, obs.transpose(1, 2, 0))  # the camera frame itself
    env.close()


@pytest.mark.slow
def test_check_env_with_render_passes_on_safety_gym_vision():
    pytest.importorskip("mujoco")
    try:
        env = lbwrap.make_pixel_env("SafetyPointGoal1Vision-v0", size=32)
    except (lbwrap.envs.SafetyGymUnavailableError, lbwrap.envs.RenderBackendError) as exc:
        pytest.skip(str(exc))
    start = time.perf_counter()
    try:
        gym_check_env(env)  # safety-gymnasium's own render() refuses vision tasks
        obs, _ = env.reset(seed=0)
        np.testing.assert_array_equal(env.render(), obs.transpose(1, 2, 0))
    finally:
        env.close()
    assert time.perf_counter() - start < 600


# ----------------------------------------------------------------------------- import lbwrap
def test_import_lbwrap_registers_the_builtin_ids_cheaply():
    code = (
        "import sys, gymnasium as gym, lbwrap\n"
        "assert lbwrap.envs.PIXEL_HAZARD_ID == 'lbwrap/PixelHazard-v0'\n"
        "gym.make('lbwrap/PixelHazard-v0').close(); gym.make('lbwrap/PixelHazardRun-v0').close()\n"
        "heavy = [m for m in ('torch', 'stable_baselines3') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, out.stderr
