"""Gymnasium wrappers around a :class:`~lbwrap.safety_model.LatentSafetyModel`.

``LatentObservation`` (pixels -> latent features), ``BarrierShield`` (action reshaping) and
``BarrierPenalty`` (reward reshaping). VecEnv versions for SB3 live in :mod:`lbwrap.sb3`.
"""

from lbwrap.wrappers.latent import LatentObservation, find_latent_observation
from lbwrap.wrappers.penalty import BarrierPenalty
from lbwrap.wrappers.shield import BarrierShield

__all__ = ["BarrierPenalty", "BarrierShield", "LatentObservation", "find_latent_observation"]
