"""The barrier-like function B(z): an MLP from a latent state to an unbounded scalar."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lbwrap.latent_state import LatentState

from .config import BarrierConfig, BarrierInput

__all__ = ["BarrierNet"]

_INPUTS = ("stoch", "features")


class BarrierNet(nn.Module):
    """MLP ``x -> hidden_dim (ReLU) x num_layers -> 1``; ``B >= 0`` safe, ``B < 0`` unsafe.

    Args:
        input_dim: size of the barrier input (``stoch`` size, or ``deter + stoch``).
        hidden_dim: width of the hidden layers.
        num_layers: number of hidden layers; 0 makes B a linear (affine) function.
        input_kind: which part of a :class:`LatentState` :meth:`value` feeds the network.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int = 200,
        num_layers: int = 3,
        input_kind: BarrierInput = "stoch",
    ) -> None:
        super().__init__()
        if input_dim < 1 or hidden_dim < 1 or num_layers < 0:
            raise ValueError(
                "expected input_dim >= 1, hidden_dim >= 1, num_layers >= 0, actual "
                f"{input_dim}, {hidden_dim}, {num_layers}"
            )
        if input_kind not in _INPUTS:
            raise ValueError(f"input_kind: expected one of {_INPUTS}, actual {input_kind!r}")
        self.input_dim = int(input_dim)
        self.hidden_dim = int(hidden_dim)
        self.num_layers = int(num_layers)
        self.input_kind: BarrierInput = input_kind
        layers: list[nn.Module] = []
        width = self.input_dim
        for _ in range(self.num_layers):
            layers += [nn.Linear(width, self.hidden_dim), nn.ReLU()]
            width = self.hidden_dim
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, config: BarrierConfig, stoch_dim: int, deter_dim: int) -> BarrierNet:
        """Build the network described by ``config`` for latents of the given sizes."""
        input_dim = stoch_dim if config.input == "stoch" else stoch_dim + deter_dim
        return cls(input_dim, config.hidden_dim, config.num_layers, config.input)

    @staticmethod
    def barrier_input(state: LatentState, input_kind: BarrierInput) -> torch.Tensor:
        """The tensor B reads from ``state``: ``stoch`` or ``cat(deter, stoch)``."""
        if input_kind == "stoch":
            return state.stoch
        if input_kind == "features":
            return state.features
        raise ValueError(f"input_kind: expected one of {_INPUTS}, actual {input_kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., input_dim) -> B (...)."""
        if x.shape[-1] != self.input_dim:
            raise ValueError(
                f"barrier input: expected last dim {self.input_dim}, actual {tuple(x.shape)}"
            )
        return self.net(x).squeeze(-1)

    def value(self, state: LatentState) -> torch.Tensor:
        """B of a latent state (any leading shape), using the configured input kind."""
        return self(self.barrier_input(state, self.input_kind))

    def checkpoint(self) -> dict[str, Any]:
        """Constructor arguments and weights, enough for :meth:`from_checkpoint`."""
        return {
            "input_dim": self.input_dim,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "input_kind": self.input_kind,
            "state_dict": self.state_dict(),
        }

    @classmethod
    def from_checkpoint(
        cls, data: dict[str, Any], map_location: torch.device | str | None = None
    ) -> BarrierNet:
        """Rebuild a network saved with :meth:`checkpoint`."""
        net = cls(data["input_dim"], data["hidden_dim"], data["num_layers"], data["input_kind"])
        state = data["state_dict"]
        if map_location is not None:
            state = {k: v.to(map_location) for k, v in state.items()}
        net.load_state_dict(state)
        return net

    def extra_repr(self) -> str:
        return f"input_kind={self.input_kind!r}"
