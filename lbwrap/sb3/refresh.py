"""``LatentRefresher``: re-filter the latents stored in SB3's replay buffer with the current world model.

The agent of an off-policy algorithm (SAC, TD3, :class:`~lbwrap.sb3.policy.BarrierSAC`) sees the
world model's filtered latent state (:class:`~lbwrap.sb3.vec_wrappers.VecLatentObservation`), and
SB3's replay buffer stores those latents. The world model keeps training
(:class:`~lbwrap.sb3.callback.CoTrainCallback`), so a latent stored thousands of steps ago was
computed by an older encoder/GRU than the one producing today's latents: *stale latents*. The
critic and actor then train on inputs from a mixture of representations.

:class:`LatentRefresher` keeps, for every SB3 slot, the pixel-replay steps its ``observations`` and
``next_observations`` were computed from, and every ``refresh_every`` env steps (once the world
model has changed) re-runs the posterior filter (means, as the acting tracker does) over the pixel
replay and overwrites the latents of all slots whose frames are still stored.

How slots are mapped to frames. SB3's off-policy loop calls ``callback.on_step()`` *before*
``_store_transition``, so in ``_on_step`` the slot about to be written for env ``i`` is
``replay_buffer.pos`` (column ``i``). :class:`CoTrainCallback` has, in the same step, written to
the pixel stream of env ``i`` the episode's first frame (when this step starts an episode) and
then this step's frame (the terminal frame when the episode ended). Hence, when the refresher runs
*after* the CoTrainCallback, the stream's last two steps are exactly the slot's ``obs`` (step
number ``steps_written - 2``: the previous step's frame or the episode's first frame) and its
``next_obs`` (``steps_written - 1``: the new frame or the terminal frame, which is what SB3 stores
as ``next_obs`` of a done step; the next episode's reset frame becomes the next slot's ``obs``).
The refresher checks this on every step (each stream must have grown by one step, plus one on an
episode's first step, and the newest stored frame must be ``info["pixels"]``) and raises a clear
error otherwise, e.g. when it was placed before the CoTrainCallback in the ``CallbackList``.
A slot's mapping is committed on the next step, once SB3 really wrote the slot.

Eviction. The pixel replay is a ring (``replay_capacity // num_envs`` steps per stream); a slot
whose ``obs`` frame was overwritten keeps its old latents and is counted in
``refresh/slots_stale``. For full coverage make SB3's ``buffer_size`` at most the pixel replay's
capacity. Slots written while no refresher tracked them (e.g. a buffer loaded from disk) are left
alone too (``refresh/slots_untracked``).

Approximation at a stream's oldest stored step. Filtering starts at each stream's oldest stored
step that a tracked slot needs (at the start of its episode). When the episode's beginning has been
overwritten, filtering starts mid-episode from the world model's initial state with the stored
action, as for the world model's own training windows; the first few latents of such a truncated
episode are therefore less informed than the acting tracker's were (``refresh/truncated_episodes``
counts them; at most one per stream).

The acting tracker (``VecLatentObservation.tracker``) is *not* re-filtered: its state covers only
the current episode, it is advanced with whatever weights are current at every step (the world
model changes every ``train_every`` steps, far more often than a refresh), and replacing it would
also require rewriting SB3's ``new_obs`` / ``_last_obs`` in place. The slots of the current episode
are refreshed at the next refresh like all others; the slot written in the step of a refresh gets
its latents from the tracker and is refreshed next time.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from lbwrap.latent_state import LatentState
from lbwrap.safety_model import LatentSafetyModel
from lbwrap.sb3.vec_wrappers import find_vec_latent

__all__ = ["LatentRefresher"]


class LatentRefresher(BaseCallback):
    """Re-filter the latent observations in an off-policy agent's replay buffer on a schedule.

    Experimental (:mod:`lbwrap.experimental`): refreshing was measured to change neither
    violations nor return (documentation page *Experimental options*, ``docs/experimental.md``).
    ``AgentRecipe(experimental=RecipeExperimental(refresh_every=...))`` adds one to a recipe.

    Use it after the :class:`~lbwrap.sb3.callback.CoTrainCallback` of the same safety model::

        callback = CallbackList([CoTrainCallback(safety), LatentRefresher(safety, refresh_every=1000)])

    With an on-policy algorithm (PPO, A2C) it warns once and does nothing: their rollout buffers
    are discarded after every update, so nothing stale is kept.

    Args:
        safety: the safety model whose world model produced the latents (the one shared with
            ``VecLatentObservation`` and ``CoTrainCallback``).
        refresh_every: env steps (all envs together, i.e. SB3 timesteps, as ``train_every`` of
            :class:`~lbwrap.sb3.callback.CoTrainCallback`) between refreshes; a refresh is skipped
            (and retried every step) until the world model has been updated since the last one.
        batch_frames: frames per forward pass (memory bound: episodes x time-chunk length).
        verbose: 0 silent, 1 logs each refresh via the SB3 logger.

    Logged (SB3 logger, last refresh): ``refresh/slots_refreshed``, ``refresh/slots_stale``
    (frames evicted from the pixel replay), ``refresh/slots_untracked``,
    ``refresh/mean_abs_change`` (mean |new - old| over the rewritten latent entries),
    ``refresh/seconds``, ``refresh/frames_filtered``, ``refresh/truncated_episodes``, and the
    running totals ``refresh/count``, ``refresh/seconds_total``.
    """

    def __init__(
        self,
        safety: LatentSafetyModel,
        refresh_every: int = 1000,
        batch_frames: int = 1024,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if not isinstance(safety, LatentSafetyModel):
            raise TypeError(f"safety must be a LatentSafetyModel, got {type(safety).__name__}")
        for name, value in (("refresh_every", refresh_every), ("batch_frames", batch_frames)):
            if isinstance(value, bool) or int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.safety = safety
        self.refresh_every = int(refresh_every)
        self.batch_frames = int(batch_frames)
        self.active = False
        """False until training starts with an off-policy agent (and for on-policy agents)."""
        self.refresh_count = 0
        self.seconds_total = 0.0
        self.last_metrics: dict[str, float] = {}
        self._obs_step: np.ndarray = np.zeros((0, 0), np.int64)  # (buffer_size, n_envs), -1 unknown
        self._buffer: ReplayBuffer | None = None
        self._buffer_pos_seen: tuple[int, bool] | None = None
        self._pending: tuple[int, np.ndarray] | None = None
        self._last_written: np.ndarray = np.zeros(0, np.int64)
        self._since = 0
        self._updates_at_refresh = -1

    # ------------------------------------------------------------------ SB3 hooks
    def _on_training_start(self) -> None:
        rb = getattr(self.model, "replay_buffer", None)
        if not isinstance(self.model, OffPolicyAlgorithm) or rb is None:
            warnings.warn(
                f"LatentRefresher does nothing with {type(self.model).__name__}: it refreshes the "
                "replay buffer of off-policy algorithms (SAC, TD3, BarrierSAC); on-policy rollout "
                "buffers are discarded after every update, so they hold no stale latents.",
                UserWarning, stacklevel=2,
            )
            self.active = False
            return
        rb = self._check_buffer(rb)
        latent = find_vec_latent(self.training_env)
        if latent.safety is not self.safety:
            raise ValueError("LatentRefresher and the env's VecLatentObservation must share one "
                             "LatentSafetyModel.")
        if rb.n_envs != self.safety.replay.num_envs:
            raise ValueError(f"SB3's replay buffer has {rb.n_envs} env columns, the safety "
                             f"model's pixel replay {self.safety.replay.num_envs} streams.")
        shape = (rb.buffer_size, rb.n_envs)
        same = (self._buffer is rb and self._obs_step.shape == shape
                and self._buffer_pos_seen == (rb.pos, bool(rb.full)))
        if not same:  # a new buffer, or slots were written while we were not watching
            self._obs_step = np.full(shape, -1, np.int64)
        self._buffer = rb
        self._pending = None
        self._last_written = self.safety.replay.steps_written
        self.active = True

    def _on_step(self) -> bool:
        if not self.active:
            return True
        rb = self._buffer
        assert rb is not None
        self._commit_pending(rb)
        written = self._check_alignment()
        self._since += len(written)
        updates = self.safety.wm_trainer.num_updates
        if self._since >= self.refresh_every and updates > 0 and updates != self._updates_at_refresh:
            self.refresh()
            self._since = 0
        # SB3 writes this step's transition to slot rb.pos right after the callbacks return
        self._pending = (int(rb.pos), written - 2)
        self._log()
        return True

    def _on_training_end(self) -> None:
        if self.active and self._buffer is not None:
            self._commit_pending(self._buffer)

    # ------------------------------------------------------------------ the refresh
    @torch.no_grad()
    def refresh(self) -> dict[str, float]:
        """Re-filter now and overwrite the latents of every tracked slot whose frames are stored.

        Returns this refresh's metrics (the per-refresh ``refresh/*`` keys of the class docstring,
        without the prefix); they are also logged on every following step. Callable by hand after
        ``learn()`` returns (the last step's slot is included).
        """
        if not self.active or self._buffer is None:
            raise RuntimeError("LatentRefresher.refresh() needs an off-policy agent's training to "
                               "have started (model.learn(..., callback=...)).")
        start_time = time.perf_counter()
        rb = self._buffer
        replay = self.safety.replay
        wm = self.safety.world_model
        n_envs = replay.num_envs
        filled = rb.buffer_size if rb.full else int(rb.pos)
        obs_step = self._obs_step[:filled]
        written = replay.steps_written
        first = np.array([replay.stored_range(e)[0] for e in range(n_envs)], np.int64)
        tracked = obs_step >= 0
        ok = tracked & (obs_step >= first[None, :]) & (obs_step + 1 < written[None, :])

        # per stream: the step range [lo, hi] that refreshable slots need, and step -> slot maps
        lo = np.zeros(n_envs, np.int64)
        hi = np.full(n_envs, -1, np.int64)
        offset = np.zeros(n_envs, np.int64)
        obs_slot: list[np.ndarray] = []
        next_slot: list[np.ndarray] = []
        total = 0
        for e in range(n_envs):
            slots = np.flatnonzero(ok[:, e])
            offset[e] = total
            if slots.size == 0:
                continue
            steps = obs_step[slots, e]
            lo[e], hi[e] = steps.min(), steps.max() + 1
            span = int(hi[e] - lo[e] + 1)
            o = np.full(span, -1, np.int64)
            nx = np.full(span, -1, np.int64)
            o[steps - lo[e]] = slots
            nx[steps + 1 - lo[e]] = slots
            obs_slot.append(o)
            next_slot.append(nx)
            total += span
        obs_map = np.concatenate(obs_slot) if obs_slot else np.zeros(0, np.int64)
        next_map = np.concatenate(next_slot) if next_slot else np.zeros(0, np.int64)

        seg_env, seg_start, seg_len, truncated = self._segments(lo, hi, first)
        abs_change = 0.0
        entries = 0
        frames = 0
        if seg_len.size:
            was_training = wm.training
            wm.eval()
            try:
                for env_ids, steps, feats in self._filter(seg_env, seg_start, seg_len):
                    frames += steps.size
                    keep = (steps >= lo[env_ids]) & (steps <= hi[env_ids])
                    env_ids, steps, feats = env_ids[keep], steps[keep], feats[keep]
                    index = offset[env_ids] + steps - lo[env_ids]
                    for array, mapping in ((rb.observations, obs_map), (rb.next_observations, next_map)):
                        slot = mapping[index]
                        hit = slot >= 0
                        rows, cols, new = slot[hit], env_ids[hit], feats[hit]
                        abs_change += float(np.abs(new - array[rows, cols]).sum())
                        entries += new.size
                        array[rows, cols] = new
            finally:
                wm.train(was_training)
        seconds = time.perf_counter() - start_time
        self.refresh_count += 1
        self.seconds_total += seconds
        self._updates_at_refresh = self.safety.wm_trainer.num_updates
        self.last_metrics = {
            "slots_refreshed": float(ok.sum()),
            "slots_stale": float((tracked & ~ok).sum()),
            "slots_untracked": float((~tracked).sum()),
            "mean_abs_change": abs_change / entries if entries else 0.0,
            "seconds": seconds,
            "frames_filtered": float(frames),
            "truncated_episodes": float(truncated),
        }
        if self.verbose:
            self.logger.info(
                f"LatentRefresher: {int(ok.sum())} slots refreshed in {seconds:.2f} s")
        return dict(self.last_metrics)

    def _segments(
        self, lo: np.ndarray, hi: np.ndarray, first: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Episodes (cut to the needed range) to filter, longest first: env, first step, length."""
        replay = self.safety.replay
        envs: list[int] = []
        starts: list[int] = []
        ends: list[int] = []
        truncated = 0
        for e in range(replay.num_envs):
            if hi[e] < lo[e]:
                continue
            steps = np.arange(first[e], hi[e] + 1)
            is_first = replay.get(e, steps, keys=("is_first",))["is_first"]
            begins = steps[is_first]
            # filtering of lo's episode starts at its first step, or at the oldest stored step
            before = begins[begins <= lo[e]]
            seg_first = int(before[-1]) if before.size else int(first[e])
            truncated += int(not before.size)
            cut = np.concatenate([[seg_first], begins[begins > seg_first], [hi[e] + 1]])
            for a, b in itertools.pairwise(cut):
                envs.append(e)
                starts.append(int(a))
                ends.append(int(b))
        lengths = np.array(ends, np.int64) - np.array(starts, np.int64)
        order = np.argsort(-lengths, kind="stable")
        return (np.array(envs, np.int64)[order], np.array(starts, np.int64)[order],
                lengths[order], truncated)

    def _filter(
        self, seg_env: np.ndarray, seg_start: np.ndarray, seg_len: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(env_ids, steps, features)`` (flat, valid entries only) chunk by chunk.

        Episodes are the batch rows (sorted longest first, so the rows still running are always a
        prefix), time is cut into chunks and the posterior state is carried between them.
        """
        replay = self.safety.replay
        wm = self.safety.world_model
        state: LatentState | None = None
        t = 0
        longest = int(seg_len[0])
        while t < longest:
            active = int((seg_len > t).sum())
            length = max(1, min(self.batch_frames // active, longest - t))
            offs = t + np.arange(length)
            lens = seg_len[:active, None]
            valid = offs[None, :] < lens
            steps = seg_start[:active, None] + np.minimum(offs[None, :], lens - 1)  # pad: repeat last
            env_ids = np.broadcast_to(seg_env[:active, None], steps.shape)
            data = replay.get(env_ids, steps, keys=("obs", "action", "is_first"))
            embed = wm.embed(data["obs"])
            prev = None if state is None else state[:active]
            posts, _ = wm.observe_embedded(embed, data["action"], data["is_first"] & valid, prev,
                                           sample=False)
            state = posts[:, -1]
            feats = wm.features(posts).float().cpu().numpy()
            yield env_ids[valid], steps[valid], feats[valid]
            t += length

    # ------------------------------------------------------------------ helpers
    def _check_buffer(self, rb: Any) -> ReplayBuffer:
        if not isinstance(rb, ReplayBuffer) or not isinstance(getattr(rb, "observations", None), np.ndarray):
            raise TypeError(f"LatentRefresher supports SB3's ReplayBuffer with array observations, "
                            f"got {type(rb).__name__}.")
        if rb.optimize_memory_usage:
            raise ValueError(
                "LatentRefresher does not support optimize_memory_usage=True (next observations "
                "share the observation array there, and terminal ones are lost): build the agent "
                "with optimize_memory_usage=False (SB3's default)."
            )
        dim = self.safety.world_model.feature_dim
        if tuple(rb.observations.shape[2:]) != (dim,):
            raise ValueError(
                f"SB3's replay buffer stores observations of shape {tuple(rb.observations.shape[2:])}"
                f", the world model's features have ({dim},): the agent must observe "
                "VecLatentObservation's latents unchanged (no frame stacking or other observation "
                "wrappers on top; VecNormalize is fine, SB3 stores unnormalised observations)."
            )
        return rb

    def _check_alignment(self) -> np.ndarray:
        """Steps written per stream; raises unless CoTrainCallback wrote exactly this step's frames."""
        replay = self.safety.replay
        written = replay.steps_written
        infos: list[dict[str, Any]] = self.locals["infos"]
        starts = np.array(["episode_start_pixels" in info for info in infos], np.int64)
        expected = self._last_written + 1 + starts
        order_hint = (
            "LatentRefresher must come after the CoTrainCallback of the same safety model in the "
            "CallbackList (it maps each SB3 slot to the frames CoTrainCallback wrote in this step), "
            "and nothing else may write to safety.replay during training."
        )
        if written.shape != expected.shape or not np.array_equal(written, expected):
            raise RuntimeError(f"{order_hint} Pixel streams have {written.tolist()} steps, "
                               f"expected {expected.tolist()}.")
        newest = replay.get(np.arange(len(written)), written - 1, keys=("obs",))["obs"]
        for i, info in enumerate(infos):
            pixels = info.get("pixels")
            if pixels is not None and not np.array_equal(newest[i], np.asarray(pixels)):
                raise RuntimeError(f"{order_hint} The newest frame of stream {i} is not this step's "
                                   "frame.")
        self._last_written = written
        return written

    def _commit_pending(self, rb: ReplayBuffer) -> None:
        """Record last step's slot mapping once SB3 has written that slot."""
        if self._pending is not None:
            slot, steps = self._pending
            if int(rb.pos) == (slot + 1) % rb.buffer_size:
                self._obs_step[slot] = steps
            self._pending = None
        self._buffer_pos_seen = (int(rb.pos), bool(rb.full))

    def _log(self) -> None:
        record = self.logger.record
        for key, value in self.last_metrics.items():
            record(f"refresh/{key}", value)
        record("refresh/count", self.refresh_count)
        record("refresh/seconds_total", self.seconds_total)
