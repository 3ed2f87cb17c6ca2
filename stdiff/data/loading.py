"""The pieces a ``SequenceDataModule`` serves batches with: an infinite seeded stream, a fixed set
reshuffled per epoch, and a loader that records the settings a resumed run must match.

Every training batch is a function of its index alone (batch j of rank r: seed
``derive_seed(seed, STREAM, r, j)`` for the stream; position j of the epoch order for a fixed set),
so a run resumed at step k continues with the batches the interrupted run would have drawn.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, get_worker_info

from stdiff._validation import warn
from stdiff.seeding import ORDER, STREAM, derive_seed, generator

Draw = Callable[[int, torch.Generator], Tensor]  # (n, generator) -> n samples (n, T, *space)


def draw_fixed(draw: Draw, n: int, seed: int, chunk: int = 4096) -> Tensor:
    """``n`` samples ``(n, T, *space)`` from one seeded generator, drawn in chunks to bound memory."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([draw(min(chunk, n - i), g) for i in range(0, n, chunk)])


def evaluation_set(x0: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A fixed evaluation set: samples ``x0 (n, T, *space)``, the noise ``(n, T, *space)`` and the
    uniform variates ``u (n,)`` (mapped to diffusion times by the model) each sample is scored
    with, drawn from ``derive_seed(seed, 1)``. Fixing all three per sample makes validation
    identical for any batch size and number of processes."""
    n = len(x0)
    g = torch.Generator().manual_seed(derive_seed(seed, 1))
    return x0, torch.randn(x0.shape, generator=g), torch.rand(n, generator=g)


class BatchStream(IterableDataset):
    """Infinite stream of batches ``(batch_size, T, *space)``: batch j of rank r is drawn from
    ``derive_seed(seed, STREAM, r, j)``, whichever DataLoader worker draws it (worker w of W draws
    j = start + w, start + w + W, …, the order in which the loader serves its workers), so the
    stream is the same for any number of workers (to float round-off: workers run one thread).
    With ``seeds_only`` it yields the seed, a plain int, and the batch is drawn later on the
    training device. ``start`` skips the batches this rank already trained on (resuming)."""

    def __init__(self, draw: Draw, batch_size: int, seed: int, rank: int = 0, seeds_only: bool = False,
                 start: int = 0) -> None:  # fmt: skip
        self.draw, self.batch_size, self.seed, self.rank = draw, batch_size, seed, rank
        self.seeds_only, self.start = seeds_only, start

    def seed_of(self, index: int) -> int:
        """Seed of this rank's stream batch ``index``."""
        return derive_seed(self.seed, STREAM, self.rank, index)

    def batch(self, index: int) -> Tensor:
        """This rank's stream batch ``index``, ``(batch_size, T, *space)``."""
        return self.draw(self.batch_size, torch.Generator().manual_seed(self.seed_of(index)))

    def __iter__(self) -> Iterator[Tensor | int]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for index in itertools.count(self.start + worker, workers):
            yield self.seed_of(index) if self.seeds_only else self.batch(index)


class EpochSampler(DistributedSampler):
    """Indices into a fixed training set of ``size`` samples, in a new order every epoch.

    Batch j is batch ``j % epoch_batches`` of epoch ``j // epoch_batches``, whose order is a
    permutation drawn from ``derive_seed(seed, ORDER, epoch)``, the same on every rank; rank r of W
    takes every W-th index (the order wrapped around to a multiple of W, as ``DistributedSampler``
    does). Each iteration serves from batch ``position()`` (the trainer's count of batches trained
    on) to the end of that epoch, so a resumed run continues mid-epoch with the batches the
    interrupted one would have had. Without ``position``, iterations are consecutive epochs.

    ``epoch_batches``: batches per epoch as the trainer counts them (fewer than the sampler holds
    under ``limit_train_batches``). Being a ``DistributedSampler``, Lightning keeps it under DDP.
    """

    def __init__(
        self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
        epoch_batches: int | None = None, position: Callable[[], int] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.size, self.batch_size, self.position = size, batch_size, position
        self.epoch_batches = epoch_batches or math.ceil(self.num_samples / batch_size)
        self._next = 0

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the epoch follows from the batch index (see the class)."""

    def order(self, epoch: int) -> Tensor:
        """This rank's indices for a whole ``epoch``."""
        order = torch.randperm(self.size, generator=generator(self.seed, ORDER, epoch))
        order = order.repeat(math.ceil(self.total_size / self.size))[: self.total_size]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        epoch, batch = divmod(self.position() if self.position is not None else self._next, self.epoch_batches)
        self._next = (epoch + 1) * self.epoch_batches
        return iter(self.order(epoch)[batch * self.batch_size :].tolist())


class ResumableLoader(DataLoader):
    """A ``DataLoader`` that tells Lightning it resumes mid-epoch (its dataset or sampler continues
    from the restored step) and warns when a run is resumed with data settings that draw different
    batches than the interrupted run would have."""

    def __init__(self, *args, settings: dict, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings

    def state_dict(self) -> dict:
        return dict(self.settings)

    def load_state_dict(self, state_dict: dict) -> None:
        changed = {k: (v, self.settings.get(k)) for k, v in state_dict.items() if self.settings.get(k) != v}
        if changed:
            what = ", ".join(f"{k}: {old} in the checkpoint, {new} now" for k, (old, new) in changed.items())
            warn(
                f"Resuming with different training data settings ({what}): training goes on, but on other "
                "batches than the interrupted run would have seen."
            )


class Samples(Dataset):
    """Fixed tensors sharing their first dimension as a map-style dataset: item i is ``x[i]``, or
    the tuple of the i-th rows of several tensors."""

    def __init__(self, *tensors: Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int):
        return self.tensors[0][i] if len(self.tensors) == 1 else tuple(x[i] for x in self.tensors)
