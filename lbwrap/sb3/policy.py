"""``BarrierSAC``: SAC whose actor objective carries the paper's latent barrier term.

The paper trains a Dreamer actor with ``actor loss = -(returns) + eta * barrier loss``. Here the
agent is Stable-Baselines3's SAC and the barrier term is added to SAC's own actor loss::

    safety = LatentSafetyModel.for_env(pixel_env, seed=0)
    env = BarrierShield(LatentObservation(pixel_env, safety), safety)     # shield optional
    model = BarrierSAC("MlpPolicy", env, safety=safety, barrier_weight=1.0, barrier_horizon=5)
    model.learn(10_000, callback=CoTrainCallback(safety))
    model.save("agent.zip")
    loaded = BarrierSAC.load("agent.zip")      # loaded.safety: the complete safety model

For each sampled batch of latent observations ``z_0 = cat(deter, stoch_mean)``, the *current*
actor is rolled ``barrier_horizon`` steps through the world model's prior (``img_step`` with
``sample=False``; reparameterised actions, so gradients reach the actor), and::

    barrier_loss = mean_t relu(eps - ((B(z_{t+1}) - B(z_t)) / dt + alpha B(z_{t+1})))
                 + mean_t relu(eps - B(z_{t+1}))

(``eps``, ``dt``, ``alpha`` from ``safety.config.barrier``: the margin B(z) was trained with. The
shield's margin is not used: with the default action-barrier shield it lives on that network's
logit scale, not on B's.)
``barrier_weight * barrier_loss`` is added to SAC's actor loss only while ``safety.ready``
(an untrained barrier is noise) or with ``barrier_always=True``. SB3's ``SAC.train`` runs
unchanged: the term's gradient joins the actor's before each actor step (see
:meth:`BarrierSAC.train`). The world model and barrier
are frozen while the term is built, so the actor step neither updates nor leaves gradients on
them; they keep learning from real data through :class:`~lbwrap.sb3.CoTrainCallback`.

The action form (``barrier_term="action"``, :func:`action_barrier_actor_loss`). B(z) at the
prior cannot tell, at a hazard's edge, the action that enters from the one that moves away (see
:mod:`lbwrap.barrier.action_barrier`), so the imagined term barely moves the actor. The action
form reads the safety model's *latent action barrier* ``B_next(z, a)`` (the action barrier's
multi-step unsafe targets, learned on the same latent features the agent observes) at the
actor's own action: ``barrier_loss = mean relu(margin - B_next(z_0, pi(z_0)))``. It is zero
where the shield would pass the action and otherwise pushes the action along ``dB_next/da``,
so the actor learns to steer before the shield has to step in.

Persistence: the policy owns the safety model as its submodule ``safety``, so its weights
(and readiness buffers) are in ``policy.state_dict()``; the safety optimisers' states go in the
zip's ``.pth`` files too. The live object (and its pixel replay) is never pickled: the zip's
data only holds ``safety_spec`` (config, action box, seed, update counters), from which
:meth:`BarrierSAC.load` rebuilds the model before SB3 loads the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper
from stable_baselines3.sac.policies import SACPolicy
from torch.nn import functional as F

from lbwrap.barrier.losses import decrease_lhs
from lbwrap.latent_state import LatentState, rollout
from lbwrap.safety_model import LatentSafetyModel, SafetyModelConfig
from lbwrap.sb3.vec_wrappers import VecLatentObservation
from lbwrap.world_model.rssm import LOSS_ONLY_FIELDS
from lbwrap.wrappers.latent import LatentObservation

__all__ = [
    "BARRIER_TERMS",
    "BarrierSAC",
    "BarrierSACPolicy",
    "action_barrier_actor_loss",
    "barrier_actor_loss",
    "scale_actions",
    "split_features",
]

SelfBarrierSAC = TypeVar("SelfBarrierSAC", bound="BarrierSAC")

#: The actor's barrier terms :class:`BarrierSAC` offers (``barrier_term``).
BARRIER_TERMS = ("imagined", "action")

ActorFn = Callable[[th.Tensor], th.Tensor]
"""Maps latent features (N, deter + stoch) to squashed actions in [-1, 1] (N, A)."""


# --------------------------------------------------------------------------- loss (pure torch)


def split_features(features: th.Tensor, deter_dim: int) -> LatentState:
    """Latent features ``cat(deter, stoch_mean)`` (N, D + Z) back into a :class:`LatentState`.

    ``stoch`` and ``mean`` are the stochastic part (the observation wrappers publish the
    posterior mean), ``std`` is ones (unused by ``img_step``).
    """
    deter = features[..., :deter_dim]
    stoch = features[..., deter_dim:]
    return LatentState(deter=deter, stoch=stoch, mean=stoch, std=th.ones_like(stoch))


def scale_actions(actions: th.Tensor, low: th.Tensor, high: th.Tensor) -> th.Tensor:
    """Squashed actions in [-1, 1] -> the env's box: ``low + (a + 1) * (high - low) / 2``.

    The torch (differentiable) counterpart of SB3's ``policy.unscale_action``.
    """
    return low + (actions + 1.0) * (high - low) / 2.0


@contextlib.contextmanager
def _frozen(module: th.nn.Module) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` on all of ``module``'s parameters."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


@contextlib.contextmanager
def _instance_attribute(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``obj.<name> = value`` on the instance for the block, then restore the previous state.

    An attribute the instance held before comes back; otherwise the class's attribute shows
    through again.
    """
    missing = object()
    previous = vars(obj).get(name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if previous is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, previous)


