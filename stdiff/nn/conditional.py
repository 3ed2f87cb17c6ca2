"""``ConditionalDiT``: a DiT that also reads the observed values and where they are.

Each token is embedded from three patches instead of one: the noisy sample x_t where missing (zero
where observed), the observed values (zero where missing) and the mask (1 where observed), the CSDI
recipe (Tashiro et al. 2021) with DiT's patch tokens: the attention plug-ins, positions and blocks
are the DiT's, unchanged. Trained with a mask strategy (``DiffusionModule(mask=…)``), its loss
counts only the missing entries.

x_t is hidden where observed because nothing keeps it meaningful there: in training those entries
are noised observations, but in sampling they follow the network's untrained output and drift far
from that, which miscalibrated the missing entries next to observed ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stdiff.nn.dit import DiT, patchify


class ConditionalDiT(DiT):
    """``DiT`` with ``forward(x (B, T, *space), c (B,), observed=None, mask=None)``; without
    ``observed`` and ``mask`` it sees an empty mask (nothing observed). Arguments as for ``DiT``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        features = self.embed.in_features
        self.embed = nn.Linear(3 * features, self.embed.out_features)  # x_t, observed values, mask
        self.reset_parameters()

    def patch_features(self, x: Tensor, observed: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if (observed is None) != (mask is None):
            raise ValueError("ConditionalDiT needs both observed and mask, or neither")
        if mask is None:
            observed = mask = torch.zeros_like(x)
        if tuple(mask.shape) != tuple(x.shape) or tuple(observed.shape) != tuple(x.shape):
            raise ValueError(f"observed and mask must be shaped like x {tuple(x.shape)}, got "
                             f"{tuple(observed.shape)} and {tuple(mask.shape)}")  # fmt: skip
        mask = mask.to(x.dtype)
        parts = [patchify(v, self.patch) for v in (x * (1 - mask), observed * mask, mask)]
        return torch.cat(parts, dim=-1)  # (B, T, P, 3·prod(patch))
