"""Generator-aware sampling helpers that work whatever device the generator lives on."""

from __future__ import annotations

import torch

__all__ = ["rand", "randint", "randn"]


def _gen_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def rand(
    shape: tuple[int, ...],
    *,
    device: torch.device,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Uniform [0, 1) samples drawn with ``generator`` and moved to ``device``."""
    out = torch.rand(shape, generator=generator, device=_gen_device(generator, device), dtype=dtype)
    return out.to(device)


def randn(
    shape: tuple[int, ...],
    *,
    device: torch.device,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard normal samples drawn with ``generator`` and moved to ``device``."""
    gen_device = _gen_device(generator, device)
    out = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
    return out.to(device)


def randint(
    high: int,
    size: int,
    *,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``size`` indices in [0, high): without replacement when ``size <= high``."""
    gen_device = _gen_device(generator, device)
    if size <= high:
        out = torch.randperm(high, generator=generator, device=gen_device)[:size]
    else:
        out = torch.randint(high, (size,), generator=generator, device=gen_device)
    return out.to(device)