def barrier_actor_loss(
    safety: LatentSafetyModel,
    actor: ActorFn,
    features: th.Tensor,
    horizon: int,
    first_actions: th.Tensor | None = None,
) -> tuple[th.Tensor, dict[str, float]]:
    """The barrier term of the actor's loss, differentiable with respect to ``actor`` only.

    Args:
        safety: supplies the world model (prior ``img_step``), the barrier ``B`` and the
            condition's ``eps``/``dt``/``alpha`` (``safety.config.barrier``, B's own margin).
        actor: features (N, D + Z) -> squashed actions in [-1, 1], reparameterised (gradients
            must flow from the actions to the actor's parameters).
        features: latent observations ``cat(deter, stoch_mean)`` (N, D + Z).
        horizon: imagined steps (>= 1).
        first_actions: squashed actions for the first step (e.g. the SAC batch's ``actions_pi``,
            so the term shares their sample); ``None`` asks ``actor``.

    Returns:
        ``(loss, metrics)``: ``loss`` is a scalar on ``safety.device``; ``metrics`` holds
        ``barrier_actor_loss``, ``barrier_decrease_violation`` (fraction of imagined steps
        breaking the decrease condition), ``barrier_unsafe_fraction`` (fraction of imagined
        next states with ``B < 0``) and ``barrier_next_mean``.

    World-model and barrier parameters are frozen (``requires_grad=False``) while the graph is
    built, so a ``backward()`` on the result leaves no gradient on them.
    """
    if horizon < 1:
        raise ValueError(f"horizon: expected an int >= 1, actual {horizon!r}")
    wm = safety.world_model
    deter_dim = wm.config.deter_dim
    feat_dim = wm.feature_dim
    if features.dim() != 2 or features.shape[-1] != feat_dim:
        raise ValueError(
            f"features: expected shape (N, {feat_dim}) (deter {deter_dim} + stoch "
            f"{wm.config.stoch_dim}), actual {tuple(features.shape)}"
        )
    cfg = safety.config.barrier  # B(z)'s margin; never the shield's (see the module docstring)
    device = safety.device
    low = safety.action_low
    high = safety.action_high
    state = split_features(features.detach().to(device, th.float32), deter_dim)
    dec_terms: list[th.Tensor] = []
    margin_terms: list[th.Tensor] = []
    b_nexts: list[th.Tensor] = []
    def action_at(t: int, current: LatentState) -> th.Tensor:
        squashed = first_actions if t == 0 and first_actions is not None else actor(
            current.features)
        return scale_actions(squashed.to(device, th.float32), low, high)

    with _frozen(safety):
        b = safety.barrier.value(state)
        reached, _ = rollout(wm, state, horizon, action_at, sample=False)
        for next_state in reached:
            b_next = safety.barrier.value(next_state)
            dec_terms.append(F.relu(cfg.eps - decrease_lhs(b, b_next, cfg.dt, cfg.alpha)))
            margin_terms.append(F.relu(cfg.eps - b_next))
            b_nexts.append(b_next)
            b = b_next
    dec = th.stack(dec_terms)
    margin = th.stack(margin_terms)
    loss = dec.mean() + margin.mean()
    with th.no_grad():
        b_all = th.stack(b_nexts)
        metrics = {
            "barrier_actor_loss": float(loss),
            "barrier_decrease_violation": float((dec > 0).float().mean()),
            "barrier_unsafe_fraction": float((b_all < 0).float().mean()),
            "barrier_next_mean": float(b_all.mean()),
        }
    return loss, metrics


