"""``GPDataModule``: batches of Gaussian-process sequences, streamed fresh or from a fixed set.

Seeds: every batch of the infinite stream has its own seed, derived from
``(seed, STREAM, global rank, batch index)`` with NumPy's ``SeedSequence``, so DDP ranks draw from
independent, non-overlapping streams, DataLoader workers split one rank's stream between them
(the same batches for any number of workers), the same seed reproduces the same stream, and a
resumed run continues it. The fixed training set and the validation set are drawn from their
own keys ``(seed, TRAIN)`` and ``(seed, VAL)`` and are identical on every rank; the fixed set is
reshuffled every epoch from ``(seed, ORDER, epoch)`` and split between ranks by ``EpochSampler``;
like the stream, it continues an interrupted run where it stopped (Lightning's distributed sampler
splits the validation set).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, get_worker_info

from stdiff._validation import check_int
from stdiff.gp import KroneckerGP
from stdiff.kernels import Kernel

# Purposes of derived seeds: each gets its own, independent branch of the seed tree.
STREAM, TRAIN, VAL, PREDICT, TEST, ORDER = 0, 1, 2, 3, 4, 5


def derive_seed(seed: int, *key: int) -> int:
    """A 63-bit seed for ``torch.Generator`` from ``seed`` and a spawn key (SeedSequence hashing)."""
    state = np.random.SeedSequence(seed, spawn_key=key).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def sample_fixed(gp: KroneckerGP, n: int, seed: int, chunk: int = 4096) -> Tensor:
    """``n`` samples ``(n, T, *space)`` from one seeded generator, drawn in chunks to bound memory."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([gp.sample(min(chunk, n - i), generator) for i in range(0, n, chunk)])


class GPStream(IterableDataset):
    """Infinite stream of batches ``(batch_size, T, *space)``: batch j of rank r is drawn from
    ``derive_seed(seed, STREAM, r, j)``, whichever DataLoader worker draws it (worker w of W draws
    j = start + w, start + w + W, …, the order in which the loader serves its workers), so the
    stream is the same for any number of workers. With ``seeds_only`` it yields the seed, a plain
    int, and the batch is drawn later on the training device (``GPDataModule``). ``start`` skips
    the batches this rank already trained on (resuming)."""

    def __init__(
        self,
        gp: KroneckerGP,
        batch_size: int,
        seed: int,
        rank: int = 0,
        seeds_only: bool = False,
        start: int = 0,
    ) -> None:
        self.gp, self.batch_size, self.seed, self.rank, self.seeds_only = gp, batch_size, seed, rank, seeds_only
        self.start = start

    def seed_of(self, index: int) -> int:
        """Seed of this rank's stream batch ``index``."""
        return derive_seed(self.seed, STREAM, self.rank, index)

    def batch(self, index: int) -> Tensor:
        """This rank's stream batch ``index``, ``(batch_size, T, *space)``."""
        return self.gp.sample(self.batch_size, torch.Generator().manual_seed(self.seed_of(index)))

    def __iter__(self) -> Iterator[Tensor | int]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for index in itertools.count(self.start + worker, workers):
            yield self.seed_of(index) if self.seeds_only else self.batch(index)


