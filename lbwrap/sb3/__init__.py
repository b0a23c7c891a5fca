"""Stable-Baselines3 adapters: VecEnv wrappers, the co-training and latent-refresh callbacks,
BarrierSAC, Lagrangian, checkpoint sets and the pixel-acting ``SafePixelAgent``.

Everything that imports ``stable_baselines3`` lives here; lower layers never import it.
"""

from lbwrap.sb3.callback import CoTrainCallback
from lbwrap.sb3.checkpoint import (
    AgentSettings,
    CheckpointError,
    CheckpointSet,
    find_checkpoint,
    save_checkpoint_set,
)
from lbwrap.sb3.config import (
    AgentSection,
    CoTrainSection,
    EnvSection,
    RunSection,
    SafetySection,
    TrainConfig,
    preset_config,
)
from lbwrap.sb3.critic_scorer import critic_scorer
from lbwrap.sb3.executed_actions import ExecutedActionRelabel
from lbwrap.sb3.guard import (
    NonFiniteGuard,
    NonFiniteWeightsError,
    check_finite,
    explain_nonfinite,
    nonfinite_models,
)
from lbwrap.sb3.lagrangian import (
    LagrangianLoggerCallback,
    VecLagrangianPenalty,
    find_vec_lagrangian,
)
from lbwrap.sb3.pixel_agent import PixelAgentState, SafePixelAgent
from lbwrap.sb3.policy import (
    BarrierSAC,
    BarrierSACPolicy,
    action_barrier_actor_loss,
    barrier_actor_loss,
)
from lbwrap.sb3.recipes import AgentRecipe, SafeAgent, build_safe_agent
from lbwrap.sb3.refresh import LatentRefresher
from lbwrap.sb3.vec_wrappers import (
    VecBarrierPenalty,
    VecBarrierShield,
    VecLatentObservation,
    VecRewardScale,
    find_vec_latent,
)

__all__ = [
    "AgentRecipe",
    "AgentSection",
    "AgentSettings",
    "BarrierSAC",
    "BarrierSACPolicy",
    "CheckpointError",
    "CheckpointSet",
    "CoTrainCallback",
    "CoTrainSection",
    "EnvSection",
    "ExecutedActionRelabel",
    "LagrangianLoggerCallback",
    "LatentRefresher",
    "NonFiniteGuard",
    "NonFiniteWeightsError",
    "PixelAgentState",
    "RunSection",
    "SafeAgent",
    "SafePixelAgent",
    "SafetySection",
    "TrainConfig",
    "VecBarrierPenalty",
    "VecBarrierShield",
    "VecLagrangianPenalty",
    "VecLatentObservation",
    "VecRewardScale",
    "action_barrier_actor_loss",
    "barrier_actor_loss",
    "build_safe_agent",
    "check_finite",
    "critic_scorer",
    "explain_nonfinite",
    "find_checkpoint",
    "find_vec_lagrangian",
    "find_vec_latent",
    "nonfinite_models",
    "preset_config",
    "save_checkpoint_set",
]
