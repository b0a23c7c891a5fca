"""LatentRefresher: stale latents in SB3's replay re-filtered with the current world model.

The expected latents are computed independently of the refresher: each env's pixel stream is read
from the replay's arrays, filtered in one ``WorldModel.observe`` call (posterior means), and SB3's
slots are matched to stream steps from the stream itself (every pair of consecutive frames is one
transition, except a pair whose second frame starts an episode).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_WORLD_MODEL, Recorder, make_tiny_safety
from stable_baselines3 import PPO, SAC, TD3
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

import lbwrap
from lbwrap.experimental import RecipeExperimental
from lbwrap.safety_model import LatentSafetyModel
from lbwrap.sb3 import CoTrainCallback, LatentRefresher, VecLatentObservation
from lbwrap.sb3.recipes import AgentRecipe, build_safe_agent
from lbwrap.world_model import SequenceReplay

# episodes of 20 and 13 agent steps (action repeat 2): the two envs reset at different steps
EPISODE_ENV_STEPS = (40, 26)


def hazard_factory(seed: int, max_episode_steps: int):
    def make():
        env = lbwrap.make_pixel_env(lbwrap.PIXEL_HAZARD_ID, size=32,
                                    max_episode_steps=max_episode_steps)
        env.reset(seed=seed)
        return env
    return make


def make_agent(algo=SAC, buffer_size: int = 1000, **safety_overrides):
    venv = DummyVecEnv([hazard_factory(i, n) for i, n in enumerate(EPISODE_ENV_STEPS)])
    safety = make_tiny_safety(venv, **safety_overrides)
    venv = VecLatentObservation(venv, safety)
    agent = algo("MlpPolicy", venv, learning_starts=30, buffer_size=buffer_size, seed=0)
    return agent, safety


def raw_stream(replay: SequenceReplay, env_id: int) -> dict[str, np.ndarray]:
    """Stored steps of one stream, oldest first, read from the arrays (not via replay.get)."""
    n = replay._size[env_id]
    idx = (replay._oldest()[env_id] + np.arange(n)) % replay.env_capacity
    return {k: v[env_id, idx] for k, v in replay._data.items()}


@torch.no_grad()
def fresh_features(safety: LatentSafetyModel, data: dict[str, np.ndarray]) -> np.ndarray:
    """(T, F) posterior-mean features of a whole stream in one observe call, from the initial state."""
    wm = safety.world_model
    wm.eval()
    posts, _ = wm.observe(data["obs"][None], data["action"][None], data["is_first"][None],
                          sample=False)
    return wm.features(posts)[0].numpy()


def transitions(is_first: np.ndarray) -> np.ndarray:
    """Stream indices k of the transitions (k -> k+1), in the order SB3 stored them."""
    k = np.arange(len(is_first) - 1)
    return k[~is_first[1:]]


@pytest.mark.parametrize("batch_frames", [1024, 5])  # 5: many time chunks, state carried over
def test_refresh_matches_fresh_filtering_on_every_slot(batch_frames):
    agent, safety = make_agent()
    cotrain = CoTrainCallback(safety, train_every=40, updates_per_train=5, learning_starts=40)
    # only the explicit refresh below
    refresher = LatentRefresher(safety, refresh_every=10**9, batch_frames=batch_frames)
    agent.learn(200, callback=CallbackList([cotrain, refresher]))  # 100 steps per env
    assert safety.wm_trainer.num_updates >= 20
    rb = agent.replay_buffer
    n = rb.pos
    assert n == 100 and not rb.full
    before_obs, before_next = rb.observations[:n].copy(), rb.next_observations[:n].copy()
    checked_reset = checked_terminal = 0
    expected: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for env_id in range(2):
        data = raw_stream(safety.replay, env_id)
        feats = fresh_features(safety, data)
        k = transitions(data["is_first"])
        assert len(k) == n  # one transition per agent step, nothing evicted
        expected[env_id] = (feats[k], feats[k + 1])
        # SB3's done flags sit exactly where the frame after next_obs starts an episode
        ends = data["is_first"][k[:-1] + 2]
        np.testing.assert_array_equal(rb.dones[: n - 1, env_id].astype(bool), ends)
        # stored latents were computed by older weights: they differ from fresh filtering
        assert np.abs(before_obs[:, env_id] - feats[k]).max() > 1e-3
        assert np.abs(before_next[:, env_id] - feats[k + 1]).max() > 1e-3
    metrics = refresher.refresh()
    assert metrics["slots_refreshed"] == 2 * n and metrics["slots_stale"] == 0
    assert metrics["mean_abs_change"] > 1e-4 and metrics["seconds"] > 0
    for env_id in range(2):
        exp_obs, exp_next = expected[env_id]
        np.testing.assert_allclose(rb.observations[:n, env_id], exp_obs, atol=1e-5)
        np.testing.assert_allclose(rb.next_observations[:n, env_id], exp_next, atol=1e-5)
        data = raw_stream(safety.replay, env_id)
        k = transitions(data["is_first"])
        dones = np.flatnonzero(rb.dones[:n, env_id])
        assert dones.size >= 4
        for slot in dones[:-1]:
            # terminal next_obs: the episode's last frame; the next slot starts from the reset frame
            assert not data["is_first"][k[slot] + 1] and data["is_first"][k[slot + 1]]
            np.testing.assert_allclose(rb.next_observations[slot, env_id], exp_next[slot], atol=1e-5)
            np.testing.assert_allclose(rb.observations[slot + 1, env_id], exp_obs[slot + 1],
                                       atol=1e-5)
            checked_terminal += 1
            checked_reset += 1
        # a slot in mid-episode: obs is the previous slot's next_obs
        np.testing.assert_array_equal(rb.observations[5, env_id], rb.next_observations[4, env_id])
    assert checked_terminal >= 8 and checked_reset >= 8


def test_wrapped_sb3_buffer_filters_from_episode_starts():
    """SB3's buffer (30 slots per env) is smaller than the pixel replay: its oldest slots start
    mid-episode, and their latents must still be filtered from the episode's first frame."""
    agent, safety = make_agent(buffer_size=60)
    cotrain = CoTrainCallback(safety, train_every=40, updates_per_train=5, learning_starts=40)
    refresher = LatentRefresher(safety, refresh_every=10**9)
    agent.learn(200, callback=CallbackList([cotrain, refresher]))
    rb = agent.replay_buffer
    assert rb.full and rb.buffer_size == 30
    metrics = refresher.refresh()
    assert metrics["slots_refreshed"] == 60 and metrics["truncated_episodes"] == 0
    order = (rb.pos + np.arange(rb.buffer_size)) % rb.buffer_size  # slots, oldest first
    for env_id in range(2):
        data = raw_stream(safety.replay, env_id)
        feats = fresh_features(safety, data)
        k = transitions(data["is_first"])[-rb.buffer_size:]
        assert not data["is_first"][k[0]]  # the oldest slot is mid-episode
        np.testing.assert_allclose(rb.observations[order, env_id], feats[k], atol=1e-5)
        np.testing.assert_allclose(rb.next_observations[order, env_id], feats[k + 1], atol=1e-5)