def action_barrier_actor_loss(
    safety: LatentSafetyModel,
    features: th.Tensor,
    actions: th.Tensor,
) -> tuple[th.Tensor, dict[str, float]]:
    """The action form of the actor's barrier term: ``mean relu(margin - B_next(z, a))``.

    ``B_next`` is the safety model's latent action barrier
    (:attr:`~lbwrap.safety_model.LatentSafetyModel.latent_action_barrier`: the action barrier's
    targets, learned on the latent features the agent observes), ``margin`` the action barrier's
    (:attr:`~lbwrap.barrier.action_barrier.ActionBarrierConfig.margin`, on its logit scale), so
    the term is zero where the shield would pass the action and otherwise pushes the action along
    ``dB_next/da``: the direction in which the predicted risk of the next steps falls.

    Args:
        safety: holds the latent action barrier (``SafetyModelConfig(latent_action_barrier=True)``).
        features: latent observations ``cat(deter, stoch_mean)`` (N, D + Z).
        actions: squashed actions in [-1, 1] (N, A) with gradients to the actor (SAC's
            ``actions_pi``).

    Returns:
        ``(loss, metrics)``: ``loss`` is a scalar on ``safety.device``; ``metrics`` holds
        ``barrier_actor_loss``, ``barrier_unsafe_fraction`` (share of actions with
        ``B_next < 0``), ``barrier_below_margin`` (share below the margin) and
        ``barrier_next_mean``.

    The network's parameters are frozen while the graph is built, so a ``backward()`` on the
    result leaves gradients on the actions (and the actor) only.
    """
    net = safety.latent_action_barrier
    config = safety.config.action_barrier
    if net is None or config is None:
        raise ValueError(
            "the action barrier term needs the safety model's latent action barrier: build it "
            "with SafetyModelConfig(latent_action_barrier=True) (LatentSafetyModel.for_env(env, "
            "latent_action_barrier=True))"
        )
    feat_dim = safety.config.world_model.feature_dim
    if features.dim() != 2 or features.shape[-1] != feat_dim or actions.shape[:1] != features.shape[:1]:
        raise ValueError(
            f"expected features (N, {feat_dim}) and actions (N, {safety.action_dim}), actual "
            f"{tuple(features.shape)} and {tuple(actions.shape)}"
        )
    device = safety.device
    scaled = scale_actions(actions.to(device, th.float32), safety.action_low, safety.action_high)
    with _frozen(net):  # only this network is read: the rest of the safety model stays as is
        b_next = net(features.detach().to(device, th.float32), scaled)
    below = F.relu(config.margin - b_next)
    loss = below.mean()
    with th.no_grad():
        stats = th.stack([loss.detach(), (b_next < 0).float().mean(),
                          (below > 0).float().mean(), b_next.mean()]).cpu().tolist()  # one sync
    names = ("barrier_actor_loss", "barrier_unsafe_fraction", "barrier_below_margin",
             "barrier_next_mean")
    return loss, dict(zip(names, stats, strict=True))


# --------------------------------------------------------------------------- helpers


def _env_safety_models(env: Any) -> list[LatentSafetyModel]:
    """The distinct safety models of the latent wrappers in a (Vec)Env chain that we can see.

    Walks a Gymnasium env's wrappers (``LatentObservation``), or VecEnv wrappers
    (``VecLatentObservation``) and, below a ``DummyVecEnv``, each env's Gymnasium wrappers.
    Envs in worker processes (``SubprocVecEnv``) are not inspected.
    """
    found: list[LatentSafetyModel] = []

    def add(model: Any) -> None:
        if isinstance(model, LatentSafetyModel) and all(model is not m for m in found):
            found.append(model)

    def walk_gym(sub: Any) -> None:
        while isinstance(sub, gym.Wrapper):
            if isinstance(sub, LatentObservation):
                add(sub.safety)
            sub = sub.env

    if isinstance(env, gym.Env):
        walk_gym(env)
        return found
    current = env
    while isinstance(current, VecEnvWrapper):
        if isinstance(current, VecLatentObservation):
            add(current.safety)
        current = current.venv
    if isinstance(current, DummyVecEnv):
        for sub in current.envs:
            walk_gym(sub)
    return found


