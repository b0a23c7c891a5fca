"""Experimental options: settings whose measured effect was nil, kept so they can be measured again.

Each host keeps its experimental options in one field, ``experimental``, that holds one of the
dataclasses below. The defaults are what lbwrap does; a non-default value switches the option
on::

    from lbwrap.experimental import FilterExperimental, WorldModelExperimental
    WorldModelConfig(experimental=WorldModelExperimental(kl_balance=0.8))
    FilterConfig(experimental=FilterExperimental(proposal_fallback=True))

- :class:`~lbwrap.world_model.WorldModelConfig`: :class:`WorldModelExperimental`
  (``kl_balance``);
- :class:`~lbwrap.safety_model.SafetyModelConfig`: :class:`SafetyModelExperimental`
  (``ready_release_accuracy``);
- :class:`~lbwrap.barrier.FilterConfig`: :class:`FilterExperimental` (``proposal_fallback``);
- :class:`~lbwrap.sb3.recipes.AgentRecipe`: :class:`RecipeExperimental` (``refresh_every``,
  which adds a :class:`~lbwrap.sb3.LatentRefresher`).

The measurements behind each are linked from the documentation page *Experimental options*
(``docs/experimental.md``).

Old spellings. The options were plain fields of their hosts before (``WorldModelConfig(
kl_balance=0.8)``, ``SafetyModelConfig(ready_release_accuracy=0.7)``, ``FilterConfig(
fallback="proposal")``, ``AgentRecipe(refresh_every=1000)``). Until the next release the old
keyword is still accepted: with a non-default value it emits a ``DeprecationWarning`` that names
the new spelling and sets the experimental option; with its old default it is accepted silently.
Reading a dict or a checkpoint (``WorldModelConfig.from_dict``, ``FilterConfig.from_dict``,
``LatentSafetyModel.load``) takes the old keys silently, so files written before the move load
with the same settings. After construction the old attribute reads ``None``: the value lives in
``experimental``.

Pure Python (no torch, Gymnasium or SB3).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

__all__ = [
    "FilterExperimental",
    "RecipeExperimental",
    "SafetyModelExperimental",
    "WorldModelExperimental",
]

#: Where the measurements are listed (named in every warning and error of this module).
DOCS_PAGE = "docs/experimental.md"

_Options = TypeVar("_Options", "WorldModelExperimental", "SafetyModelExperimental",
                   "FilterExperimental", "RecipeExperimental")


@dataclass
class WorldModelExperimental:
    """Experimental options of :class:`~lbwrap.world_model.WorldModelConfig`."""

    kl_balance: float | None = None
    """``None``: the plain KL(q || p) (PlaNet, the paper). A number ``a`` in (0, 1): DreamerV2's KL
    balancing, ``a * KL(sg(q) || p) + (1 - a) * KL(q || sg(p))`` (each clamped at ``free_nats``):
    the prior moves towards the posterior faster than the posterior is pulled to the prior. It
    changes only the loss, not the function the weights compute."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the invalid option."""
        value = self.kl_balance
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0.0 < value < 1.0):
            raise ValueError(f"WorldModelExperimental.kl_balance must be None or a number in "
                             f"(0, 1), got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the options (for logging and checkpoints)."""
        return asdict(self)


@dataclass
class SafetyModelExperimental:
    """Experimental options of :class:`~lbwrap.safety_model.SafetyModelConfig`."""

    ready_release_accuracy: float | None = None
    """Hysteresis of the readiness gate: once open, it stays open while the accuracies stay at or
    above this value (at most the host's ``ready_accuracy``, checked by the host). ``None``: the
    gate closes as soon as they fall below ``ready_accuracy``. Whether the gate was open is saved
    with the model (files of checkpoint version 1 load it closed)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the invalid option."""
        value = self.ready_release_accuracy
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0.0 <= value <= 1.0):
            raise ValueError(f"SafetyModelExperimental.ready_release_accuracy must be None or a "
                             f"number in [0, 1], got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the options (for logging and checkpoints)."""
        return asdict(self)


@dataclass
class FilterExperimental:
    """Experimental options of :class:`~lbwrap.barrier.FilterConfig`."""

    proposal_fallback: bool = False
    """What the shield executes when no candidate passes its predictor's condition. ``False``: the
    candidate with the largest worst-case predicted B. ``True``: the unchanged (clipped) proposal,
    which then does not count as replaced (the old ``fallback="proposal"``)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the invalid option."""
        if not isinstance(self.proposal_fallback, bool):
            msg = f"FilterExperimental.proposal_fallback must be a bool, got {self.proposal_fallback!r}"
            raise ValueError(msg)  # noqa: TRY004  (config validation raises ValueError throughout)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the options (for logging and checkpoints)."""
        return asdict(self)


@dataclass
class RecipeExperimental:
    """Experimental options of :class:`~lbwrap.sb3.recipes.AgentRecipe`."""

    refresh_every: int = 0
    """SB3 timesteps (agent steps, all envs together) between re-filterings of the latents in
    SB3's replay buffer with the current world model (a :class:`~lbwrap.sb3.LatentRefresher`
    after the co-training callback); 0 adds none (stored latents stay as they were computed)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the invalid option."""
        value = self.refresh_every
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"RecipeExperimental.refresh_every must be an int >= 0 (0: off), "
                             f"got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the options (for logging and checkpoints)."""
        return asdict(self)


def as_experimental(value: Any, cls: type[_Options], host: str) -> _Options:
    """``value`` as ``cls``: an instance as it is, a dict (e.g. from a checkpoint) as keyword
    arguments (an unknown key raises ``ValueError``), ``None`` as the defaults; anything else
    raises ``TypeError`` naming ``host``."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{host}.experimental: unknown options {unknown}; {cls.__name__} "
                             f"has {sorted(known)} ({DOCS_PAGE})")
        return cls(**value)
    raise TypeError(f"{host}.experimental must be a {cls.__name__} (lbwrap.experimental) or a "
                    f"dict of its options, got {type(value).__name__}")


def move_deprecated_option(host: Any, old: str, new: str, default: Any,
                           converted: Any = None) -> None:
    """Move the deprecated keyword ``host.<old>`` into ``host.experimental.<new>``.

    Called from the host's ``__post_init__``; the warning points at the first caller outside
    lbwrap (e.g. the script that called ``LatentSafetyModel.for_env(..., old=...)``).
    ``host.<old>`` is ``None`` when the keyword was not given (nothing happens). A given value
    equal to ``default`` (the old field's default) is dropped silently; another one becomes
    ``host.experimental.<new>`` (as ``converted`` when that is not ``None``), with a
    ``DeprecationWarning`` naming the new spelling. A value given both ways raises
    ``ValueError``. Afterwards ``host.<old>`` is ``None``.
    """
    value = getattr(host, old)
    if value is None:
        return
    setattr(host, old, None)
    if value == default:
        return
    target = value if converted is None else converted
    options = host.experimental
    cls_name, host_name = type(options).__name__, type(host).__name__
    spelling = f"{host_name}(experimental={cls_name}({new}={target!r}))"
    current = getattr(options, new)
    if current != getattr(type(options)(), new) and current != target:
        raise ValueError(f"{host_name}: {old}={value!r} and experimental.{new}={current!r} "
                         f"disagree; give the option once, as {spelling}")
    warnings.warn(
        f"{host_name}({old}={value!r}) is deprecated: it is an experimental option (measured to "
        f"have no effect, see {DOCS_PAGE}) and moved to {spelling}. The old keyword is accepted "
        "until the next release.", DeprecationWarning, stacklevel=_outside_lbwrap())
    host.experimental = replace(options, **{new: target})


def move_deprecated_key(data: dict[str, Any], old: str, new: str, default: Any,
                        converted: Any = None) -> dict[str, Any]:
    """A copy of the dict ``data`` (a host's saved settings) with the old key ``old`` moved into
    ``data["experimental"][new]``, silently: files written before the move load with the same
    settings. A missing key, ``None`` or ``default`` is dropped; another value is stored (as
    ``converted`` when that is not ``None``) unless ``experimental`` already sets the option."""
    out = dict(data)
    if old not in out:
        return out
    value = out.pop(old)
    if value is None or value == default:
        return out
    experimental = out.get("experimental")
    experimental = {} if experimental is None else dict(
        experimental if isinstance(experimental, dict) else asdict(experimental))
    experimental.setdefault(new, value if converted is None else converted)
    out["experimental"] = experimental
    return out


def _outside_lbwrap() -> int:
    """The ``stacklevel``, for the function that calls this one, of the first frame outside lbwrap
    (dataclass-generated ``__init__`` methods run in their module's namespace, so they count as
    lbwrap's)."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] \
            == "lbwrap":
        frame = frame.f_back
        level += 1
    return level