def test_refresh_with_unchanged_model_changes_nothing():
    """Checks the slot -> frame mapping: without world-model updates, refiltering is the identity."""
    agent, safety = make_agent()
    refresher = LatentRefresher(safety, refresh_every=10**9)
    agent.learn(120, callback=CallbackList([CoTrainCallback(safety, learning_starts=10**9),
                                            refresher]))
    before = agent.replay_buffer.observations.copy(), agent.replay_buffer.next_observations.copy()
    metrics = refresher.refresh()
    assert metrics["slots_refreshed"] == 120 and metrics["mean_abs_change"] < 1e-6
    np.testing.assert_allclose(agent.replay_buffer.observations, before[0], atol=1e-5)
    np.testing.assert_allclose(agent.replay_buffer.next_observations, before[1], atol=1e-5)


def test_evicted_slots_are_left_untouched_and_counted():
    # 60 pixel steps per stream, 100+ written: the oldest slots' frames are overwritten
    agent, safety = make_agent(replay_capacity=120)
    cotrain = CoTrainCallback(safety, train_every=40, updates_per_train=5, learning_starts=40)
    refresher = LatentRefresher(safety, refresh_every=10**9)
    agent.learn(200, callback=CallbackList([cotrain, refresher]))
    rb = agent.replay_buffer
    n = rb.pos
    before_obs, before_next = rb.observations[:n].copy(), rb.next_observations[:n].copy()
    metrics = refresher.refresh()
    stale_total = 0
    for env_id in range(2):
        data = raw_stream(safety.replay, env_id)
        assert len(data["obs"]) == 60
        first, stop = safety.replay.stored_range(env_id)
        assert stop - first == 60
        # the stored frames hold the newest len(k) transitions; the older slots' obs are evicted
        k = transitions(data["is_first"])
        fresh = n - len(k)
        assert fresh > 0
        feats = fresh_features(safety, data)  # from the initial state at the oldest stored step
        np.testing.assert_allclose(rb.observations[fresh:n, env_id], feats[k], atol=1e-5)
        np.testing.assert_allclose(rb.next_observations[fresh:n, env_id], feats[k + 1], atol=1e-5)
        np.testing.assert_array_equal(rb.observations[:fresh, env_id], before_obs[:fresh, env_id])
        np.testing.assert_array_equal(rb.next_observations[:fresh, env_id],
                                      before_next[:fresh, env_id])
        assert np.abs(rb.observations[fresh:n, env_id] - before_obs[fresh:n, env_id]).max() > 1e-4
        stale_total += fresh
    assert metrics["slots_stale"] == stale_total
    assert metrics["slots_refreshed"] == 2 * n - stale_total
    assert metrics["truncated_episodes"] == sum(
        not raw_stream(safety.replay, e)["is_first"][0] for e in range(2))


