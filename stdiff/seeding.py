"""One seeding scheme for everything random in stdiff: data, training noise, diagnostics, sweeps.

Every random draw gets its own ``torch.Generator`` seeded by ``derive_seed(root, purpose, …)``:
NumPy's ``SeedSequence`` hashes the root seed and a spawn key into independent streams, so two
different keys never share draws, the same key always reproduces them, and nothing depends on a
global RNG a checkpoint does not hold (which is what makes resumed runs bit-identical).

The first element of the key is a *purpose* from this module; the rest locates the draw (rank,
batch index, step, …). Purposes are fixed numbers: changing one changes every result drawn with it.
"""

from __future__ import annotations

import numpy as np
import torch

# Purposes: each gets its own branch of the seed tree.
STREAM = 0  # streamed training batches: (STREAM, rank, batch index)
TRAIN = 1  # a fixed training set
VAL = 2  # the validation set (samples, noise, times)
PREDICT = 3  # `stdiff predict` requests: (PREDICT, request index)
TEST = 4  # the test set
ORDER = 5  # the fixed set's order in each epoch: (ORDER, epoch)
NOISE = 6  # training times and noise: (NOISE, rank, step, micro-batch)
DIAGNOSTICS = 7  # samples drawn for the diagnostics: (DIAGNOSTICS, what, rank)
SWEEP = 8  # paper experiments: (SWEEP, run, batch)
AUXILIARY = 9  # a data module's own fixed randomness (a texture, a normalisation probe): (AUXILIARY, k)


def derive_seed(seed: int, *key: int) -> int:
    """A 63-bit seed for ``torch.Generator`` from a root ``seed`` and a spawn ``key`` of ints."""
    state = np.random.SeedSequence(seed, spawn_key=key).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def generator(seed: int, *key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded by ``derive_seed(seed, *key)``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *key))
