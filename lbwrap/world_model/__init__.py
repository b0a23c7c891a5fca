"""Pure-PyTorch latent world model (RSSM, PlaNet/Dreamer style) and sequence replay."""

from lbwrap.world_model.config import WorldModelConfig
from lbwrap.world_model.replay import SequenceReplay
from lbwrap.world_model.rssm import WorldModel, WorldModelOutput, gaussian_kl
from lbwrap.world_model.trainer import WorldModelTrainer

__all__ = [
    "SequenceReplay",
    "WorldModel",
    "WorldModelConfig",
    "WorldModelOutput",
    "WorldModelTrainer",
    "gaussian_kl",
]