class EpochSampler(DistributedSampler):
    """Indices into a fixed training set of ``size`` samples, in a new order every epoch.

    Like the stream, the training batches are a function of their index j alone: batch j is
    batch ``j % epoch_batches`` of epoch ``j // epoch_batches``, whose order is a permutation drawn
    from ``derive_seed(seed, ORDER, epoch)``, the same on every rank; rank r of W takes every W-th
    index (the order wrapped around to a multiple of W, as ``DistributedSampler`` does, so that
    every rank has as many batches). Each iteration serves from batch ``position()`` (the trainer's
    count of batches trained on) to the end of that epoch, so a resumed run continues mid-epoch
    with the batches the interrupted one would have had, whatever Lightning's own count of the
    interrupted epoch. Without ``position``, iterations are consecutive epochs from 0.

    ``epoch_batches``: batches per epoch as the trainer counts them (fewer than the sampler holds
    under ``limit_train_batches``). Being a ``DistributedSampler``, Lightning keeps it under DDP
    instead of wrapping it in its own.
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
        generator = torch.Generator().manual_seed(derive_seed(self.seed, ORDER, epoch))
        order = torch.randperm(self.size, generator=generator)
        order = order.repeat(math.ceil(self.total_size / self.size))[: self.total_size]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        epoch, batch = divmod(self.position() if self.position is not None else self._next, self.epoch_batches)
        self._next = (epoch + 1) * self.epoch_batches
        return iter(self.order(epoch)[batch * self.batch_size :].tolist())


class GPDataLoader(DataLoader):
    """A ``DataLoader`` that tells Lightning it resumes mid-epoch (its dataset or sampler continues
    from the restored step, see ``GPDataModule._consumed``) and warns when a run is resumed with
    data settings that draw different batches than the interrupted run would have."""

    def __init__(self, *args, settings: dict, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings

    def state_dict(self) -> dict:
        return dict(self.settings)

    def load_state_dict(self, state_dict: dict) -> None:
        changed = {k: (v, self.settings.get(k)) for k, v in state_dict.items() if self.settings.get(k) != v}
        if changed:
            what = ", ".join(f"{k}: {old} in the checkpoint, {new} now" for k, (old, new) in changed.items())
            rank_zero_warn(
                f"Resuming with different training data settings ({what}): training goes on, but on other "
                "batches than the interrupted run would have seen."
            )


def evaluation_set(gp: KroneckerGP, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A fixed evaluation set: samples ``x0 (n, T, *space)``, the noise ``(n, T, *space)`` and the
    uniform variates ``u (n,)`` (mapped to diffusion times by the model) each sample is scored
    with. Fixing all three per sample makes validation identical for any batch size and number
    of processes."""
    x0 = sample_fixed(gp, n, derive_seed(seed, 0))
    generator = torch.Generator().manual_seed(derive_seed(seed, 1))
    return x0, torch.randn(x0.shape, generator=generator), torch.rand(n, generator=generator)


class Samples(Dataset):
    """Fixed tensors sharing their first dimension as a map-style dataset: item i is ``x[i]``, or
    the tuple of the i-th rows of several tensors."""

    def __init__(self, *tensors: Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int):
        return self.tensors[0][i] if len(self.tensors) == 1 else tuple(x[i] for x in self.tensors)


