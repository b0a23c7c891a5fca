"""``LatentSafetyModel``: world model + barrier + their optimisers + replay + shield, as one object.

This is the piece users hold on to (pure torch, no Gymnasium or SB3 imports)::

    safety = LatentSafetyModel.for_env(env)          # sizes from the env's spaces, CPU preset
    safety.add_step(obs, prev_action, reward, cost, is_first, is_terminal)   # N envs at once
    metrics = safety.update(num_updates=10)          # world model, then barrier, per update
    safety.ready                                     # barrier trained well enough to shield?
    safety.save("safety.pt"); LatentSafetyModel.load("safety.pt")

The readiness gate (``ready``) is the documented, measurable switch the shield uses: the barrier's
balanced accuracy on real labelled states, averaged (EMA) over recent updates, must reach
``ready_accuracy`` after at least ``ready_min_updates`` updates and with at least
``ready_min_unsafe`` unsafe states seen in training batches. When the shield predicts with the
action-conditioned barrier (the default, see :mod:`lbwrap.barrier.action_barrier`), that
network's balanced accuracy on real transitions (EMA) must reach ``ready_accuracy`` as well.

Margins. B(z)'s margin is ``config.barrier.eps`` (the barrier penalty and ``BarrierSAC`` read it);
the shield's is its predictor's (``safety.shield_filter.margin``: ``config.barrier.eps`` for the
prior predictor, ``config.action_barrier.margin`` on B_next's logit scale for the action barrier,
unless ``FilterConfig.eps`` overrides it).
"""

from __future__ import annotations

import contextlib
import functools
import math
import pickle
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lbwrap._optim import training_autocast
from lbwrap.barrier import (
    ActionBarrierPredictor,
    ActionScorer,
    BarrierConfig,
    BarrierNet,
    BarrierTrainer,
    FilterConfig,
    SafeActionFilter,
)
from lbwrap.barrier.action_barrier import (
    DECISION_ONLY_FIELDS,
    ActionBarrierConfig,
    ActionBarrierNet,
    action_barrier_loss,
    transitions,
)
from lbwrap.experimental import (
    SafetyModelExperimental,
    as_experimental,
    move_deprecated_key,
    move_deprecated_option,
)
from lbwrap.latent_state import LatentState
from lbwrap.world_model import SequenceReplay, WorldModel, WorldModelConfig, WorldModelTrainer
from lbwrap.world_model.checkpoint import atomic_torch_save

__all__ = ["IncompatibleCheckpointError", "LatentSafetyModel", "SafetyModelConfig",
           "resolve_device", "reward_scorer"]


def __getattr__(name: str) -> Any:
    """``ACTION_BARRIER_EPS``, deprecated: the action barrier's margin is
    ``ActionBarrierConfig.margin`` (default 2.0), read by its shield predictor."""
    if name == "ACTION_BARRIER_EPS":
        warnings.warn(
            "lbwrap.safety_model.ACTION_BARRIER_EPS is deprecated: the action-barrier shield's "
            "margin is ActionBarrierConfig.margin (lbwrap.barrier.ActionBarrierConfig, default "
            "2.0), read by its predictor (safety.shield_filter.margin). The name is kept until "
            "the next release.", DeprecationWarning, stacklevel=2)
        return ActionBarrierConfig().margin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_FORMAT = "lbwrap.safety_model"
_VERSION = 2
#: Versions :meth:`LatentSafetyModel.load` reads. 1 differs from 2 only in its replay (a dict of
#: numpy arrays, which ``weights_only=True`` refuses) and in not saving the gate's hysteresis flag.
_READABLE_VERSIONS = (1, 2)