def _check_compatible(safety: LatentSafetyModel, spec: dict[str, Any]) -> None:
    """Raise when ``safety`` cannot take the weights of the model ``spec`` describes."""
    saved = SafetyModelConfig(**spec["config"])
    diffs = [
        f"world_model.{name}: saved {getattr(saved.world_model, name)!r}, given "
        f"{getattr(safety.config.world_model, name)!r}"
        for name in saved.world_model.differences(safety.config.world_model)
        if name not in LOSS_ONLY_FIELDS
    ]
    for name in ("hidden_dim", "num_layers", "input"):
        mine, theirs = getattr(saved.barrier, name), getattr(safety.config.barrier, name)
        if mine != theirs:
            diffs.append(f"barrier.{name}: saved {mine!r}, given {theirs!r}")
    if saved.latent_action_barrier != safety.config.latent_action_barrier:
        diffs.append(f"latent_action_barrier: saved {saved.latent_action_barrier!r}, given "
                     f"{safety.config.latent_action_barrier!r}")
    if diffs:
        raise ValueError(
            "The safety model does not match the saved agent's (" + "; ".join(diffs) + "). "
            "Load without safety=... to rebuild the saved one, or build it with the same sizes."
        )


# --------------------------------------------------------------------------- policy


class BarrierSACPolicy(SACPolicy):
    """SAC's ``MlpPolicy`` that also owns the :class:`LatentSafetyModel` as submodule ``safety``.

    The safety model is not used in the forward pass (the actor and critics see the latent
    features through their own feature extractors); owning it puts the world model and barrier
    weights in ``policy.state_dict()`` (keys ``safety.*``) so they save and load with the agent.
    It is neither in the actor's nor the critic's optimiser, and ``set_training_mode`` leaves it
    alone (its trainers switch modes themselves). Save and load through :class:`BarrierSAC`.
    """

    safety: LatentSafetyModel | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.safety = None

    def attach_safety(self, safety: LatentSafetyModel) -> None:
        """Register ``safety`` as the submodule ``safety`` (not added to any optimiser)."""
        if not isinstance(safety, LatentSafetyModel):
            raise TypeError(f"safety must be a LatentSafetyModel, got {type(safety).__name__}.")
        self.safety = safety


MlpPolicy = BarrierSACPolicy


# --------------------------------------------------------------------------- algorithm


