"""Denoising networks and their attention plug-ins. Every implementation is imported here and
listed in ``BACKBONES`` / ``ATTENTIONS``."""

from stdiff.nn.attention import Attention, FullAttention
from stdiff.nn.dit import Backbone, DiT

BACKBONES: dict[str, type[Backbone]] = {cls.__name__: cls for cls in (DiT,)}
ATTENTIONS: dict[str, type[Attention]] = {cls.__name__: cls for cls in (FullAttention,)}

__all__ = ["ATTENTIONS", "BACKBONES", "Attention", "Backbone", "DiT", "FullAttention"]