def test_scheduled_refreshes_follow_world_model_updates_with_td3():
    agent, safety = make_agent(TD3)
    recorder = Recorder()
    agent.set_logger(Logger(folder=None, output_formats=[recorder]))
    cotrain = CoTrainCallback(safety, train_every=40, updates_per_train=2, learning_starts=40)
    refresher = LatentRefresher(safety, refresh_every=2)  # due every step, runs after each update
    agent.learn(200, callback=CallbackList([cotrain, refresher]))
    training_calls = safety.wm_trainer.num_updates // 2
    assert training_calls >= 4 and refresher.refresh_count == training_calls
    assert refresher.last_metrics["slots_refreshed"] > 0 and refresher.seconds_total > 0
    logged = [r for r in recorder.records if "refresh/count" in r]
    assert logged and logged[-1]["refresh/count"] >= 1
    assert {"refresh/slots_refreshed", "refresh/slots_stale", "refresh/mean_abs_change",
            "refresh/seconds"} <= set(logged[-1])


def test_refresher_before_cotrain_is_refused():
    agent, safety = make_agent()
    callbacks = CallbackList([LatentRefresher(safety), CoTrainCallback(safety)])
    with pytest.raises(RuntimeError, match="after the CoTrainCallback"):
        agent.learn(10, callback=callbacks)


def test_refresher_errors():
    venv = DummyVecEnv([hazard_factory(0, 40)])
    safety = make_tiny_safety(venv)
    latent = VecLatentObservation(venv, safety)
    agent = SAC("MlpPolicy", latent, learning_starts=10, buffer_size=100, seed=0,
                optimize_memory_usage=True,
                replay_buffer_kwargs={"handle_timeout_termination": False})
    with pytest.raises(ValueError, match="optimize_memory_usage"):
        agent.learn(4, callback=CallbackList([CoTrainCallback(safety), LatentRefresher(safety)]))
    other = make_tiny_safety(venv)
    agent = SAC("MlpPolicy", latent, learning_starts=10, buffer_size=100, seed=0)
    with pytest.raises(ValueError, match="share one"):
        agent.learn(4, callback=CallbackList([CoTrainCallback(safety), LatentRefresher(other)]))
    with pytest.raises(ValueError, match="refresh_every"):
        LatentRefresher(safety, refresh_every=0)
    with pytest.raises(TypeError, match="LatentSafetyModel"):
        LatentRefresher(object())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="training"):
        LatentRefresher(safety).refresh()


