"""SafePixelAgent and checkpoint sets: a saved agent acts on pixels by itself, in a fresh process,
exactly as the training-time wrapper stack did (shield included); sets are never mixed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_safety
from stable_baselines3.common.vec_env import DummyVecEnv

import lbwrap
from lbwrap.sb3 import (
    AgentSettings,
    CheckpointError,
    SafePixelAgent,
    VecBarrierShield,
    VecLatentObservation,
    find_checkpoint,
    save_checkpoint_set,
)
from lbwrap.sb3.recipes import AgentRecipe, build_safe_agent

ENV_KWARGS = {"size": 32, "action_repeat": 2, "level": 1, "max_episode_steps": 200}
ROOT = Path(__file__).resolve().parents[1]


def make_env():
    return lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", **ENV_KWARGS)


def settings_for(built, shield: bool = True) -> AgentSettings:
    return AgentSettings(mode=built.recipe.mode, algorithm="SAC", shield=shield,
                         observation_shape=(3, 32, 32), env_id="lbwrap/PixelHazard-v0",
                         env_kwargs=ENV_KWARGS)


@pytest.fixture(scope="module")
def trained():
    """A tiny shielded SAC after 300 agent steps; the gate is open and the shield's margin is so
    high that it replaces most proposals (so that equality of actions covers the shield)."""
    recipe = AgentRecipe(mode="shield", sac_kwargs={"learning_starts": 50, "batch_size": 32,
                                                    "buffer_size": 2000,
                                                    "policy_kwargs": {"net_arch": [16, 16]}},
                         train_every=20, updates_per_train=2, model_learning_starts=20,
                         pretrain_updates=0, pretrain_min_unsafe=0, reward_scale=1.0,
                         intervention_penalty=0.0)  # the recipe's defaults before 2026-12
    venv_probe = make_env()
    safety = make_tiny_safety(venv_probe, ready_min_updates=4, ready_min_unsafe=1,
                              ready_accuracy=0.0,
                              filter=lbwrap.FilterConfig(condition="barrier", eps=50.0,
                                                         predictor="action_barrier"))
    venv_probe.close()
    built = build_safe_agent([make_env], recipe, safety=safety, seed=0, device="cpu")
    built.agent.learn(300, callback=built.callback())
    assert safety.ready, "the tiny gate should be open after 300 steps"
    yield built
    built.env.close()


def training_stack_actions(built, seed: int, steps: int) -> tuple[list, int]:
    """The executed actions of one fixed episode through the training-time VecEnv stack."""
    venv = DummyVecEnv([make_env])
    stack = VecBarrierShield(VecLatentObservation(venv, built.safety), built.safety)
    venv.seed(seed)
    obs = stack.reset()
    actions, interventions = [], 0
    for _ in range(steps):
        action, _ = built.agent.predict(obs, deterministic=True)
        obs, _, _, infos = stack.step(action)
        actions.append(infos[0]["executed_action"].tolist())
        interventions += int(infos[0]["shield_intervened"])
    stack.close()
    return actions, interventions


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    from stable_baselines3.common.evaluation import evaluate_policy
    from lbwrap.sb3 import SafePixelAgent

    agent = SafePixelAgent.load(sys.argv[1], device="cpu")
    env = agent.settings.make_env()
    obs, _ = env.reset(seed=int(sys.argv[2]))
    state, actions = None, []
    for t in range(int(sys.argv[3])):
        action, state = agent.predict(obs, state, episode_start=np.array([t == 0]),
                                      deterministic=True)
        actions.append(action.tolist())
        obs, *_ = env.step(action)
    mean, std = evaluate_policy(agent, agent.settings.make_env(), n_eval_episodes=1, warn=False)
    print(json.dumps({"actions": actions, "ready": bool(agent.safety.ready),
                      "eval_return": float(mean)}))
""")


def test_loaded_agent_acts_like_the_training_stack_in_a_fresh_process(trained, tmp_path):
    saved = save_checkpoint_set(tmp_path / "checkpoints", trained.agent, trained.safety,
                                settings_for(trained))
    assert saved.step == 300 and (tmp_path / "checkpoints" / "latest").read_text().strip() == \
        saved.folder.name
    expected, interventions = training_stack_actions(trained, seed=123, steps=40)
    assert interventions >= 10, "the shield must act in the compared episode"
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path), "123", "40"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ready"] is True
    np.testing.assert_allclose(result["actions"], expected, atol=1e-5)
    assert np.isfinite(result["eval_return"])


