"""Models: one generic Flax NNX decoder with exposed FFN neurons and interventions as data."""

from jaxvalues.models.config import ModelConfig, RopeConfig
from jaxvalues.models.decoder import Decoder, lm_apply, lm_logits, positions_from_mask
from jaxvalues.models.intervention import Intervention
from jaxvalues.models.lm import ForwardOutput, LanguageModel, pad_batch

__all__ = ["Decoder", "ForwardOutput", "Intervention", "LanguageModel", "ModelConfig", "RopeConfig", "lm_apply",
           "lm_logits", "pad_batch", "positions_from_mask"]