class IncompatibleCheckpointError(ValueError):
    """A checkpoint that is not an lbwrap safety model, or one built for other sizes/spaces."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class SafetyModelConfig:
    """Everything that defines a :class:`LatentSafetyModel` and how it trains."""

    world_model: WorldModelConfig = field(default_factory=WorldModelConfig.cpu)
    barrier: BarrierConfig = field(default_factory=BarrierConfig)
    filter: FilterConfig | None = None
    """Shield settings. ``None``: with ``action_barrier`` set, ``FilterConfig(condition="barrier",
    predictor="action_barrier")`` (margin ``action_barrier.margin``); without, ``FilterConfig()``
    (the prior, ``cbf``, with dt / alpha / eps from ``barrier``). Each predictor takes its margin
    from its own config unless ``FilterConfig.eps`` overrides it."""
    action_barrier: ActionBarrierConfig | None = field(default_factory=ActionBarrierConfig)
    """The action-conditioned next-state barrier the shield predicts with (trained in every
    :meth:`LatentSafetyModel.update`); ``None`` leaves it out (the paper's prior-based shield)."""
    latent_action_barrier: bool = False
    """Also train ``B_next(z, a)``, an action barrier on the agent's latent features
    (``cat(deter, stoch mean)``, what SAC observes) instead of the frame embedding, with
    ``action_barrier``'s settings and targets (:attr:`LatentSafetyModel.latent_action_barrier`).
    :class:`~lbwrap.sb3.BarrierSAC` with ``barrier_term="action"`` puts it in the actor's loss;
    the shield and the gate never read it. Needs ``action_barrier``."""
    world_model_lr: float = 6e-4
    """Adam learning rate of the world model (paper: 1e-5, far too slow at CPU budgets)."""
    batch_size: int = 16
    """Sequences per update."""
    seq_len: int = 32
    """Steps per sequence."""
    replay_capacity: int = 100_000
    """Pixel steps kept (all envs together); 64x64x3 frames take 12 KiB each."""
    cost_fraction: float = 0.25
    """At least this fraction of sampled sequences contains a costly step (unsafe states are rare)."""
    ready_accuracy: float = 0.8
    """Balanced accuracy (EMA) of sign(B) on real labelled states needed before shielding."""
    ready_release_accuracy: float | None = field(default=None, repr=False)
    """Deprecated keyword, accepted until the next release: gate hysteresis is experimental and
    moved to ``experimental=SafetyModelExperimental(ready_release_accuracy=...)``
    (:class:`~lbwrap.experimental.SafetyModelExperimental`). A value given here is moved there
    (with a ``DeprecationWarning`` unless it is ``None``); the attribute then reads ``None``."""
    ready_min_updates: int = 100
    """Barrier updates needed before shielding."""
    ready_min_unsafe: int = 50
    """Unsafe (cost > kappa) states that must have appeared in training batches before shielding."""
    accuracy_ema: float = 0.95
    """Smoothing of the readiness accuracy (per update)."""
    autocast: Literal["off", "bf16"] = "off"
    """Mixed precision of the training forward passes (world model, barrier, action barrier):
    ``"bf16"`` runs them under ``torch.autocast(dtype=torch.bfloat16)`` on the model's device
    (meant for CUDA; weights and optimiser states stay float32, no loss scaling is needed)."""
    experimental: SafetyModelExperimental = field(default_factory=SafetyModelExperimental)
    """Options measured to have no effect (:mod:`lbwrap.experimental`); a dict is converted."""

    def __post_init__(self) -> None:
        self.experimental = as_experimental(self.experimental, SafetyModelExperimental,
                                            "SafetyModelConfig")
        move_deprecated_option(self, "ready_release_accuracy", "ready_release_accuracy",
                               default=None)
        if isinstance(self.world_model, dict):
            self.world_model = WorldModelConfig.from_dict(self.world_model)
        if isinstance(self.barrier, dict):
            self.barrier = BarrierConfig(**self.barrier)
        if isinstance(self.filter, dict):
            self.filter = FilterConfig.from_dict(self.filter)
        if isinstance(self.action_barrier, dict):
            self.action_barrier = ActionBarrierConfig(**self.action_barrier)
        if self.action_barrier is None and self.filter_config.predictor == "action_barrier":
            raise ValueError(
                "SafetyModelConfig.filter uses predictor='action_barrier' but action_barrier is "
                "None: set action_barrier=ActionBarrierConfig() or use predictor='prior'"
            )
        if self.latent_action_barrier and self.action_barrier is None:
            raise ValueError(
                "SafetyModelConfig.latent_action_barrier=True trains with action_barrier's "
                "settings, but action_barrier is None: set action_barrier=ActionBarrierConfig() "
                "or latent_action_barrier=False"
            )
        for name in ("batch_size", "seq_len", "replay_capacity", "ready_min_updates"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SafetyModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.cost_fraction <= 1.0:
            raise ValueError(f"SafetyModelConfig.cost_fraction must be in [0, 1], got {self.cost_fraction}")
        if not 0.0 <= self.ready_accuracy <= 1.0:
            raise ValueError(f"SafetyModelConfig.ready_accuracy must be in [0, 1], got {self.ready_accuracy}")
        release = self.experimental.ready_release_accuracy
        if release is not None and not 0.0 <= release <= self.ready_accuracy:
            raise ValueError(f"SafetyModelConfig.experimental.ready_release_accuracy must be in "
                             f"[0, ready_accuracy={self.ready_accuracy}] or None, got {release}")
        if not self.world_model_lr > 0:
            raise ValueError(f"SafetyModelConfig.world_model_lr must be > 0, got {self.world_model_lr}")
        if self.autocast not in ("off", "bf16"):
            raise ValueError(f"SafetyModelConfig.autocast must be 'off' or 'bf16', got "
                             f"{self.autocast!r}")

    @property
    def filter_config(self) -> FilterConfig:
        """The shield's settings (``filter``, or the default described there). Its ``eps`` is
        ``None`` unless set: the margin belongs to the predictor (``shield_filter.margin``)."""
        if self.filter is not None:
            return self.filter
        if self.action_barrier is not None:
            return FilterConfig(condition="barrier", predictor="action_barrier")
        return FilterConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the settings (what checkpoints store; without deprecated keys)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name != "ready_release_accuracy"}
        out["world_model"] = self.world_model.to_dict()
        out["barrier"] = self.barrier.to_dict()
        out["filter"] = self.filter.to_dict() if self.filter is not None else None
        out["action_barrier"] = (self.action_barrier.to_dict()
                                 if self.action_barrier is not None else None)
        out["experimental"] = self.experimental.to_dict()
        return out


def image_shape_of(observation_space: Any) -> tuple[int, int, int]:
    """(C, H, W) of a uint8 image space (channel-first or channel-last); clear error otherwise."""
    shape = tuple(getattr(observation_space, "shape", None) or ())
    dtype = getattr(observation_space, "dtype", None)
    if len(shape) != 3 or dtype != np.uint8 or not (shape[0] == 3 or shape[-1] == 3):
        raise ValueError(
            f"lbwrap's world model needs uint8 RGB image observations of shape (3, S, S) or "
            f"(S, S, 3); got {observation_space}. Wrap the env with lbwrap.as_pixel_env(env) "
            "or build it with lbwrap.make_pixel_env(env_id)."
        )
    if shape[0] == 3:
        return (3, shape[1], shape[2])
    return (3, shape[0], shape[1])


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Draw from torch's global RNG seeded with ``seed`` inside, and leave its state untouched."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


class _ClassOnlyMethod:
    """A classmethod that refuses calls on an instance (``safety.load(path)`` would return a new
    model and leave ``safety`` as it was, which reads like loading into it)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.__func__ = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, instance: Any, owner: type | None = None) -> Callable[..., Any]:
        if instance is None:
            return types.MethodType(self.__func__, owner)
        cls_name, name = type(instance).__name__, self.__func__.__name__

        @functools.wraps(self.__func__)
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise TypeError(
                f"{cls_name}.{name}(path) builds and returns a new model; called on an "
                f"instance it would leave that model unchanged. Use model = {cls_name}."
                f"{name}(path) for a new model, or model.load_checkpoint(path) to load into "
                "this one.")

        return refuse


class LatentSafetyModel(nn.Module):
    """World model and barrier (submodules), their trainers, the pixel replay and the shield logic.

    Args:
        config: sizes and training settings.
        action_low, action_high: the action box (the shield never leaves it).
        num_envs: parallel env streams the replay expects (``add_step`` takes that many rows).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        seed: seeds the initial weights (without touching torch's global RNG state), replay
            sampling, imagination and the shield's candidate draws.
    """

    # buffers (register_buffer in __init__); action_accuracy_ema only with an action barrier,
    # latent_action_accuracy_ema only with a latent action barrier
    action_low: torch.Tensor
    action_high: torch.Tensor
    accuracy_ema: torch.Tensor
    unsafe_seen: torch.Tensor
    action_accuracy_ema: torch.Tensor
    latent_action_accuracy_ema: torch.Tensor

    def __init__(
        self,
        config: SafetyModelConfig,
        action_low: Any,
        action_high: Any,
        num_envs: int = 1,
        device: str | torch.device = "auto",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.seed = seed
        wm_cfg = config.world_model
        with _seeded(seed):  # initial weights from ``seed`` alone, whatever the process ran before
            self.world_model = WorldModel(wm_cfg)
            self.barrier = BarrierNet.from_config(config.barrier, wm_cfg.stoch_dim, wm_cfg.deter_dim)
            action_barrier = None if config.action_barrier is None else ActionBarrierNet.from_config(
                config.action_barrier, self.world_model.embed_dim, wm_cfg.action_dim)
            latent_action_barrier = None  # drawn last: the other weights do not depend on it
            if config.latent_action_barrier and config.action_barrier is not None:
                latent_action_barrier = ActionBarrierNet.from_config(
                    config.action_barrier, wm_cfg.feature_dim, wm_cfg.action_dim)
        low = np.asarray(action_low, dtype=np.float32).reshape(-1)
        high = np.asarray(action_high, dtype=np.float32).reshape(-1)
        if low.shape != (wm_cfg.action_dim,) or high.shape != (wm_cfg.action_dim,):
            raise ValueError(
                f"action bounds have shape {low.shape}/{high.shape}, the world model expects "
                f"({wm_cfg.action_dim},)"
            )
        self.register_buffer("action_low", torch.as_tensor(low))
        self.register_buffer("action_high", torch.as_tensor(high))
        # readiness statistics travel with the weights
        self.register_buffer("accuracy_ema", torch.tensor(float("nan")))
        self.register_buffer("unsafe_seen", torch.tensor(0, dtype=torch.long))
        self.action_barrier: ActionBarrierNet | None = None
        self.action_barrier_trainer: BarrierTrainer | None = None
        if action_barrier is not None:
            self.action_barrier = action_barrier
            self.register_buffer("action_accuracy_ema", torch.tensor(float("nan")))
        self.latent_action_barrier: ActionBarrierNet | None = None
        self.latent_action_barrier_trainer: BarrierTrainer | None = None
        if latent_action_barrier is not None:
            self.latent_action_barrier = latent_action_barrier
            self.register_buffer("latent_action_accuracy_ema", torch.tensor(float("nan")))
        self.to(resolve_device(device))
        self.wm_trainer = WorldModelTrainer(self.world_model, lr=config.world_model_lr)
        self.barrier_trainer = BarrierTrainer(self.barrier, config.barrier)
        if self.action_barrier is not None and config.action_barrier is not None:
            self.action_barrier_trainer = BarrierTrainer(  # its Adam/clip/skip loop, other params
                self.action_barrier, config.barrier, lr=config.action_barrier.lr,
                grad_clip=config.action_barrier.grad_clip)
        if self.latent_action_barrier is not None and config.action_barrier is not None:
            self.latent_action_barrier_trainer = BarrierTrainer(
                self.latent_action_barrier, config.barrier, lr=config.action_barrier.lr,
                grad_clip=config.action_barrier.grad_clip)
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(int(seed))
        filter_cfg = config.filter_config
        if seed is not None and filter_cfg.seed is None:
            filter_cfg = replace(filter_cfg, seed=int(seed))
        self.shield_filter = SafeActionFilter(
            self.world_model, self.barrier, filter_cfg, low, high,
            action_barrier=self.action_barrier, barrier_config=config.barrier,
            action_barrier_config=config.action_barrier)
        self.num_envs = int(num_envs)
        self.replay = SequenceReplay(
            config.replay_capacity, self.obs_shape, wm_cfg.action_dim, num_envs=self.num_envs,
            seed=seed,
        )
        self.force_ready: bool | None = None
        self._gate_open = False  # for the gate's hysteresis; updated after each update() call

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def for_env(
        cls,
        env: Any,
        preset: Literal["cpu", "paper"] = "cpu",
        num_envs: int | None = None,
        device: str | torch.device = "auto",
        seed: int | None = None,
        **config_overrides: Any,
    ) -> LatentSafetyModel:
        """Size a model for ``env`` (a Gymnasium env or SB3 VecEnv with pixel observations).

        ``preset`` picks :meth:`WorldModelConfig.cpu` or :meth:`WorldModelConfig.paper`;
        ``config_overrides`` set :class:`SafetyModelConfig` fields (e.g. ``batch_size=32``).
        """
        _, h, w = image_shape_of(env.observation_space)
        if h != w:
            raise ValueError(f"lbwrap needs square images, got {h}x{w}; resize with as_pixel_env(size=...).")
        action_space = env.action_space
        if not hasattr(action_space, "low") or len(getattr(action_space, "shape", ())) != 1:
            raise ValueError(
                f"lbwrap needs a 1-D continuous Box action space, got {action_space}."
            )
        action_dim = int(action_space.shape[0])
        make = WorldModelConfig.cpu if preset == "cpu" else WorldModelConfig.paper
        if preset not in ("cpu", "paper"):
            raise ValueError(f"preset must be 'cpu' or 'paper', got {preset!r}")
        wm_overrides = config_overrides.pop("world_model_overrides", {})
        config = SafetyModelConfig(
            world_model=make(action_dim=action_dim, image_size=h, **wm_overrides),
            **config_overrides,
        )
        if num_envs is None:  # a VecEnv holds num_envs itself; a gym.Env is one stream
            num_envs = int(vars(env).get("num_envs", 1)) if hasattr(env, "__dict__") else 1
        return cls(config, action_space.low, action_space.high, num_envs=num_envs, device=device,
                   seed=seed)

    @property
    def device(self) -> torch.device:
        return self.action_low.device

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        cfg = self.config.world_model
        return (cfg.image_channels, cfg.image_size, cfg.image_size)

    @property
    def action_dim(self) -> int:
        return self.config.world_model.action_dim

    @property
    def skipped_updates(self) -> dict[str, int]:
        """Updates skipped so far because their loss or gradient norm was NaN/inf, per model
        (``world_model``, ``barrier`` and, when present, ``action_barrier``); kept in checkpoints."""
        out = {"world_model": int(self.wm_trainer.num_skipped),
               "barrier": int(self.barrier_trainer.num_skipped)}
        if self.action_barrier_trainer is not None:
            out["action_barrier"] = int(self.action_barrier_trainer.num_skipped)
        if self.latent_action_barrier_trainer is not None:
            out["latent_action_barrier"] = int(self.latent_action_barrier_trainer.num_skipped)
        return out

    def nonfinite_modules(self) -> list[str]:
        """Names of the models (``world_model``, ``barrier``, ``action_barrier``,
        ``latent_action_barrier``) holding a NaN or inf weight; empty when all are finite."""
        models = {"world_model": self.world_model, "barrier": self.barrier,
                  "action_barrier": self.action_barrier,
                  "latent_action_barrier": self.latent_action_barrier}
        return [name for name, module in models.items()
                if module is not None and not all(bool(torch.isfinite(p).all())
                                                  for p in module.parameters())]

    @property
    def num_updates(self) -> int:
        """Calls of :meth:`update`'s inner step so far (world model + barriers); kept in checkpoints."""
        return int(self.wm_trainer.num_updates)

    def check_spaces(self, observation_space: Any, action_space: Any) -> None:
        """Raise a clear ``ValueError`` when the env's spaces do not match this model."""
        shape = image_shape_of(observation_space)
        if shape != self.obs_shape:
            raise ValueError(
                f"This safety model was built for {self.obs_shape} images, the env gives {shape}. "
                "Build it with LatentSafetyModel.for_env(env) or resize the env's images "
                f"(make_pixel_env(..., size={self.obs_shape[-1]}))."
            )
        a_shape = tuple(getattr(action_space, "shape", ()) or ())
        if a_shape != (self.action_dim,):
            raise ValueError(
                f"This safety model was built for {self.action_dim}-d actions, the env's action "
                f"space is {action_space}."
            )
        low = np.asarray(action_space.low, np.float32)
        high = np.asarray(action_space.high, np.float32)
        if not (np.allclose(low, self.action_low.cpu().numpy()) and np.allclose(high, self.action_high.cpu().numpy())):
            raise ValueError(
                f"This safety model's action box is [{self.action_low.tolist()}, "
                f"{self.action_high.tolist()}], the env's is [{low.tolist()}, {high.tolist()}]."
            )

    # ------------------------------------------------------------------ data
    def add_step(
        self,
        obs: np.ndarray,
        prev_action: np.ndarray,
        reward: np.ndarray,
        cost: np.ndarray,
        is_first: np.ndarray,
        is_terminal: np.ndarray,
    ) -> None:
        """Store one step for every env stream (Dreamer convention, see ``SequenceReplay.add``).

        Channel-last frames (N, H, W, 3) are transposed to channel-first.
        """
        obs = np.asarray(obs)
        if obs.ndim == 4 and obs.shape[1:] != self.obs_shape and obs.shape[-1] == self.obs_shape[0]:
            obs = obs.transpose(0, 3, 1, 2)
        self.replay.add(np.ascontiguousarray(obs, dtype=np.uint8), prev_action, reward, cost,
                        is_first, is_terminal)

    def can_train(self) -> bool:
        """True once the replay holds a full sequence for at least one env."""
        return self.replay.steps_per_env >= self.config.seq_len

    # ------------------------------------------------------------------ learning
    def update(self, num_updates: int = 1) -> dict[str, float]:
        """``num_updates`` x (one world-model update, then one barrier update on its posteriors,
        then ``action_barrier.steps_per_batch`` action-barrier steps on the batch's frame embeddings,
        if configured).

        Returns the metrics of the last update, prefixed ``world_model/``, ``barrier/`` and
        ``action_barrier/``, plus ``safety/ready`` and ``safety/accuracy_ema``.
        """
        if num_updates < 1:
            return {}
        if not self.can_train():
            raise RuntimeError(
                f"The replay holds {self.replay.steps_per_env} steps per env; "
                f"{self.config.seq_len} are needed before training (seq_len)."
            )
        cfg = self.config
        metrics: dict[str, float] = {}
        precision = self._autocast
        for _ in range(num_updates):
            batch = self.replay.sample_torch(cfg.batch_size, cfg.seq_len, self.device,
                                             cost_fraction=cfg.cost_fraction)
            wm_metrics, out = self.wm_trainer.update(batch, autocast=precision)
            b_metrics = self.barrier_trainer.update(
                out.posts, batch["cost"], batch["is_first"], dynamics=self.world_model,
                cost_fn=self.world_model.predict_cost, generator=self.generator,
                autocast=precision,
            )
            self._update_readiness(batch["cost"], b_metrics)
            metrics = {f"world_model/{k}": v for k, v in wm_metrics.items()}
            metrics.update({f"barrier/{k}": v for k, v in b_metrics.items()})
            if self.action_barrier is not None:
                if out.embed is None:
                    raise RuntimeError("the world model's loss returned no embeddings")
                metrics.update({f"action_barrier/{k}": v for k, v in self._update_action_barrier(
                    self.action_barrier, self.action_barrier_trainer, self.action_accuracy_ema,
                    out.embed, batch).items()})
            if self.latent_action_barrier is not None:  # on what the agent observes
                features = torch.cat([out.posts.deter, out.posts.mean], dim=-1).detach()
                metrics.update({f"latent_action_barrier/{k}": v
                                for k, v in self._update_action_barrier(
                                    self.latent_action_barrier,
                                    self.latent_action_barrier_trainer,
                                    self.latent_action_accuracy_ema, features, batch).items()})
        self._refresh_gate()
        metrics["safety/accuracy_ema"] = float(self.accuracy_ema)
        metrics["safety/ready"] = float(self.ready)
        metrics["safety/unsafe_seen"] = float(self.unsafe_seen)
        return metrics

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The training forward passes' precision context (``config.autocast``)."""
        return training_autocast(self.device, self.config.autocast)

    def _update_action_barrier(
        self, net: ActionBarrierNet, trainer: BarrierTrainer | None, accuracy_ema: torch.Tensor,
        inputs: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """``action_barrier.steps_per_batch`` steps of ``net`` on the batch's transitions from
        ``inputs`` (B, T, ...): frame embeddings or latent features."""
        assert trainer is not None and self.config.action_barrier is not None
        pairs = transitions(inputs, batch["action"], batch["cost"], batch["is_first"])
        metrics: dict[str, float] = {}
        for step in range(self.config.action_barrier.steps_per_batch):
            with self._autocast():
                loss, step_metrics = action_barrier_loss(
                    net, *pairs, kappa=self.config.barrier.kappa,
                    horizon=self.config.action_barrier.horizon,
                    discount=self.config.action_barrier.discount)
            if step == 0:  # measured before this batch trained it
                metrics = step_metrics
            metrics.update(trainer.step(loss))
        self._ema(accuracy_ema, metrics["balanced_accuracy"])
        metrics["accuracy_ema"] = float(accuracy_ema)
        return metrics

    def _ema(self, buffer: torch.Tensor, value: float) -> None:
        if not math.isfinite(value):
            return
        if not math.isfinite(float(buffer)):
            buffer.fill_(value)
        else:
            beta = self.config.accuracy_ema
            buffer.mul_(beta).add_((1 - beta) * value)

    def _update_readiness(self, cost: torch.Tensor, metrics: dict[str, float]) -> None:
        self.unsafe_seen += int((cost > self.config.barrier.kappa).sum())
        self._ema(self.accuracy_ema, metrics.get("balanced_accuracy_real", math.nan))

    @property
    def ready(self) -> bool:
        """Whether the barrier is trusted to shield (see module doc); ``force_ready`` overrides."""
        if self.force_ready is not None:
            return bool(self.force_ready)
        return self._accuracies_pass()

    def _refresh_gate(self) -> None:
        """Remember whether the gate is open now (for ``experimental.ready_release_accuracy``)."""
        self._gate_open = self._accuracies_pass()

    def _accuracies_pass(self) -> bool:
        """The gate's test, with the release threshold while the gate is open (hysteresis)."""
        cfg = self.config
        threshold = cfg.ready_accuracy
        release = cfg.experimental.ready_release_accuracy
        if self._gate_open and release is not None:
            threshold = release
        accuracies = [float(self.accuracy_ema)]
        if isinstance(self.shield_filter.predictor, ActionBarrierPredictor):
            accuracies.append(float(self.action_accuracy_ema))
        return (
            self.barrier_trainer.num_updates >= cfg.ready_min_updates
            and int(self.unsafe_seen) >= cfg.ready_min_unsafe
            and all(math.isfinite(acc) and acc >= threshold for acc in accuracies)
        )

    # ------------------------------------------------------------------ persistence
    def checkpoint(self, include_replay: bool = False) -> dict[str, Any]:
        """Everything needed to resume: configs, weights, optimiser states, readiness counters.

        Only what ``torch.load(weights_only=True)`` accepts (plain containers, numbers, strings,
        tensors); the replay (``include_replay``) is the compressed ``.npz`` of its stored steps
        (:meth:`SequenceReplay.to_bytes`) as a uint8 tensor.
        """
        payload: dict[str, Any] = {
            "format": _FORMAT,
            "version": _VERSION,
            "config": self.config.to_dict(),
            "action_low": self.action_low.cpu().numpy().tolist(),
            "action_high": self.action_high.cpu().numpy().tolist(),
            "num_envs": self.num_envs,
            "seed": self.seed,
            "state_dict": self.state_dict(),
            "world_model_trainer": self.wm_trainer.state_dict(),
            "barrier_trainer": self.barrier_trainer.state_dict(),
            "gate_open": bool(self._gate_open),
        }
        if self.action_barrier_trainer is not None:
            payload["action_barrier_trainer"] = self.action_barrier_trainer.state_dict()
        if self.latent_action_barrier_trainer is not None:
            payload["latent_action_barrier_trainer"] = \
                self.latent_action_barrier_trainer.state_dict()
        if include_replay:
            payload["replay"] = torch.frombuffer(bytearray(self.replay.to_bytes()),
                                                 dtype=torch.uint8)
        return payload

    def save(self, path: str | Path, include_replay: bool = False) -> None:
        """Write :meth:`checkpoint` atomically (an existing file is only replaced on success).

        Trust: lbwrap reads its ``.pt`` files with ``torch.load(weights_only=True)`` (no code
        runs), but SB3's ``agent.zip`` keeps some objects (e.g. schedules) in its ``data`` as
        cloudpickle, which SB3 unpickles on load: only load ``agent.zip`` files you trust.
        """
        atomic_torch_save(self.checkpoint(include_replay), path)

    @_ClassOnlyMethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> LatentSafetyModel:
        """Rebuild a model (and its optimisers, and the replay if it was saved) from ``path``.

        A class call (``LatentSafetyModel.load(path)``) returns a new model; called on an
        instance it raises ``TypeError`` (use :meth:`load_checkpoint` to load into a model).
        Trust: lbwrap reads its ``.pt`` files with ``torch.load(weights_only=True)`` (no code
        runs), but SB3's ``agent.zip`` keeps some objects (e.g. schedules) in its ``data`` as
        cloudpickle, which SB3 unpickles on load: only load ``agent.zip`` files you trust.
        """
        payload = _read(path)
        config = SafetyModelConfig(**_config_dict(payload))
        model = cls(config, payload["action_low"], payload["action_high"],
                    num_envs=payload.get("num_envs", 1), device=device, seed=payload.get("seed"))
        model._restore(payload)
        return model

    def load_checkpoint(self, path: str | Path) -> None:
        """Load ``path`` into this model; refuses a checkpoint of another configuration."""
        payload = _read(path)
        saved = SafetyModelConfig(**_config_dict(payload))
        diffs = saved.world_model.differences(self.config.world_model)
        ab_diffs = _action_barrier_differences(saved.action_barrier, self.config.action_barrier)
        if saved.latent_action_barrier != self.config.latent_action_barrier:
            ab_diffs.append(f"latent_action_barrier: checkpoint {saved.latent_action_barrier!r} "
                            f"vs model {self.config.latent_action_barrier!r}")
        if diffs or saved.barrier.to_dict() != self.config.barrier.to_dict() or ab_diffs:
            detail = ", ".join(
                f"{d}: checkpoint {getattr(saved.world_model, d)!r} vs model "
                f"{getattr(self.config.world_model, d)!r}" for d in diffs
            ) or ", ".join(ab_diffs) or "barrier settings differ"
            raise IncompatibleCheckpointError(
                f"{path} was saved from a differently configured safety model ({detail}). "
                "Use LatentSafetyModel.load(path) to rebuild it as saved."
            )
        self._restore(payload)

    def _restore(self, payload: dict[str, Any]) -> None:
        self.load_state_dict(payload["state_dict"])
        self.wm_trainer.load_state_dict(payload["world_model_trainer"])
        self.barrier_trainer.load_state_dict(payload["barrier_trainer"])
        if self.action_barrier_trainer is not None:
            self.action_barrier_trainer.load_state_dict(payload["action_barrier_trainer"])
        if self.latent_action_barrier_trainer is not None:
            self.latent_action_barrier_trainer.load_state_dict(
                payload["latent_action_barrier_trainer"])
        self._gate_open = bool(payload.get("gate_open", False))  # absent in version 1
        replay = payload.get("replay")
        if isinstance(replay, torch.Tensor):
            self.replay.load_bytes(replay)
        elif isinstance(replay, Mapping):  # a version-1 replay dict (only built by hand now)
            self.replay.load_state_dict(replay)


def _action_barrier_differences(saved: ActionBarrierConfig | None,
                                own: ActionBarrierConfig | None) -> list[str]:
    """Readable differences between two action-barrier settings (empty when equal)."""
    if saved is None or own is None:
        if saved is own:
            return []
        has = {True: "one", False: "none"}
        return [f"action barrier: checkpoint {has[saved is not None]} vs model {has[own is not None]}"]
    a, b = saved.to_dict(), own.to_dict()
    return [f"action-barrier {k}: checkpoint {a[k]!r} vs model {b[k]!r}" for k in a
            if a[k] != b[k] and k not in DECISION_ONLY_FIELDS]


def _config_dict(payload: dict[str, Any]) -> dict[str, Any]:
    """The saved config; checkpoints from before the action barrier existed were saved without
    one, and are rebuilt that way; those from before its ``horizon`` was trained on one-step
    labels, and keep them. Those from before the gate's hysteresis became experimental keep it
    (``ready_release_accuracy`` -> ``experimental``, silently); their action barrier's ``margin``
    is the default, 2.0, which their default shield used (an explicit ``filter.eps`` stays)."""
    config = move_deprecated_key(dict(payload["config"]), "ready_release_accuracy",
                                 "ready_release_accuracy", default=None)
    config.setdefault("action_barrier", None)
    if isinstance(config["action_barrier"], dict):
        config["action_barrier"] = {"horizon": 1, **config["action_barrier"]}
    return config


def _read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No safety-model checkpoint at {path}.")
    try:  # weights_only: tensors and plain containers only, a crafted pickle runs no code
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        # newer torch (2.13) says "Unsupported global: GLOBAL io.open was not an allowed global",
        # older torch (2.2) "Unsupported class io.open"
        if "Unsupported global" not in reason and "Unsupported class" not in reason:
            raise IncompatibleCheckpointError(
                f"{path} could not be read as an lbwrap safety-model checkpoint ({reason})."
            ) from exc
        raise IncompatibleCheckpointError(
            f"{path} could not be read as an lbwrap safety-model checkpoint: it holds objects "
            f"other than tensors and plain containers, which lbwrap refuses to unpickle ({reason})."
            " Files saved with include_replay=True by lbwrap before checkpoint version 2 held "
            "the replay as numpy arrays: if you trust such a file, load it once with "
            "torch.load(path, weights_only=False), delete its 'replay' entry "
            "(SequenceReplay.load_state_dict(payload['replay']) rebuilds the replay from it) and "
            "torch.save the rest; this lbwrap reads that file and saves it in version 2."
        ) from exc
    except Exception as exc:  # torch raises many types for foreign/corrupt files
        raise IncompatibleCheckpointError(
            f"{path} could not be read as an lbwrap safety-model checkpoint ({exc})."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise IncompatibleCheckpointError(
            f"{path} is not an lbwrap safety-model checkpoint (saved with LatentSafetyModel.save)."
        )
    if payload.get("version") not in _READABLE_VERSIONS:
        raise IncompatibleCheckpointError(
            f"{path} has safety-model checkpoint version {payload.get('version')}, this lbwrap "
            f"reads versions {', '.join(map(str, _READABLE_VERSIONS))}: load it with the lbwrap "
            "that saved it, or upgrade lbwrap."
        )
    return payload


def _unpickler_reason(exc: BaseException) -> str:
    """What torch's weights-only unpickler refused (without its advice to unpickle anyway)."""
    text = " ".join(str(exc).split())
    marker = "WeightsUnpickler error:"
    if marker not in text:
        return text.split(". ")[0] or type(exc).__name__
    reason = text.split(marker, 1)[1].strip()
    return reason.split(". ")[0].rstrip(".") or type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Decisions used by the wrappers (numpy in, numpy out), kept here so the Gymnasium and VecEnv
# wrappers stay thin shells around the same logic.
@dataclass
class ShieldDecision:
    """What the shield did for N envs (numpy arrays)."""

    executed: np.ndarray
    """(N, A) executed actions, inside the action box."""
    intervened: np.ndarray
    """(N,) bool: the proposal was replaced."""
    active: bool
    """The barrier was trusted (``ready``) and the filter ran."""
    b_now: np.ndarray
    """(N,) B(z) of the current latent (NaN when inactive)."""
    b_next_proposed: np.ndarray
    """(N,) predicted B after the proposed action (NaN when inactive)."""
    b_next_executed: np.ndarray
    """(N,) predicted B after the executed action (NaN when inactive)."""
    feasible: np.ndarray
    """(N,) bool: the executed action meets the barrier condition (True when inactive)."""

    def info(self, i: int) -> dict[str, Any]:
        """What the shield wrappers put into env ``i``'s step ``info``: ``shield_active``,
        ``shield_intervened``, ``executed_action`` and, only while the shield is active,
        ``barrier_now`` / ``barrier_next_proposed`` / ``barrier_next_executed`` (left out rather
        than NaN, so that infos compare equal to themselves, as Gymnasium's checks expect)."""
        out: dict[str, Any] = {"shield_active": bool(self.active),
                               "shield_intervened": bool(self.intervened[i]),
                               "executed_action": self.executed[i]}
        if self.active:
            out.update(barrier_now=float(self.b_now[i]),
                       barrier_next_proposed=float(self.b_next_proposed[i]),
                       barrier_next_executed=float(self.b_next_executed[i]))
        return out


#: ``scorer(observations, candidates) -> scores`` rates candidate actions (m, K, A) at the
#: observations (m, ...) the agent saw (numpy, as the env returned them); scores (m, K), higher
#: is better. :func:`lbwrap.sb3.critic_scorer` builds one from an SB3 agent's critic.
ObservationScorer = Callable[[np.ndarray, torch.Tensor], torch.Tensor]


def reward_scorer(safety: LatentSafetyModel) -> ObservationScorer:
    """An ``action_scorer`` that rates candidates by the world model's predicted reward.

    The shield's substitutes are rated by ``r(z')``, the reward head at the prior-mean next
    state under each candidate, from the agent's latent features ``cat([deter, stoch])`` (what
    :class:`~lbwrap.wrappers.LatentObservation` gives the agent). The reward head is trained on
    real transitions, so among the passing actions it prefers the one that keeps the task's
    progress (e.g. steering round a hazard rather than stopping), with no agent-specific critic.
    """
    wm = safety.world_model
    deter_dim = wm.config.deter_dim

    def score(observations: np.ndarray, candidates: torch.Tensor) -> torch.Tensor:
        m, k, a = candidates.shape
        feats = torch.as_tensor(np.asarray(observations), dtype=torch.float32,
                                device=safety.device).reshape(m, -1)
        if feats.shape[1] != wm.feature_dim:
            raise ValueError(f"reward_scorer needs the latent features ({wm.feature_dim},) the "
                             f"agent sees, got observations of shape {tuple(feats.shape[1:])}")
        rep = feats.repeat_interleave(k, dim=0)
        stoch = rep[:, deter_dim:]
        state = LatentState(deter=rep[:, :deter_dim], stoch=stoch, mean=stoch,
                            std=torch.zeros_like(stoch))
        acts = candidates.reshape(m * k, a).to(device=safety.device, dtype=torch.float32)
        with torch.no_grad():
            nxt = wm.img_step(state, acts, sample=False)
            reward = wm.predict_reward(nxt.features)
        return reward.view(m, k).to(candidates.device)

    return score


def bind_observations(scorer: ObservationScorer | None, observations: np.ndarray | None
                      ) -> ActionScorer | None:
    """The filter's row-indexed scorer for a batch whose agent observations are ``observations``."""
    if scorer is None:
        return None
    if observations is None:
        raise RuntimeError("the shield has no observation to score candidates with: reset the env first")
    obs = np.asarray(observations)
    return lambda rows, cand: scorer(obs[rows.cpu().numpy()], cand)


def as_action_batch(actions: Any, num_envs: int, action_dim: int, *, single: bool | None = None,
                    what: str = "proposed actions") -> np.ndarray:
    """``actions`` as a float32 ``(num_envs, action_dim)`` array, or a ``ValueError`` naming the fix.

    Accepted layouts, never reshaped from anything else (4 values are not 2 envs x 2 dims unless
    they come as ``(2, 2)``): ``single=None``: ``(N, A)``, or ``(A,)`` when ``N == 1``;
    ``single=True``: ``(A,)`` only (one Gymnasium env); ``single=False``: ``(N, A)`` only (a
    VecEnv). NaN and inf are refused, not replaced: nothing is stepped or filtered with them.
    """
    try:
        arr = np.asarray(actions, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numbers of shape ({num_envs}, {action_dim}), got "
                         f"{type(actions).__name__} ({exc}).") from exc
    batch, one = (int(num_envs), int(action_dim)), (int(action_dim),)
    if single is True:
        ok, expected = arr.shape == one, f"{one} (one env)"
    elif single is False:
        ok, expected = arr.shape == batch, f"{batch} (num_envs, action_dim)"
    else:
        ok = arr.shape == batch or (num_envs == 1 and arr.shape == one)
        expected = f"{batch} (num_envs, action_dim)" + (f" or {one}" if num_envs == 1 else "")
    if not ok:
        raise ValueError(
            f"{what} must have shape {expected}, got {arr.shape}: pass one row of {action_dim} "
            "values per env (lbwrap never reshapes actions, so a wrong layout cannot pass as "
            "another).")
    finite = np.isfinite(arr)
    if not finite.all():
        rows = np.flatnonzero(~finite.reshape(batch).all(axis=1)).tolist()
        raise ValueError(
            f"{what}: NaN or inf values (env rows {rows}), which lbwrap refuses before the env "
            "or the world model sees them. A policy that outputs NaN has diverged: check its "
            "losses and learning rate; if non-finite values are expected, replace them before "
            "stepping, e.g. np.nan_to_num(actions).")
    return arr.reshape(batch)


def shield_decision(
    safety: LatentSafetyModel, state: Any, proposed: np.ndarray, embed: torch.Tensor | None = None,
    scorer: ActionScorer | None = None,
) -> ShieldDecision:
    """Run the safe-action filter on a batch when ``safety.ready``; pass proposals through (clipped) otherwise.

    ``state``: the current :class:`~lbwrap.latent_state.LatentState` of N envs (batch first, in
    the model's dtype, float32 unless the model was converted); ``proposed``: ``(N, A)``, or
    ``(A,)`` when N is 1 (any other shape is refused, see :func:`as_action_batch`; so are NaN and
    inf). ``embed``: the encoder embeddings of the current frames (``LatentTracker.embed``, (N, E)),
    needed by the action-conditioned shield. ``scorer``: picks a replaced proposal's substitute
    among the passing candidates (:class:`~lbwrap.barrier.SafeActionFilter`; ``None``: the
    closest). Bad input raises ``TypeError``/``ValueError`` whether or not the model is ready.
    """
    deter = getattr(state, "deter", None)
    if not isinstance(deter, torch.Tensor) or deter.dim() < 2:
        raise TypeError(
            f"state must be a batched LatentState (deter of shape (N, H)), got "
            f"{type(state).__name__}: pass the wrapper's or tracker's latent_state.")
    dtype = next(safety.world_model.parameters()).dtype
    tensors = [(f"state.{name}", getattr(state, name, None))
               for name in ("deter", "stoch", "mean", "std")]
    if embed is not None:
        tensors.append(("embed", embed))
    for name, tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.dtype != dtype:
            raise TypeError(
                f"{name} is {tensor.dtype} but the safety model computes in {dtype}: convert it "
                f"first, e.g. state.map(lambda t: t.to({dtype})) and embed.to({dtype}) "
                "(lbwrap's trackers and wrappers produce latents in the model's dtype).")
    n = int(deter.shape[0])
    if embed is not None and tuple(embed.shape[:1]) != (n,):
        raise ValueError(f"embed has shape {tuple(embed.shape)}, the state holds {n} envs: pass "
                         "the embeddings of the same envs (LatentTracker.embed).")
    low = safety.action_low.cpu().numpy()
    high = safety.action_high.cpu().numpy()
    proposed = as_action_batch(proposed, n, safety.action_dim)
    clipped = np.clip(proposed, low, high)
    if not safety.ready:
        nan = np.full(n, np.nan, np.float32)
        return ShieldDecision(clipped, np.zeros(n, bool), False, nan, nan.copy(), nan.copy(),
                              np.ones(n, bool))
    was_training = safety.training
    safety.eval()
    try:
        with torch.no_grad():
            result = safety.shield_filter(state.to(safety.device),
                                          torch.as_tensor(clipped, device=safety.device),
                                          embed=None if embed is None else embed.to(safety.device),
                                          scorer=scorer)
    finally:
        safety.train(was_training)
    executed = np.clip(result.actions.float().cpu().numpy(), low, high)
    return ShieldDecision(
        executed=executed,
        intervened=result.intervened.cpu().numpy().astype(bool),
        active=True,
        b_now=result.b_now.float().cpu().numpy(),
        b_next_proposed=result.b_next_proposed.float().cpu().numpy(),
        b_next_executed=result.b_next_executed.float().cpu().numpy(),
        feasible=result.feasible.cpu().numpy().astype(bool),
    )


def barrier_values(safety: LatentSafetyModel, state: Any) -> np.ndarray:
    """B(z) for a batch of latent states, as float32 numpy (no gradients)."""
    with torch.no_grad():
        return safety.barrier.value(state.to(safety.device)).float().cpu().numpy().reshape(-1)


def barrier_penalty(
    safety: LatentSafetyModel, b_prev: np.ndarray, b_next: np.ndarray, is_first: np.ndarray,
    mode: Literal["decrease", "margin"] = "decrease",
) -> np.ndarray:
    """Non-negative penalty per env for reaching a state with barrier value ``b_next``.

    ``margin``: ``relu(eps - B(z'))``. ``decrease``: ``relu(eps - ((B(z') - B(z)) / dt + alpha B(z')))``
    (the violated discrete-time CBF condition), which falls back to ``margin`` where the
    transition starts an episode.
    """
    cfg = safety.config.barrier  # B(z)'s own margin, never the shield's (it may be on a logit scale)
    margin = np.maximum(cfg.eps - b_next, 0.0)
    if mode == "margin":
        return margin.astype(np.float32)
    if mode != "decrease":
        raise ValueError(f"mode must be 'decrease' or 'margin', got {mode!r}")
    lhs = (b_next - b_prev) / cfg.dt + cfg.alpha * b_next
    decrease = np.maximum(cfg.eps - lhs, 0.0)
    return np.where(np.asarray(is_first, bool), margin, decrease).astype(np.float32)