class GPDataModule(L.LightningDataModule):
    """Sequences ``(B, T, *space_shape)`` from a ``KroneckerGP`` with covariance Γ ⊗ Σ.

    Args:
        temporal: kernel on frame times (Γ).
        spatial: kernel on the spatial grid (Σ); ``None`` for Σ = I.
        frames: T, the number of frames (>= 2).
        space_shape: the spatial grid, ``[S]`` or ``[H, W]``.
        mean: constant mean of every coordinate.
        jitter: added to the diagonals of Γ and Σ: 0 (exact kernel), a number, or ``auto`` (only
            where a factor's condition number exceeds 1e12); see ``KroneckerGP``. Whenever jitter
            is added, how much and the resulting condition numbers are printed.
        batch_size: samples per batch on each device.
        num_train: size of a fixed training set (sample-complexity studies), reshuffled every
            epoch (``EpochSampler``); ``None`` streams fresh samples forever, so steps, not epochs,
            bound training. Either way a resumed run trains on the batches the interrupted one
            would have.
        num_val: size of the fixed, seeded validation set, and of the separate test set; their
            batches are ``(x0, noise, u)`` (see ``evaluation_set``).
        seed: root of every derived seed.
        num_workers: DataLoader worker processes (0 = generate in the main process).
        num_predict: how many samples ``stdiff predict`` generates (in batches of ``batch_size``,
            batch k seeded by ``(seed, PREDICT, k)``).
        generate_on: where streamed training batches are drawn: ``cpu`` (in the loader, by its
            workers) or ``device``: the loader hands over only the batch's seed (a Python int) and
            the batch is drawn on the training device from factors kept there, with no per-step
            host work beyond the seed and no host-device synchronisation. Same seeds either way:
            ranks and workers stay disjoint.
    """

    def __init__(
        self,
        temporal: Kernel,
        spatial: Kernel | None = None,
        frames: int = 32,
        space_shape: Sequence[int] = (8,),
        mean: float = 0.0,
        jitter: float | Literal["auto"] = 0.0,
        batch_size: int = 64,
        num_train: int | None = None,
        num_val: int = 512,
        seed: int = 0,
        num_workers: int = 0,
        num_predict: int = 0,
        generate_on: Literal["cpu", "device"] = "cpu",
    ) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_train = None if num_train is None else check_int("num_train", num_train, 1)
        self.num_val = check_int("num_val", num_val, 1)
        self.seed = check_int("seed", seed, 0)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.num_predict = check_int("num_predict", num_predict, 0)
        if generate_on not in ("cpu", "device"):
            raise ValueError(f"generate_on must be 'cpu' or 'device', got {generate_on!r}")
        self.generate_on = generate_on
        # Built here, not in setup(): a bad kernel fails before any run directory exists.
        self.gp = KroneckerGP(temporal, spatial, frames, space_shape, mean, jitter)
        if any(r["jitter"] > 0 for r in self.gp.conditioning.values()):
            rank_zero_info(f"GPDataModule: jitter added to the kernel matrices\n{self.gp.report()}")
        self._train: Tensor | None = None
        self._val: tuple[Tensor, Tensor, Tensor] | None = None
        self._test: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(T, *space_shape)``, linked to the model by the CLI."""
        return self.gp.sample_shape

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.num_train is not None and self._train is None:
            self._train = sample_fixed(self.gp, self.num_train, derive_seed(self.seed, TRAIN))
        if stage in ("fit", "validate") and self._val is None:
            self._val = evaluation_set(self.gp, self.num_val, derive_seed(self.seed, VAL))
        if stage == "test" and self._test is None:
            self._test = evaluation_set(self.gp, self.num_val, derive_seed(self.seed, TEST))

    def _consumed(self) -> int:
        """Training batches this rank has already drawn: 0 for a new run; when resuming from a
        checkpoint, the restored step count times the batches per step, so the stream (or the
        fixed set's epoch) continues where it stopped instead of replaying. (Batches a loader had
        prefetched but not trained on when the run stopped are not lost either: they are drawn
        again, from the same seeds or positions.)"""
        trainer = self.trainer
        if trainer is None or not hasattr(trainer, "fit_loop"):
            return 0
        return trainer.global_step * trainer.accumulate_grad_batches

    def _epoch_batches(self, world_size: int) -> int:
        """Batches per epoch and rank as the trainer counts them: all, or ``limit_train_batches``."""
        total = math.ceil(math.ceil(self.num_train / world_size) / self.batch_size)
        limit = getattr(self.trainer, "limit_train_batches", None)
        if limit is None or isinstance(limit, float) and limit == 1.0:
            return total
        return max(1, min(total, limit) if isinstance(limit, int) else int(total * limit))

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = getattr(trainer, "global_rank", 0), getattr(trainer, "world_size", 1)
        accumulate = getattr(trainer, "accumulate_grad_batches", 1)
        settings = {"seed": self.seed, "batch_size": self.batch_size, "num_train": self.num_train, "world_size": world,
                    "accumulate_grad_batches": accumulate}  # fmt: skip
        common = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0, "settings": settings}
        if self.num_train is None:
            # The stream is already batched: batch_size=None disables automatic batching.
            seeds_only = self.generate_on == "device"
            stream = GPStream(self.gp, self.batch_size, self.seed, rank, seeds_only, self._consumed())
            return GPDataLoader(stream, batch_size=None, **common)
        sampler = EpochSampler(self.num_train, self.batch_size, self.seed, rank, world, self._epoch_batches(world),
                               position=self._consumed)  # fmt: skip
        return GPDataLoader(Samples(self._train), batch_size=self.batch_size, sampler=sampler, **common)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, int):  # a seed from the stream with generate_on="device"
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            generator = torch.Generator(device=device).manual_seed(batch)
            return self.gp.sample(self.batch_size, generator, device=device)
        return batch

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Samples(*self._val), batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(Samples(*self._test), batch_size=self.batch_size, num_workers=self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        """Sampling requests ``(seed, n)``, one per batch; the model turns each into n samples."""
        if self.num_predict == 0:
            raise ValueError(
                "predict needs a number of samples: set data.init_args.num_predict (e.g. "
                "--data.init_args.num_predict=1000)"
            )
        sizes = [min(self.batch_size, self.num_predict - i) for i in range(0, self.num_predict, self.batch_size)]
        requests = [torch.tensor([derive_seed(self.seed, PREDICT, k), n]) for k, n in enumerate(sizes)]
        return DataLoader(requests, batch_size=1)  # each batch: one request, shape (1, 2)
