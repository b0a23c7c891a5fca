"""Configuration of the RSSM world model (PlaNet sizes by default)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lbwrap.experimental import (
    WorldModelExperimental,
    as_experimental,
    move_deprecated_key,
    move_deprecated_option,
)

__all__ = ["ACTIVATIONS", "SUPPORTED_IMAGE_SIZES", "WorldModelConfig"]

#: Square image sizes the conv encoder/decoder are built for.
SUPPORTED_IMAGE_SIZES: tuple[int, ...] = (32, 64)
#: Names accepted by ``activation`` / ``cnn_activation``.
ACTIVATIONS: tuple[str, ...] = ("elu", "relu", "silu", "tanh")


@dataclass
class WorldModelConfig:
    """Sizes and loss settings of :class:`lbwrap.world_model.WorldModel`.

    The defaults are the paper's (PlaNet) values: 64x64x3 images, conv depth 32
    (channels 32, 64, 128, 256 -> 1024-d embedding), GRU 200, stochastic latent 30,
    hidden 200, ``std = softplus(x) + 0.1``, free nats 3, 5-bit images, reward and
    cost heads with ``head_layers`` hidden layers of ``head_hidden_dim`` ELU units.
    """

    image_size: int = 64
    image_channels: int = 3
    action_dim: int = 2
    cnn_depth: int = 32
    deter_dim: int = 200
    stoch_dim: int = 30
    hidden_dim: int = 200
    head_hidden_dim: int = 200
    head_layers: int = 2
    min_std: float = 0.1
    free_nats: float = 3.0
    bit_depth: int = 5
    image_weight: float = 1.0
    reward_weight: float = 1.0
    cost_weight: float = 1.0
    kl_weight: float = 1.0
    kl_balance: float | None = field(default=None, repr=False)
    """Deprecated keyword, accepted until the next release: KL balancing is experimental and
    moved to ``experimental=WorldModelExperimental(kl_balance=...)``
    (:class:`~lbwrap.experimental.WorldModelExperimental`). A value given here is moved there
    (with a ``DeprecationWarning`` unless it is ``None``); the attribute then reads ``None``."""
    activation: str = "elu"
    cnn_activation: str = "relu"
    experimental: WorldModelExperimental = field(default_factory=WorldModelExperimental)
    """Options measured to have no effect (:mod:`lbwrap.experimental`); a dict is converted."""

    def __post_init__(self) -> None:
        self.experimental = as_experimental(self.experimental, WorldModelExperimental,
                                            "WorldModelConfig")
        move_deprecated_option(self, "kl_balance", "kl_balance", default=None)
        self.validate()

    # ------------------------------------------------------------------ presets
    @classmethod
    def paper(cls, action_dim: int = 2, **overrides: Any) -> WorldModelConfig:
        """The paper's sizes (PlaNet RSSM) for ``action_dim`` actions."""
        return cls(action_dim=action_dim, **overrides)

    @classmethod
    def cpu(cls, action_dim: int = 2, **overrides: Any) -> WorldModelConfig:
        """A CPU-friendly preset: conv depth 8 (channels 8, 16, 32, 64), GRU 128, hidden 128,
        heads 128, z 30.

        Measured on the 2-core CPU (one torch thread, B=16, L=32, machine shared): 0.24 s of CPU
        time per update versus 1.37 s for :meth:`paper` (~5.7x cheaper; ``cnn_depth=16``: 0.46 s,
        ~3x). On a synthetic hazard arena it reached the same held-out image loss and cost-head
        separation as depth 16 after 900 updates (depth 16 fits the training data better).
        ``cost_weight=100`` (the paper uses 1): see the comment below.
        """
        params: dict[str, Any] = {
            "action_dim": action_dim,
            "cnn_depth": 8,
            "deter_dim": 128,
            "stoch_dim": 30,
            "hidden_dim": 128,
            "head_hidden_dim": 128,
            # The summed pixel loss (~100-500) drowns a cost MSE of ~1: with weight 1 the cost
            # head stays at the mean and the barrier sees no hazard information. Measured on
            # PixelHazard (level 2, egocentric, 600 updates): held-out barrier balanced accuracy
            # 0.55 with weight 1, 0.89 with weight 100 (benchmarks/core_speed.py).
            "cost_weight": 100.0,
        }
        params.update(overrides)
        return cls(**params)

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        positive_ints = (
            "image_channels", "action_dim", "cnn_depth", "deter_dim", "stoch_dim",
            "hidden_dim", "head_hidden_dim", "head_layers",
        )
        for name in positive_ints + ("image_size", "bit_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                msg = f"WorldModelConfig.{name} must be an int, got {value!r}"
                raise ValueError(msg)  # noqa: TRY004
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"WorldModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size not in SUPPORTED_IMAGE_SIZES:
            raise ValueError(
                f"WorldModelConfig.image_size={self.image_size} is not supported; "
                f"use one of {SUPPORTED_IMAGE_SIZES} (resize observations to match)"
            )
        if not 1 <= self.bit_depth <= 8:
            raise ValueError(f"WorldModelConfig.bit_depth must be in 1..8, got {self.bit_depth}")
        for name in ("min_std", "free_nats", "image_weight", "reward_weight", "cost_weight",
                     "kl_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                msg = f"WorldModelConfig.{name} must be a number, got {value!r}"
                raise ValueError(msg)  # noqa: TRY004
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"WorldModelConfig.{name} must be finite and >= 0, got {value}")
        if self.min_std <= 0:
            raise ValueError(f"WorldModelConfig.min_std must be > 0, got {self.min_std}")
        self.experimental.validate()
        for name in ("activation", "cnn_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(
                    f"WorldModelConfig.{name}={getattr(self, name)!r}; choose from {ACTIVATIONS}"
                )

    # ---------------------------------------------------------- serialisation
    @property
    def feature_dim(self) -> int:
        """Size of ``cat([deter, stoch])``."""
        return self.deter_dim + self.stoch_dim

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (what checkpoints store; without the deprecated ``kl_balance`` key)."""
        out = asdict(self)
        del out["kl_balance"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``. A ``kl_balance`` key
        (files written before it became experimental) is read as ``experimental.kl_balance``,
        without a warning."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown WorldModelConfig fields: {unknown}")
        return cls(**move_deprecated_key(data, "kl_balance", "kl_balance", default=None))

    def differences(self, other: WorldModelConfig) -> list[str]:
        """Names of the fields whose values differ between ``self`` and ``other``."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]
