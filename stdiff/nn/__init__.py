"""Denoising networks and their attention plug-ins. Every implementation is imported here and
listed in ``BACKBONES`` / ``ATTENTIONS``."""

from stdiff.nn.attention import (
    Attention,
    FactorizedAttention,
    FullAttention,
    MultiHeadAttention,
    TemporalAttention,
    WindowedTemporalAttention,
    capture_attention,
)
from stdiff.nn.conditional import ConditionalDiT
from stdiff.nn.dit import Backbone, DiT
from stdiff.nn.unet import UNet

BACKBONES: dict[str, type[Backbone]] = {cls.__name__: cls for cls in (DiT, ConditionalDiT, UNet)}
ATTENTIONS: dict[str, type[Attention]] = {
    cls.__name__: cls for cls in (FullAttention, TemporalAttention, FactorizedAttention, WindowedTemporalAttention)
}

__all__ = [
    "ATTENTIONS",
    "BACKBONES",
    "Attention",
    "Backbone",
    "ConditionalDiT",
    "DiT",
    "FactorizedAttention",
    "FullAttention",
    "MultiHeadAttention",
    "TemporalAttention",
    "UNet",
    "WindowedTemporalAttention",
    "capture_attention",
]
