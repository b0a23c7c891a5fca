"""Latent barrier-like function B(z): network, losses, trainer, shield predictors and the filter.

Pure PyTorch; sees the world model only through :class:`lbwrap.latent_state.LatentDynamics`.
"""

from .action_barrier import ActionBarrierConfig, ActionBarrierNet, action_barrier_loss
from .config import BarrierConfig, BarrierInput, LossForm
from .filter import ActionScorer, FilterConfig, FilterResult, SafeActionFilter
from .losses import (
    CostFn,
    barrier_loss,
    compute_barrier_loss,
    decrease_lhs,
    decrease_term,
    gradient_penalty,
    group_loss,
    safe_term,
    unsafe_term,
)
from .network import BarrierNet
from .predictors import ActionBarrierPredictor, PredictorCheck, PriorPredictor, ShieldPredictor
from .rollout import Policy, imagine, uniform_actions
from .trainer import BarrierTrainer

__all__ = [
    "ActionBarrierConfig",
    "ActionBarrierNet",
    "ActionBarrierPredictor",
    "ActionScorer",
    "BarrierConfig",
    "BarrierInput",
    "BarrierNet",
    "BarrierTrainer",
    "CostFn",
    "FilterConfig",
    "FilterResult",
    "LossForm",
    "Policy",
    "PredictorCheck",
    "PriorPredictor",
    "SafeActionFilter",
    "ShieldPredictor",
    "action_barrier_loss",
    "barrier_loss",
    "compute_barrier_loss",
    "decrease_lhs",
    "decrease_term",
    "gradient_penalty",
    "group_loss",
    "imagine",
    "safe_term",
    "uniform_actions",
    "unsafe_term",
]
