"""The RSSM latent world model (PlaNet/Dreamer style) with reward and cost heads.

Data convention (Dreamer): step ``t`` holds ``obs[t]``, the action that led into it
(``action[t]``, zeros at an episode's first step), the reward and cost received on arriving
at ``obs[t]``, and ``is_first[t]``. The posterior at ``t`` therefore summarises
``obs[<=t]`` and ``action[<=t]``, and the heads on it predict ``reward[t]`` and ``cost[t]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lbwrap.latent_state import LatentState, rollout
from lbwrap.world_model.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    atomic_torch_save,
    read_checkpoint,
)
from lbwrap.world_model.config import WorldModelConfig
from lbwrap.world_model.networks import MLP, ConvDecoder, ConvEncoder, activation

__all__ = ["WorldModel", "WorldModelOutput", "gaussian_kl"]

#: Config fields that only change the loss, not the function the weights compute (every option
#: of ``experimental``, :class:`~lbwrap.experimental.WorldModelExperimental`, is one).
LOSS_ONLY_FIELDS = ("free_nats", "image_weight", "reward_weight", "cost_weight", "kl_weight",
                    "experimental")
Policy = Callable[[LatentState], torch.Tensor]


@dataclass
class WorldModelOutput:
    """Result of :meth:`WorldModel.loss`.

    ``posts``/``priors`` are detached (B, T, ...) states and ``embed`` the detached encoder
    embeddings (B, T, E) of the frames: training a barrier or actor on them never sends gradients
    into the world model.
    """

    loss: torch.Tensor
    metrics: dict[str, float]
    posts: LatentState
    priors: LatentState
    embed: torch.Tensor | None = None


def gaussian_kl(
    mean_q: torch.Tensor, std_q: torch.Tensor, mean_p: torch.Tensor, std_p: torch.Tensor
) -> torch.Tensor:
    """Elementwise KL(N(mean_q, std_q^2) || N(mean_p, std_p^2)) (no reduction)."""
    var_ratio = (std_q / std_p).pow(2)
    t1 = ((mean_q - mean_p) / std_p).pow(2)
    return 0.5 * (var_ratio + t1 - 1.0 - var_ratio.log())


class WorldModel(nn.Module):
    """Recurrent state-space model: conv encoder, GRU + Gaussian latent, decoder, heads.

    Satisfies :class:`lbwrap.latent_state.LatentDynamics`. Every method follows the device
    of the module's parameters (inputs are moved there).
    """

    def __init__(self, config: WorldModelConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else WorldModelConfig()
        cfg.validate()
        self.config = cfg
        self.action_dim = cfg.action_dim
        self.encoder = ConvEncoder(cfg.image_channels, cfg.cnn_depth, cfg.image_size,
                                   cfg.cnn_activation)
        self.embed_dim = self.encoder.output_dim
        self.img_in = nn.Sequential(nn.Linear(cfg.stoch_dim + cfg.action_dim, cfg.hidden_dim),
                                    activation(cfg.activation))
        self.gru = nn.GRUCell(cfg.hidden_dim, cfg.deter_dim)
        self.prior_net = nn.Sequential(
            nn.Linear(cfg.deter_dim, cfg.hidden_dim), activation(cfg.activation),
            nn.Linear(cfg.hidden_dim, 2 * cfg.stoch_dim),
        )
        self.post_net = nn.Sequential(
            nn.Linear(cfg.deter_dim + self.embed_dim, cfg.hidden_dim), activation(cfg.activation),
            nn.Linear(cfg.hidden_dim, 2 * cfg.stoch_dim),
        )
        feat = cfg.feature_dim
        self.decoder = ConvDecoder(feat, cfg.image_channels, cfg.cnn_depth, cfg.image_size,
                                   cfg.cnn_activation)
        self.reward_head = MLP(feat, 1, cfg.head_hidden_dim, cfg.head_layers, cfg.activation)
        self.cost_head = MLP(feat, 1, cfg.head_hidden_dim, cfg.head_layers, cfg.activation)

    # ---------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    @property
    def feature_dim(self) -> int:
        """Size of :meth:`features` (``deter_dim + stoch_dim``; 230 at paper sizes)."""
        return self.config.feature_dim

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the observations the model takes."""
        c = self.config
        return (c.image_channels, c.image_size, c.image_size)

    def _tensor(self, x: torch.Tensor | np.ndarray, dtype: torch.dtype | None = None
                ) -> torch.Tensor:
        return torch.as_tensor(x, device=self.device, dtype=dtype)

    def preprocess(self, obs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 images -> float in [-0.5, 0.5): ``bit_depth``-bit quantisation, centred."""
        obs = self._tensor(obs)
        if obs.dtype != torch.uint8:
            raise TypeError(f"preprocess expects uint8 images, got {obs.dtype}")
        bits = self.config.bit_depth
        x = obs.to(torch.float32)
        if bits < 8:
            x = torch.floor(x / 2 ** (8 - bits))
        return x / 2**bits - 0.5

    def postprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`preprocess` for display: float image -> uint8 (same shape)."""
        bits = self.config.bit_depth
        x = torch.floor((image.detach() + 0.5) * 2**bits) * 2 ** (8 - bits)
        return x.clamp(0, 255).to(torch.uint8)

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> LatentState:
        """All-zero state (deter, stoch, mean and std) for ``batch_size`` rows."""
        device = self.device if device is None else device
        cfg = self.config
        zeros = torch.zeros(batch_size, cfg.deter_dim, device=device)
        z = torch.zeros(batch_size, cfg.stoch_dim, device=device)
        return LatentState(deter=zeros, stoch=z, mean=z.clone(), std=z.clone())

    def features(self, state: LatentState) -> torch.Tensor:
        """``cat([deter, stoch], -1)``."""
        return state.features

    # ------------------------------------------------------------- dynamics
    def _dist(self, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw_std = stats.chunk(2, dim=-1)
        return mean, F.softplus(raw_std) + self.config.min_std

    @staticmethod
    def _draw(mean: torch.Tensor, std: torch.Tensor, sample: bool) -> torch.Tensor:
        return mean + std * torch.randn_like(std) if sample else mean

    def img_step(
        self, state: LatentState, action: torch.Tensor, sample: bool = True
    ) -> LatentState:
        """Prior step: next state from ``state`` (B, ...) under ``action`` (B, A).

        With ``sample=False`` the returned ``stoch`` is the prior mean.
        """
        action = self._tensor(action, torch.float32)
        x = self.img_in(torch.cat([state.stoch, action], dim=-1))
        deter = self.gru(x, state.deter)
        mean, std = self._dist(self.prior_net(deter))
        return LatentState(deter=deter, stoch=self._draw(mean, std, sample), mean=mean, std=std)

    def obs_step(
        self, state: LatentState, prev_action: torch.Tensor, embed: torch.Tensor,
        sample: bool = True,
    ) -> tuple[LatentState, LatentState]:
        """Filtering step: returns ``(posterior, prior)`` given the observation ``embed`` (B, E)."""
        prior = self.img_step(state, prev_action, sample)
        mean, std = self._dist(self.post_net(torch.cat([prior.deter, embed], dim=-1)))
        post = LatentState(deter=prior.deter, stoch=self._draw(mean, std, sample), mean=mean,
                           std=std)
        return post, prior

    def embed(self, obs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Encode uint8 images (..., C, H, W) (or already preprocessed floats) -> (..., E)."""
        obs = self._tensor(obs)
        x = self.preprocess(obs) if obs.dtype == torch.uint8 else obs
        return self.encoder(x)

    @staticmethod
    def _reset(
        state: LatentState, action: torch.Tensor, is_first: torch.Tensor, init: LatentState
    ) -> tuple[LatentState, torch.Tensor]:
        """Replace rows with ``is_first`` by ``init`` and a zero previous action."""
        first = is_first.to(torch.bool)
        state = LatentState.where(first, init, state)
        action = torch.where(first[:, None], torch.zeros_like(action), action)
        return state, action

    def observe_embedded(
        self, embed: torch.Tensor, action: torch.Tensor | np.ndarray,
        is_first: torch.Tensor | np.ndarray, state: LatentState | None = None,
        sample: bool = True,
    ) -> tuple[LatentState, LatentState]:
        """:meth:`observe` on precomputed embeddings (B, T, E)."""
        batch, steps = embed.shape[:2]
        action = self._tensor(action, torch.float32)
        is_first = self._tensor(is_first, torch.bool)
        if action.shape[:2] != (batch, steps) or is_first.shape != (batch, steps):
            raise ValueError(
                f"observe: action {tuple(action.shape)} and is_first {tuple(is_first.shape)} "
                f"must have leading dims (B, T) = {(batch, steps)}"
            )
        init = self.initial_state(batch)
        if state is None:
            state = init
        posts, priors = [], []
        for t in range(steps):
            state, prev_action = self._reset(state, action[:, t], is_first[:, t], init)
            state, prior = self.obs_step(state, prev_action, embed[:, t], sample)
            posts.append(state)
            priors.append(prior)
        return LatentState.stack(posts, dim=1), LatentState.stack(priors, dim=1)

    def observe(
        self, obs: torch.Tensor | np.ndarray, action: torch.Tensor | np.ndarray,
        is_first: torch.Tensor | np.ndarray, state: LatentState | None = None,
        sample: bool = True,
    ) -> tuple[LatentState, LatentState]:
        """Filter sequences: ``obs`` uint8 (B, T, C, H, W), ``action`` (B, T, A), ``is_first``.

        Starts from :meth:`initial_state` when ``state`` is None; wherever ``is_first`` is
        true the recurrent state and the previous action are reset to the initial ones.
        Returns ``(posts, priors)`` with layout (B, T, ...).
        """
        obs = self._tensor(obs)
        if obs.dim() != 5:
            raise ValueError(f"observe expects obs (B, T, C, H, W), got {tuple(obs.shape)}")
        return self.observe_embedded(self.embed(obs), action, is_first, state, sample)

    def observe_step(
        self, state: LatentState | None, prev_action: torch.Tensor | np.ndarray,
        obs: torch.Tensor | np.ndarray, is_first: torch.Tensor | np.ndarray | None = None,
        sample: bool = True, embed: torch.Tensor | None = None,
    ) -> LatentState:
        """One filtering step for N envs: ``obs`` uint8 (N, C, H, W) -> posterior (N, ...).

        ``prev_action`` (N, A) is the action that led into ``obs``. Rows with ``is_first``
        (N,) are reset first; ``state=None`` means the initial state. ``embed``: ``embed(obs)``
        when the caller already computed it. Gradients are not disabled here: wrap the call in
        ``torch.no_grad()`` when acting.
        """
        obs = self._tensor(obs)
        if obs.dim() != 4:
            raise ValueError(f"observe_step expects obs (N, C, H, W), got {tuple(obs.shape)}")
        n = obs.shape[0]
        prev_action = self._tensor(prev_action, torch.float32)
        if tuple(prev_action.shape) != (n, self.action_dim):
            raise ValueError(f"observe_step: prev_action must be (N, A) = {(n, self.action_dim)},"
                             f" got {tuple(prev_action.shape)}")
        init = self.initial_state(n)
        if state is None:
            state = init
        if is_first is not None:
            first = self._tensor(is_first, torch.bool).reshape(n)
            state, prev_action = self._reset(state, prev_action, first, init)
        post, _ = self.obs_step(state, prev_action, self.embed(obs) if embed is None else embed,
                                sample)
        return post

    def imagine(
        self, start: LatentState, policy_or_actions: Policy | torch.Tensor,
        horizon: int | None = None, sample: bool = True,
    ) -> tuple[LatentState, torch.Tensor]:
        """Roll the prior from ``start`` (N, ...): returns states (N, T, ...), actions (N, T, A).

        ``policy_or_actions`` is a callable ``LatentState -> action (N, A)`` (``horizon``
        required) or an action tensor (N, T, A) (``horizon`` defaults to T; a smaller value
        uses the first steps). ``states[:, t]`` is the state after ``actions[:, t]``.
        Gradients flow through; detach as needed.
        """
        if callable(policy_or_actions) and not isinstance(policy_or_actions, torch.Tensor):
            if horizon is None:
                raise ValueError("imagine: give horizon when passing a policy")
            policy, actions = policy_or_actions, None
        else:
            actions = self._tensor(policy_or_actions, torch.float32)
            if actions.dim() != 3 or actions.shape[0] != start.deter.shape[0]:
                raise ValueError(f"imagine: actions must be (N, T, A) with N="
                                 f"{start.deter.shape[0]}, got {tuple(actions.shape)}")
            horizon = actions.shape[1] if horizon is None else horizon
            if horizon > actions.shape[1]:
                raise ValueError(f"imagine: horizon {horizon} > {actions.shape[1]} actions given")
            policy = None
        if horizon < 1:
            raise ValueError(f"imagine: horizon must be >= 1, got {horizon}")
        def action_at(t: int, state: LatentState) -> torch.Tensor:
            if policy is not None:
                return policy(state)
            assert actions is not None  # set whenever policy is None
            return actions[:, t]

        states, taken = rollout(self, start, horizon, action_at, sample=sample)
        return LatentState.stack(states, dim=1), torch.stack(taken, dim=1)

    # ---------------------------------------------------------------- heads
    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Image mean (..., C, H, W) in preprocessed units from features (..., F)."""
        return self.decoder(features)

    def predict_reward(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted reward (...) on arriving at the state with ``features`` (..., F)."""
        return self.reward_head(features).squeeze(-1)

    def predict_cost(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted cost (...) of the state with ``features`` (..., F) (MSE regression)."""
        return self.cost_head(features).squeeze(-1)

    # ----------------------------------------------------------------- loss
    def _batch(self, batch: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
        missing = [k for k in ("obs", "action", "reward", "cost", "is_first") if k not in batch]
        if missing:
            raise KeyError(f"world-model batch is missing {missing}")
        out = {
            "obs": self._tensor(batch["obs"]),
            "action": self._tensor(batch["action"], torch.float32),
            "reward": self._tensor(batch["reward"], torch.float32),
            "cost": self._tensor(batch["cost"], torch.float32),
            "is_first": self._tensor(batch["is_first"], torch.bool),
        }
        obs = out["obs"]
        if obs.dim() != 5 or tuple(obs.shape[2:]) != self.obs_shape:
            raise ValueError(f"batch obs must be (B, T, {self.obs_shape}), got {tuple(obs.shape)}")
        if obs.dtype != torch.uint8:
            raise TypeError(f"batch obs must be uint8, got {obs.dtype}")
        bt = tuple(obs.shape[:2])
        expect = {"action": bt + (self.action_dim,), "reward": bt, "cost": bt, "is_first": bt}
        for key, shape in expect.items():
            if tuple(out[key].shape) != shape:
                raise ValueError(f"batch {key} must have shape {shape}, got "
                                 f"{tuple(out[key].shape)}")
        return out

    def loss(self, batch: Mapping[str, torch.Tensor | np.ndarray]) -> WorldModelOutput:
        """World-model loss on a (B, T) batch (see :mod:`lbwrap.world_model.replay`).

        image: squared error summed over (C, H, W), mean over (B, T); reward/cost: MSE;
        kl: ``max(free_nats, KL(q || p) summed over z)`` per step, averaged.
        """
        cfg = self.config
        b = self._batch(batch)
        target = self.preprocess(b["obs"])
        embed = self.encoder(target)
        posts, priors = self.observe_embedded(embed, b["action"], b["is_first"], None, True)
        feat = posts.features
        image_loss = (self.decode(feat) - target).pow(2).sum(dim=(-3, -2, -1)).mean()
        reward_loss = (self.predict_reward(feat) - b["reward"]).pow(2).mean()
        cost_loss = (self.predict_cost(feat) - b["cost"]).pow(2).mean()
        kl = gaussian_kl(posts.mean, posts.std, priors.mean, priors.std).sum(-1)
        kl_balance = cfg.experimental.kl_balance
        if kl_balance is None:
            kl_loss = kl.clamp(min=cfg.free_nats).mean()
        else:
            to_prior = gaussian_kl(posts.mean.detach(), posts.std.detach(), priors.mean,
                                   priors.std).sum(-1)
            to_post = gaussian_kl(posts.mean, posts.std, priors.mean.detach(),
                                  priors.std.detach()).sum(-1)
            kl_loss = (kl_balance * to_prior.clamp(min=cfg.free_nats).mean()
                       + (1.0 - kl_balance) * to_post.clamp(min=cfg.free_nats).mean())
        loss = (cfg.image_weight * image_loss + cfg.reward_weight * reward_loss
                + cfg.cost_weight * cost_loss + cfg.kl_weight * kl_loss)
        names = ("image_loss", "reward_loss", "cost_loss", "kl", "kl_loss", "loss")
        values = torch.stack([image_loss, reward_loss, cost_loss, kl.mean(), kl_loss, loss])
        metrics = dict(zip(names, values.detach().cpu().tolist()))  # one device sync
        return WorldModelOutput(loss=loss, metrics=metrics, posts=posts.detach(),
                                priors=priors.detach(), embed=embed.detach())

    # ------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike) -> None:
        """Atomically write ``{"format", "version", "config", "state_dict"}`` to ``path``."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        atomic_torch_save(payload, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, map_location: str | torch.device | None = None
    ) -> WorldModel:
        """Build a model from the config stored in ``path`` and load its weights.

        The model is placed on ``map_location`` when given, else on the CPU.
        """
        payload = read_checkpoint(path, map_location="cpu")
        model = cls(WorldModelConfig.from_dict(payload["config"]))
        model.load_state_dict(payload["state_dict"])
        if map_location is not None:
            model.to(map_location)
        return model

    def load_weights(self, path: str | os.PathLike, strict_config: bool = True) -> None:
        """Load the weights in ``path`` into this model (its config must match).

        With ``strict_config=False`` fields that only change the loss (free_nats and the
        loss weights) may differ; this model keeps its own values.
        """
        payload = read_checkpoint(path, map_location="cpu")
        saved = WorldModelConfig.from_dict(payload["config"])
        diffs = saved.differences(self.config)
        if not strict_config:
            diffs = [d for d in diffs if d not in LOSS_ONLY_FIELDS]
        if diffs:
            details = ", ".join(
                f"checkpoint has {d}={getattr(saved, d)!r}, this model has "
                f"{d}={getattr(self.config, d)!r}" for d in diffs
            )
            raise ValueError(
                f"{os.fspath(path)}: {details}: build the model with WorldModel.load(path) "
                "or use a matching config"
            )
        self.load_state_dict(payload["state_dict"])