class BarrierSAC(SAC):
    """SAC with the latent barrier term in the actor loss; the policy owns the safety model.

    Args:
        policy: ``"MlpPolicy"`` (:class:`BarrierSACPolicy`) or a :class:`SACPolicy` subclass.
        env: an env whose observations are the safety model's latent features:
            ``LatentObservation(pixel_env, safety)`` (optionally inside ``BarrierShield``), or
            ``VecLatentObservation(venv, safety)``.
        safety: the :class:`LatentSafetyModel` the observation wrapper uses (required for a new
            model; :meth:`load` rebuilds it from the zip).
        barrier_weight: ``eta``, the weight of the barrier term (paper: 1; 0 disables it).
        barrier_horizon: imagined steps of the barrier term (>= 1).
        barrier_always: add the term even while ``safety.ready`` is False (untrained barrier).
        barrier_term: ``"imagined"`` (the paper's: B(z) along ``barrier_horizon`` steps of the
            world model's prior, :func:`barrier_actor_loss`) or ``"action"`` (the latent action
            barrier ``B_next(z, a)`` of the proposed action, :func:`action_barrier_actor_loss`;
            needs ``SafetyModelConfig(latent_action_barrier=True)``; ``barrier_horizon`` unused).
        **kwargs: SAC's arguments (``learning_rate``, ``buffer_size``, ``batch_size``, ...).

    Logged besides SAC's keys: ``train/barrier_active`` (0/1), and while active
    ``train/barrier_actor_loss``, ``train/barrier_decrease_violation``,
    ``train/barrier_unsafe_fraction``, ``train/barrier_next_mean``. ``train/actor_loss`` stays
    SAC's own part (comparable with plain SAC).

    Do not normalise observations with ``VecNormalize(norm_obs=True)``: the barrier term reads
    the features as latent states.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"MlpPolicy": BarrierSACPolicy}
    policy: SACPolicy

    def __init__(
        self,
        policy: str | type[SACPolicy],
        env: Any,
        safety: LatentSafetyModel | None = None,
        barrier_weight: float = 1.0,
        barrier_horizon: int = 5,
        barrier_always: bool = False,
        barrier_term: str = "imagined",
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        if safety is not None and not isinstance(safety, LatentSafetyModel):
            raise TypeError(f"safety must be a LatentSafetyModel, got {type(safety).__name__}.")
        if _init_setup_model and safety is None:
            raise ValueError(
                "BarrierSAC needs safety=LatentSafetyModel: the model whose latent features the "
                "env observes, e.g. safety = LatentSafetyModel.for_env(pixel_env); "
                "env = LatentObservation(pixel_env, safety); "
                "BarrierSAC('MlpPolicy', env, safety=safety)."
            )
        weight = float(barrier_weight)
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(
                f"barrier_weight: expected a finite number >= 0, actual {barrier_weight!r}"
            )
        if (
            isinstance(barrier_horizon, bool)
            or not isinstance(barrier_horizon, (int, np.integer))
            or barrier_horizon < 1
        ):
            raise ValueError(f"barrier_horizon: expected an int >= 1, actual {barrier_horizon!r}")
        if barrier_term not in BARRIER_TERMS:
            raise ValueError(f"barrier_term: expected one of {BARRIER_TERMS}, actual {barrier_term!r}")
        super().__init__(policy, env, _init_setup_model=False, **kwargs)
        self.safety = safety
        self.safety_spec: dict[str, Any] | None = None
        self.barrier_weight = weight
        self.barrier_horizon = int(barrier_horizon)
        self.barrier_always = bool(barrier_always)
        self.barrier_term = barrier_term
        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------ setup / persistence
    def _setup_model(self) -> None:
        loading = self.safety_spec is not None  # BarrierSAC.load: weights come after this
        if self.safety is None:
            if self.safety_spec is None:
                raise ValueError(
                    "BarrierSAC has no safety model: pass safety=LatentSafetyModel (or load a "
                    "zip saved by BarrierSAC.save)."
                )
            # load path: adopt the model the env's latent wrapper uses (the saved weights are
            # loaded into it), else rebuild one from the saved spec
            in_env = _env_safety_models(self.env)
            if len(in_env) == 1:
                self.safety = in_env[0]
            else:
                self.safety = self._build_safety(self.safety_spec)
        if loading:
            assert self.safety_spec is not None
            _check_compatible(self.safety, self.safety_spec)
            self._restore_counters(self.safety, self.safety_spec)
        self._check_safety()
        self._check_env_safety(self.env)
        super()._setup_model()
        policy_attach = getattr(self.policy, "attach_safety", None)
        if callable(policy_attach):
            policy_attach(self.safety)
        else:  # any SACPolicy: nn.Module registers the submodule on assignment
            self.policy.safety = self.safety
        self.safety_spec = self._safety_spec()

    def _check_safety(self) -> None:
        safety = self.safety
        assert safety is not None
        if self.barrier_term == "action" and safety.latent_action_barrier is None:
            raise ValueError(
                "BarrierSAC(barrier_term='action') reads the safety model's latent action "
                "barrier, which this one lacks: build it with "
                "LatentSafetyModel.for_env(env, latent_action_barrier=True) (or "
                "SafetyModelConfig(latent_action_barrier=True)), or use barrier_term='imagined'."
            )
        wm_cfg = safety.config.world_model
        feat = wm_cfg.feature_dim
        obs_space = self.observation_space
        if not (isinstance(obs_space, spaces.Box) and tuple(obs_space.shape) == (feat,)):
            raise ValueError(
                f"BarrierSAC observes the safety model's latent features: expected a Box of shape "
                f"({feat},) (deter {wm_cfg.deter_dim} + stoch {wm_cfg.stoch_dim}), actual "
                f"{obs_space}. Wrap the env with LatentObservation(env, safety) (or "
                "VecLatentObservation(venv, safety)) using this safety model."
            )
        act_space = self.action_space
        low = safety.action_low.cpu().numpy()
        high = safety.action_high.cpu().numpy()
        if not (
            isinstance(act_space, spaces.Box)
            and tuple(act_space.shape) == (safety.action_dim,)
            and np.allclose(act_space.low, low)
            and np.allclose(act_space.high, high)
        ):
            raise ValueError(
                f"The env's action space {act_space} does not match the safety model's action box "
                f"[{low.tolist()}, {high.tolist()}]: build the safety model for this env "
                "(LatentSafetyModel.for_env(pixel_env)) and do not rescale actions outside it."
            )
        vec_norm = getattr(self, "_vec_normalize_env", None)
        if vec_norm is not None and getattr(vec_norm, "norm_obs", False):
            raise ValueError(
                "BarrierSAC reads its observations as latent states; VecNormalize(norm_obs=True) "
                "would scramble them. Use VecNormalize(venv, norm_obs=False) or none."
            )

    def _check_env_safety(self, env: Any) -> None:
        others = [m for m in _env_safety_models(env) if m is not self.safety]
        if others:
            raise ValueError(
                "The env's LatentObservation uses another LatentSafetyModel than the agent: "
                "build the env around model.safety (LatentObservation(pixel_env, model.safety)), "
                "or load with BarrierSAC.load(path, env=env, safety=<the env's safety model>)."
            )

    def set_env(self, env: Any, force_reset: bool = True) -> None:
        """SB3's ``set_env``; the env's latent wrapper must use this agent's safety model."""
        self._check_env_safety(env)
        super().set_env(env, force_reset=force_reset)

    def _safety_spec(self) -> dict[str, Any]:
        """Plain data that rebuilds the safety model (weights come from ``policy.pth``)."""
        safety = self.safety
        assert safety is not None
        return {
            "config": safety.config.to_dict(),
            "action_low": safety.action_low.cpu().numpy().tolist(),
            "action_high": safety.action_high.cpu().numpy().tolist(),
            "num_envs": safety.num_envs,
            "seed": safety.seed,
            "force_ready": safety.force_ready,
            "world_model_trainer": {
                "num_updates": safety.wm_trainer.num_updates,
                "num_skipped": safety.wm_trainer.num_skipped,
                "grad_clip": safety.wm_trainer.grad_clip,
            },
            "barrier_trainer": {
                "num_updates": safety.barrier_trainer.num_updates,
                "num_skipped": safety.barrier_trainer.num_skipped,
            },
        }

    def _build_safety(self, spec: dict[str, Any]) -> LatentSafetyModel:
        config = SafetyModelConfig(**spec["config"])
        safety = LatentSafetyModel(
            config, spec["action_low"], spec["action_high"],
            num_envs=int(getattr(self, "n_envs", None) or spec.get("num_envs", 1)),
            device=self.device, seed=spec.get("seed"),
        )
        return safety

    @staticmethod
    def _restore_counters(safety: LatentSafetyModel, spec: dict[str, Any]) -> None:
        safety.force_ready = spec.get("force_ready")
        wm_state = spec.get("world_model_trainer", {})
        safety.wm_trainer.num_updates = int(wm_state.get("num_updates", 0))
        safety.wm_trainer.num_skipped = int(wm_state.get("num_skipped", 0))
        if "grad_clip" in wm_state:
            safety.wm_trainer.grad_clip = wm_state["grad_clip"]
        b_state = spec.get("barrier_trainer", {})
        safety.barrier_trainer.num_updates = int(b_state.get("num_updates", 0))
        safety.barrier_trainer.num_skipped = int(
            b_state.get("num_skipped", b_state.get("nonfinite_skipped", 0)))

    def save(self, path: Any, exclude: Any = None, include: Any = None) -> None:
        """SB3's ``save``; refreshes ``safety_spec`` (update counters) first."""
        if self.safety is not None:
            self.safety_spec = self._safety_spec()
        super().save(path, exclude=exclude, include=include)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "safety"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        state_dicts = [
            *state_dicts,
            "policy.safety.wm_trainer.optimizer",
            "policy.safety.barrier_trainer.optimizer",
        ]
        return state_dicts, variables

    # ------------------------------------------------------------------ barrier term
    def _barrier_active(self) -> bool:
        assert self.safety is not None  # _setup_model sets it
        return self.barrier_weight > 0 and (self.barrier_always or bool(self.safety.ready))

    @contextlib.contextmanager
    def _barrier_in_actor_step(self, metrics: list[dict[str, float]]) -> Iterator[None]:
        """Inside the block, each actor step of ``SAC.train`` also descends the barrier term.

        ``SAC.train`` (SB3 2.4 to 2.9) has no hook on its actor loss. Per gradient step it calls
        ``actor.action_log_prob(observations)`` with gradients on (``actions_pi``, the sample its
        actor loss uses), ``actor.action_log_prob(next_observations)`` under ``no_grad``, then
        ``actor.optimizer.zero_grad()``, ``actor_loss.backward()`` and ``actor.optimizer.step()``.
        The block records the gradient-enabled call's observations and actions and, right after
        ``zero_grad``, backpropagates ``barrier_weight * barrier_actor_loss(...,
        first_actions=actions_pi)``; SAC's backward then adds its own gradient, so the one step
        follows the gradient of SAC's actor loss + ``barrier_weight * barrier_loss``. Each
        step's term metrics are appended to ``metrics``.

        Raises:
            RuntimeError: (from ``SAC.train``) when a ``zero_grad`` comes without a recorded
                batch or a step without the term, i.e. SB3's ``SAC.train`` no longer calls the
                actor in this order.
        """
        safety = self.safety
        assert safety is not None  # _barrier_active was True
        actor = self.actor
        optimizer = actor.optimizer
        sample = actor.action_log_prob  # bound before patching: the barrier's own calls use it
        clear_grads = optimizer.zero_grad
        pending: list[tuple[th.Tensor, th.Tensor]] = []  # this step's (observations, actions_pi)
        added = [False]

        def action_log_prob(
            obs: th.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[th.Tensor, th.Tensor]:
            actions, log_prob = sample(obs, *args, **kwargs)
            if th.is_grad_enabled():  # the actor-loss sample; next_actions come under no_grad
                pending[:] = [(obs, actions)]
            return actions, log_prob

        def barrier_actions(features: th.Tensor) -> th.Tensor:
            return sample(features.to(self.device))[0]

        def zero_grad_then_barrier(set_to_none: bool = True) -> None:
            clear_grads(set_to_none)
            if not pending:
                raise RuntimeError(
                    "BarrierSAC: actor.optimizer.zero_grad() came before any gradient-enabled "
                    "actor.action_log_prob(): this SB3 version's SAC.train is not supported."
                )
            obs, actions_pi = pending.pop()
            if self.barrier_term == "action":
                loss, step_metrics = action_barrier_actor_loss(safety, obs, actions_pi)
            else:
                loss, step_metrics = barrier_actor_loss(
                    safety, barrier_actions, obs, self.barrier_horizon, first_actions=actions_pi
                )
            # retain_graph: SAC's actor_loss.backward() runs through actions_pi's graph next
            (self.barrier_weight * loss).backward(retain_graph=True)
            metrics.append(step_metrics)
            added[0] = True

        def require_barrier(
            _optimizer: th.optim.Optimizer, _args: tuple[Any, ...], _kwargs: dict[str, Any]
        ) -> None:
            if not added[0]:
                raise RuntimeError(
                    "BarrierSAC: an actor step without the barrier gradient (no zero_grad() "
                    "after the actor-loss sample): this SB3 version's SAC.train is not supported."
                )
            added[0] = False

        handle = optimizer.register_step_pre_hook(require_barrier)
        try:
            with _instance_attribute(actor, "action_log_prob", action_log_prob), \
                    _instance_attribute(optimizer, "zero_grad", zero_grad_then_barrier):
                yield
        finally:
            handle.remove()

    # ------------------------------------------------------------------ training
    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """SB3's ``SAC.train``; while the barrier term is active, its actor steps include it.

        Active (``barrier_weight > 0`` and ``safety.ready`` or ``barrier_always``), each gradient
        step's single actor step follows the gradient of SAC's actor loss +
        ``barrier_weight * barrier_actor_loss`` on the same minibatch, the term's first imagined
        action being the ``actions_pi`` sample of SAC's loss. Inactive, this is ``SAC.train``
        unchanged. The critic and entropy-coefficient steps are SAC's in both cases. Logs
        ``train/barrier_active`` and, while active, the term's metrics (means over the steps).
        """
        barrier_active = self._barrier_active()
        barrier_metrics: list[dict[str, float]] = []
        hooks = (
            self._barrier_in_actor_step(barrier_metrics)
            if barrier_active
            else contextlib.nullcontext()
        )
        with hooks:
            super().train(gradient_steps, batch_size)
        self.logger.record("train/barrier_active", float(barrier_active))
        if barrier_metrics:
            for key in barrier_metrics[0]:
                values = [m[key] for m in barrier_metrics]
                self.logger.record(f"train/{key}", float(np.mean(values)))
