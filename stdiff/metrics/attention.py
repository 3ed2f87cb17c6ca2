"""Attention against the temporal kernel: does a layer attend from frame i to frame j as much as
Γ correlates them? (Fu et al. 2024, Fig. 3: attention heatmaps resemble Γ.)"""

from __future__ import annotations

import torch
from torch import Tensor


def temporal_map(weights: Tensor, frames: int) -> Tensor:
    """Frame-to-frame attention ``(H, T, T)`` from captured weights ``(H, L, L)``: L = T as is;
    L = T·P (joint attention over patches) summed over key patches and averaged over query
    patches, so rows still sum to 1."""
    h, length, _ = weights.shape
    if length == frames:
        return weights
    if length % frames:
        raise ValueError(f"attention over {length} tokens is not over {frames} frames")
    p = length // frames
    return weights.reshape(h, frames, p, frames, p).sum(-1).mean(2)


def attention_alignment(weights: Tensor, gamma: Tensor) -> dict[str, Tensor]:
    """Per-head agreement of frame attention ``weights (H, T, T)`` with the temporal covariance
    ``gamma (T, T)``: ``pearson``, the correlation of their off-diagonal entries (1 = same
    shape), and ``rel_frob``, ‖A − Γ̃‖_F / ‖Γ̃‖_F with Γ̃ = Γ scaled so that its rows sum to 1 like
    attention rows (0 = identical). Each ``(H,)``."""
    gamma = gamma.to(weights)
    t = gamma.shape[0]
    off = ~torch.eye(t, dtype=torch.bool, device=weights.device)
    a = weights[:, off]  # (H, T(T−1))
    g = gamma[off][None]
    a_c, g_c = a - a.mean(1, keepdim=True), g - g.mean(1, keepdim=True)
    pearson = (a_c * g_c).sum(1) / (a_c.norm(dim=1) * g_c.norm(dim=1)).clamp_min(1e-12)
    target = gamma / gamma.sum(1, keepdim=True)
    rel_frob = (weights - target).flatten(1).norm(dim=1) / target.norm()
    return {"pearson": pearson, "rel_frob": rel_frob}


def frame_attention(net: torch.nn.Module, *inputs: Tensor, frames: int) -> dict[str, Tensor]:
    """Frame-to-frame attention ``(H, T, T)`` of every attention unit of ``net`` that attends over
    time or over all tokens (as each ``MultiHeadAttention`` declares in ``axis``; spatial units are
    left out), from one forward pass ``net(*inputs)``; keys are the units' module paths."""
    from stdiff.nn.attention import MultiHeadAttention, capture_attention

    axes = {name: m.axis for name, m in net.named_modules() if isinstance(m, MultiHeadAttention)}
    with capture_attention(net) as maps:
        net(*inputs)
    return {name: temporal_map(w, frames) for name, w in maps.items() if axes[name] != "space"}
