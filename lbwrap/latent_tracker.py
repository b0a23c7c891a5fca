"""Per-env latent filtering for acting: the batched core behind the latent-observation wrappers.

Pure torch + numpy. One :class:`LatentTracker` follows N env streams with the world model's
posterior (``observe_step``): each call takes the frames the envs just returned, the actions
that were *executed* to get there (after any shield), and which streams start a new episode.

Frames must be uint8 RGB images (0-255), channel-first ``(M, 3, S, S)`` at the world model's
size. Anything else is refused with a ``ValueError`` that says how to convert, never cast: float
images in [0, 1] would silently become black frames (the policy of every lbwrap wrapper that
feeds the world model: :class:`~lbwrap.wrappers.LatentObservation`,
:class:`~lbwrap.sb3.VecLatentObservation` and this tracker). NaN/inf (in float frames or in the
executed actions) are refused the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from lbwrap.latent_state import LatentState
from lbwrap.world_model import WorldModel

__all__ = ["LatentTracker", "check_frames"]


def check_frames(frames: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``frames`` as a uint8 array of ``shape``, or a ``ValueError`` that names the fix.

    Refuses (never casts) non-uint8 frames: float images in [0, 1], float or int images in
    0-255, NaN/inf, and frames of another shape (e.g. channel-last or another size).
    """
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        kind = f"{arr.dtype} frames"
        if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
            raise ValueError(
                f"lbwrap's world model got {kind} containing NaN or inf: the env's camera "
                "produced invalid pixels. Fix the env (or replace them, e.g. np.nan_to_num) and "
                "give uint8 RGB images (0-255).")
        if arr.dtype.kind == "f" and arr.size and 0.0 <= float(arr.min()) <= float(arr.max()) <= 1.0:
            fix = "(frame * 255).round().astype(np.uint8)"
            kind += " with values in [0, 1]"
        else:
            fix = "np.clip(frame, 0, 255).round().astype(np.uint8)"
        raise ValueError(
            f"lbwrap's world model reads uint8 RGB images (0-255), got {kind} (the observation "
            f"space may say uint8, the data does not). Convert them before lbwrap sees them: "
            f"{fix} (e.g. in a gymnasium.ObservationWrapper); lbwrap never casts them, which "
            "would turn [0, 1] floats into black frames.")
    if arr.shape != tuple(shape):
        raise ValueError(
            f"lbwrap's world model expects frames of shape {tuple(shape)} (N, C, H, W), got "
            f"{arr.shape}: pass channel-first images of the size the model was built for "
            "(make_pixel_env / as_pixel_env give them).")
    return arr


class LatentTracker:
    """Filter state of ``num_envs`` streams; features are ``cat(deter, stoch)`` as float32 numpy.

    Args:
        world_model: the (live, training) world model.
        num_envs: number of streams.
        sample: draw the posterior latent (True) or use its mean (False, default: steadier
            inputs for the agent and the shield).
    """

    def __init__(self, world_model: WorldModel, num_envs: int, sample: bool = False) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.world_model = world_model
        self.num_envs = int(num_envs)
        self.sample = bool(sample)
        self.state: LatentState = world_model.initial_state(self.num_envs)
        self.embed: torch.Tensor = self._zero_embed()
        """(N, E) encoder embeddings of the latest frames (zeros before the first): what an
        action-conditioned shield (``FilterConfig(predictor="action_barrier")``) reads."""

    def _zero_embed(self) -> torch.Tensor:
        return torch.zeros(self.num_envs, self.world_model.embed_dim,
                           device=self.world_model.device)

    @property
    def feature_dim(self) -> int:
        return int(self.world_model.feature_dim)

    @torch.no_grad()
    def observe(
        self,
        frames: np.ndarray,
        prev_actions: np.ndarray | None,
        is_first: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Advance streams by one frame and return the features of all streams (N, feature_dim).

        ``frames``: uint8 (M, C, H, W); ``prev_actions``: (M, A) executed actions that led to the
        frames (ignored where ``is_first``; ``None`` means zeros); ``is_first``: (M,). ``rows``:
        which of the N streams these M frames belong to (default: all N, in order).
        """
        wm = self.world_model
        device = wm.device
        idx = None if rows is None else torch.as_tensor(np.asarray(rows, np.int64), device=device)
        m = self.num_envs if idx is None else int(idx.numel())
        if m == 0:
            return self.features()
        cfg = wm.config
        dtype = next(wm.parameters()).dtype
        if self.state.deter.dtype != dtype or self.embed.dtype != dtype:
            raise TypeError(
                f"the tracker's state is {self.state.deter.dtype} (embed {self.embed.dtype}) but "
                f"the world model computes in {dtype}: set latents of the model's dtype, e.g. "
                f"state.map(lambda t: t.to({dtype})).")
        frames = check_frames(frames, (m, cfg.image_channels, cfg.image_size, cfg.image_size))
        is_first_t = torch.as_tensor(np.asarray(is_first, dtype=bool).reshape(-1), device=device)
        if prev_actions is None:
            prev = torch.zeros(m, cfg.action_dim, device=device)
        else:
            actions = np.asarray(prev_actions, np.float32)
            if actions.shape != (m, cfg.action_dim):
                raise ValueError(f"prev_actions must have shape {(m, cfg.action_dim)} (one executed "
                                 f"action per frame), got {actions.shape}")
            if not np.isfinite(actions).all():
                raise ValueError("prev_actions contain NaN or inf: pass the finite actions the "
                                 "envs executed")
            prev = torch.as_tensor(actions, device=device)
        obs = torch.as_tensor(np.ascontiguousarray(frames), device=device)
        state = self.state.to(device)
        was_training = wm.training
        wm.eval()
        try:
            sub = state if idx is None else state[idx]
            embed = wm.embed(obs)
            new = wm.observe_step(sub, prev, obs, is_first_t, sample=self.sample, embed=embed)
        finally:
            wm.train(was_training)
        if idx is None:
            self.state = new
            self.embed = embed
        else:
            def put(old: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
                old = old.clone()
                old[idx] = value
                return old

            self.state = LatentState(put(state.deter, new.deter), put(state.stoch, new.stoch),
                                     put(state.mean, new.mean), put(state.std, new.std))
            self.embed = put(self.embed.to(device), embed)
        return self.features()

    def features(self) -> np.ndarray:
        return self.world_model.features(self.state).float().cpu().numpy()

    def reset_all(self) -> None:
        self.state = self.world_model.initial_state(self.num_envs)
        self.embed = self._zero_embed()