def test_predict_takes_one_frame_or_a_batch_and_refuses_others(trained):
    agent = SafePixelAgent(trained.agent, trained.safety, settings_for(trained))
    env = make_env()
    obs, _ = env.reset(seed=5)
    trained.safety.shield_filter.reset(0)  # the same candidate draws for both calls
    action, state = agent.predict(obs, deterministic=True)
    assert action.shape == (2,) and state.num_envs == 1
    assert agent.last_decision is not None and agent.last_decision.active
    trained.safety.shield_filter.reset(0)
    batch, state2 = agent.predict(np.stack([obs, obs, obs]), deterministic=True)
    assert batch.shape == (3, 2) and state2.num_envs == 3
    np.testing.assert_allclose(batch[0], action, atol=1e-6)  # same frame, same start
    with pytest.raises(ValueError, match="state holds 3 envs"):
        agent.predict(obs, state2)
    with pytest.raises(ValueError, match=r"shape \(3, 32, 32\)"):
        agent.predict(obs[:, :16])
    with pytest.raises(ValueError, match="uint8"):
        agent.predict(obs.astype(np.float32) / 255.0)
    # episode_start resets only the marked envs' filters
    _, s = agent.predict(np.stack([obs, obs]), deterministic=True)
    _, s = agent.predict(np.stack([obs, obs]), s, episode_start=np.array([False, True]))
    restarted = s.latent.deter[1].numpy()
    np.testing.assert_allclose(restarted, state.latent.deter[0].numpy(), atol=1e-6)  # a new start
    assert not np.allclose(s.latent.deter[0].numpy(), restarted)  # env 0 took a second step
    env.close()


def test_unshielded_agent_passes_proposals_through(trained):
    agent = SafePixelAgent(trained.agent, trained.safety, settings_for(trained, shield=False))
    env = make_env()
    obs, _ = env.reset(seed=5)
    action, _ = agent.predict(obs, deterministic=True)
    assert agent.last_decision is None
    features = VecLatentObservation(DummyVecEnv([make_env]), trained.safety)
    features.venv.seed(5)
    proposal, _ = trained.agent.predict(features.reset(), deterministic=True)
    np.testing.assert_allclose(action, proposal[0], atol=1e-6)
    env.close()


class Crash(BaseException):
    """A simulated kill: not an Exception, so no handler in the code under test swallows it."""


def test_a_crash_at_any_point_of_a_save_leaves_a_consistent_set(trained, tmp_path, monkeypatch):
    """Crash at each file operation of a save in turn: every time, the set found afterwards is
    complete (checksums verify), of one step (agent.zip, run state and manifest agree), and is
    the new one or the one before it."""
    import shutil

    from stable_baselines3 import SAC

    import lbwrap.sb3.checkpoint as ckpt

    root = tmp_path / "checkpoints"
    settings = settings_for(trained)
    agent, safety = trained.agent, trained.safety
    first = save_checkpoint_set(root, agent, safety, settings, run_state={"step": agent.num_timesteps},
                                include_replay=True)
    seams = {"atomic_write_text": ckpt.atomic_write_text, "save_sb3_replay": ckpt.save_sb3_replay,
             "fsync_dir": ckpt.fsync_dir}
    calls = {"n": 0, "crash_at": -1}

    def seam(fn):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == calls["crash_at"]:
                raise Crash()
            return fn(*args, **kwargs)
        return wrapped

    for name, fn in seams.items():
        monkeypatch.setattr(ckpt, name, seam(fn))
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(ckpt.shutil, "rmtree", seam(real_rmtree))
    original_step = agent.num_timesteps
    agent.num_timesteps = original_step + 7  # the "newer" state being saved
    steps_seen = set()
    try:
        for crash_at in range(1, 40):
            calls.update(n=0, crash_at=crash_at)
            try:
                save_checkpoint_set(root, agent, safety, settings,
                                    run_state={"step": agent.num_timesteps}, include_replay=True)
                completed = True
            except Crash:
                completed = False
            found = find_checkpoint(root)
            assert found.step in (first.step, original_step + 7)
            assert SAC.load(found.agent_path).num_timesteps == found.step
            assert found.run_state() == {"step": found.step}
            steps_seen.add(found.step)
            if completed:
                break
        assert completed, "the save never completed"
        assert steps_seen == {first.step, original_step + 7}
    finally:
        agent.num_timesteps = original_step
    monkeypatch.undo()
    # the completed save cleaned every leftover of the crashed ones
    leftovers = [p.name for p in root.iterdir() if p.name != "latest"]
    assert len(leftovers) == 1 and leftovers[0].startswith("step-")


def test_damaged_sets_are_refused_with_the_file_named(trained, tmp_path):
    root = tmp_path / "checkpoints"
    saved = save_checkpoint_set(root, trained.agent, trained.safety, settings_for(trained))
    with open(saved.agent_path, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(FileNotFoundError, match="agent.zip does not match its checksum"):
        find_checkpoint(root)
    (saved.folder / "manifest.json").write_text("{")
    with pytest.raises(FileNotFoundError, match="manifest.json is unreadable"):
        find_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="manifest.json is unreadable"):
        SafePixelAgent.load(saved.folder)
    with pytest.raises(FileNotFoundError, match="No lbwrap checkpoint"):
        SafePixelAgent.load(tmp_path / "nothing")