def test_ppo_is_a_documented_no_op():
    venv = DummyVecEnv([hazard_factory(0, 40)])
    safety = make_tiny_safety(venv)
    agent = PPO("MlpPolicy", VecLatentObservation(venv, safety), n_steps=16, batch_size=16, seed=0)
    refresher = LatentRefresher(safety, refresh_every=1)
    cotrain = CoTrainCallback(safety, train_every=8, updates_per_train=1, learning_starts=8)
    with pytest.warns(UserWarning, match="does nothing with PPO"):
        agent.learn(32, callback=CallbackList([cotrain, refresher]))
    assert safety.wm_trainer.num_updates > 0
    assert not refresher.active and refresher.refresh_count == 0
    with pytest.raises(RuntimeError):
        refresher.refresh()


def test_recipe_adds_refresher_after_cotrain():
    fns = [hazard_factory(0, 40)]
    tiny = {"world_model_overrides": TINY_WORLD_MODEL, "replay_capacity": 1000}
    sac = {"buffer_size": 1000}
    recipe = AgentRecipe(mode="none", experimental=RecipeExperimental(refresh_every=500),
                         sac_kwargs=sac)
    built = build_safe_agent(fns, recipe, device="cpu", safety_kwargs=tiny)
    assert [type(c) for c in built.callbacks] == [CoTrainCallback, LatentRefresher]
    assert built.callbacks[1].refresh_every == 500 and built.callbacks[1].safety is built.safety
    built = build_safe_agent(fns, AgentRecipe(mode="lagrangian", sac_kwargs=sac), device="cpu",
                             safety_kwargs=tiny)
    assert not any(isinstance(c, LatentRefresher) for c in built.callbacks)
    with pytest.raises(ValueError, match="refresh_every"):
        AgentRecipe(experimental=RecipeExperimental(refresh_every=-1))
    assert lbwrap.LatentRefresher is LatentRefresher


# ------------------------------------------------------------------ SequenceReplay step numbers
def test_replay_step_numbers_survive_wrapping_and_saving(tmp_path):
    obs_shape = (3, 4, 4)
    buf = SequenceReplay(2 * 5, obs_shape, 1, num_envs=2)
    counters = [0, 0]

    def add(ids: list[int]) -> None:
        n = len(ids)
        steps = np.array([counters[i] for i in ids])
        buf.add(np.broadcast_to(steps[:, None, None, None], (n, *obs_shape)).astype(np.uint8),
                np.array(ids, np.float32)[:, None], steps.astype(np.float32), np.zeros(n),
                steps % 3 == 0, np.zeros(n, bool), env_ids=np.array(ids))
        for i in ids:
            counters[i] += 1

    for step in range(9):
        add([0, 1] if step % 3 else [1])
    assert buf.steps_written.tolist() == [6, 9] and counters == [6, 9]
    assert buf.stored_range(0) == (1, 6) and buf.stored_range(1) == (4, 9)
    s1 = buf.stream(1)
    assert s1["reward"].tolist() == [4, 5, 6, 7, 8] and s1["obs"][:, 0, 0, 0].tolist() == [4, 5, 6, 7, 8]
    assert s1["is_first"].tolist() == [False, False, True, False, False]
    got = buf.get(np.array([[0], [1]]), np.array([[5, 4]]), keys=("reward", "action"))
    assert set(got) == {"reward", "action"}
    assert got["reward"].tolist() == [[5, 4], [5, 4]]
    assert got["action"][:, :, 0].tolist() == [[0, 0], [1, 1]]
    with pytest.raises(IndexError):
        buf.get(1, 3)  # overwritten
    with pytest.raises(IndexError):
        buf.get(0, 6)  # not written yet
    with pytest.raises(IndexError):
        buf.stored_range(2)
    written = buf.steps_written
    written[0] = 99  # a copy
    assert buf.steps_written[0] == 6
    buf.save(tmp_path / "r.npz")
    loaded = SequenceReplay.load(tmp_path / "r.npz")
    assert loaded.steps_written.tolist() == [6, 9]
    np.testing.assert_array_equal(loaded.stream(0)["obs"], buf.stream(0)["obs"])
    old_state = {k: v for k, v in buf.state_dict().items() if k != "written"}  # older files
    other = SequenceReplay(2 * 5, obs_shape, 1, num_envs=2)
    other.load_state_dict(old_state)
    assert other.steps_written.tolist() == [5, 5]
    np.testing.assert_array_equal(other.stream(1)["reward"], buf.stream(1)["reward"])