def test_agent_replay_is_stored_compactly_and_restored(trained, tmp_path):
    from lbwrap.sb3.checkpoint import load_sb3_replay, save_sb3_replay

    buffer = trained.agent.replay_buffer
    path = save_sb3_replay(buffer, tmp_path / "replay.npz")
    assert path.stat().st_size < buffer.observations.nbytes / 2  # only the filled part
    from stable_baselines3.common.buffers import ReplayBuffer

    other = ReplayBuffer(buffer.buffer_size, buffer.observation_space, buffer.action_space,
                         n_envs=buffer.n_envs)
    load_sb3_replay(other, path)
    assert (other.pos, other.full) == (buffer.pos, buffer.full)
    np.testing.assert_array_equal(other.observations[: buffer.pos], buffer.observations[: buffer.pos])
    np.testing.assert_array_equal(other.rewards[: buffer.pos], buffer.rewards[: buffer.pos])
    small = ReplayBuffer(10, buffer.observation_space, buffer.action_space, n_envs=buffer.n_envs)
    with pytest.raises(CheckpointError, match="--buffer-size"):
        load_sb3_replay(small, path)


def test_settings_refuse_unknown_values():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        AgentSettings(mode="shield", algorithm="DQN", shield=True, observation_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="shield_selection"):
        AgentSettings(mode="shield", algorithm="SAC", shield=True, observation_shape=(3, 8, 8),
                      shield_selection="best")
    with pytest.raises(CheckpointError, match="newer lbwrap"):
        AgentSettings.from_dict({"mode": "none", "algorithm": "SAC", "shield": False,
                                 "observation_shape": [3, 8, 8], "colour": "red"})
    hwc = AgentSettings(mode="none", algorithm="SAC", shield=False, observation_shape=(8, 8, 3))
    assert not hwc.channel_first and AgentSettings.from_dict(hwc.to_dict()) == hwc


def wrapper_stack_evaluation(built, episodes: int, seed_offset: int) -> dict[str, list]:
    """The evaluation loop lbwrap used before SafePixelAgent: the training-time Gymnasium
    wrappers (latent observation + shield) around the pixel env."""
    out: dict[str, list] = {"returns": [], "costs": [], "violations": [], "interventions": []}
    for k in range(episodes):
        env = lbwrap.BarrierShield(lbwrap.LatentObservation(make_env(), built.safety),
                                   built.safety)
        obs, _ = env.reset(seed=seed_offset + k)
        ret = cost = 0.0
        viol = interventions = 0
        done = False
        while not done:
            action, _ = built.agent.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, info = env.step(action)
            ret += float(info.get("env_reward", reward))
            cost += float(info["cost"])
            viol += int(info["violations"])
            interventions += int(info["shield_intervened"])
            done = terminated or truncated
        env.close()
        for key, value in zip(out, (ret, cost, viol, interventions)):
            out[key].append(value)
    return out


def test_evaluation_through_the_pixel_agent_matches_the_wrapper_stack(trained):
    """lbwrap.eval acts through SafePixelAgent; its numbers equal the wrapper stack's."""
    from lbwrap.eval import evaluate_agent, evaluate_pixel_agent

    trained.safety.shield_filter.reset(0)
    expected = wrapper_stack_evaluation(trained, episodes=2, seed_offset=77)
    assert sum(expected["interventions"]) >= 10, "the shield must act in the compared episodes"
    trained.safety.shield_filter.reset(0)
    result = evaluate_agent(trained.agent, make_env, trained.safety, episodes=2, shield=True,
                            seed_offset=77)
    for key, values in expected.items():
        np.testing.assert_allclose(getattr(result, key), values, rtol=1e-6, err_msg=key)
    trained.safety.shield_filter.reset(0)
    direct = evaluate_pixel_agent(trained.pixel_agent("lbwrap/PixelHazard-v0", ENV_KWARGS),
                                  episodes=2, seed_offset=77)
    assert direct.returns == result.returns and direct.interventions == result.interventions
    with pytest.raises(ValueError, match="episodes must be >= 0"):
        evaluate_pixel_agent(trained.pixel_agent(), episodes=-1)


def test_settings_of_a_built_agent_describe_how_it_acts(trained):
    settings = trained.settings("lbwrap/PixelHazard-v0", ENV_KWARGS)
    assert settings == settings_for(trained)
    plain = SafePixelAgent.from_training(trained.agent, trained.safety, shield=False)
    assert plain.settings.observation_shape == (3, 32, 32) and plain.settings.mode == "none"
    assert plain.settings.algorithm == "SAC"


def test_evaluate_agent_refuses_an_env_without_image_observations(trained):
    from lbwrap.eval import evaluate_agent

    env = _NoShapeEnv()
    with pytest.raises(ValueError, match="needs a pixel env.*make_pixel_env"):
        evaluate_agent(trained.agent, lambda: env, trained.safety, episodes=1)
    assert env.closed


class _NoShapeEnv:
    """An env whose observation space has no shape (a Dict space)."""

    def __init__(self) -> None:
        from gymnasium import spaces

        self.observation_space = spaces.Dict({"a": spaces.Discrete(2)})
        self.closed = False

    def close(self) -> None:
        self.closed = True
