"""``SequenceDataModule``: everything a data set of sequences ``(B, T, *space)`` needs from Lightning,
written once. A subclass supplies ``sample_shape`` and ``sample(n, generator, device)`` (and
``truth``, when its distribution is known exactly); the base serves

- training batches streamed forever (``num_train=None``) or from a fixed set of ``num_train``
  samples reshuffled every epoch, each batch a function of its index (``stdiff.data.loading``), so
  DDP ranks and loader workers never repeat each other and a resumed run (gradient accumulation
  included) continues exactly where it stopped;
- fixed validation and test sets ``(x0, noise, u)``, the same for any batch size or process count;
- ``stdiff predict`` requests ``(seed, n)``, which the model turns into samples;
- optional drawing of streamed batches on the training device (``generate_on: device``).

Every seed comes from ``stdiff.seeding.derive_seed(seed, purpose, …)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from stdiff._validation import check_int
from stdiff.conditioning import Mask, check_mask
from stdiff.data.files import check_file, check_values, npy_header
from stdiff.data.loading import BatchStream, EpochSampler, ResumableLoader, Samples, draw_fixed, evaluation_set
from stdiff.seeding import PREDICT, TEST, TRAIN, VAL, derive_seed, generator


class SequenceDataModule(L.LightningDataModule, ABC):
    """Base of stdiff's data modules (see the module docstring).

    Args:
        batch_size: samples per batch on each device.
        num_train: size of a fixed training set, reshuffled every epoch; ``None`` streams fresh
            samples forever (steps, not epochs, bound training).
        num_val: size of the fixed validation set, and of the separate test set.
        seed: root of every derived seed.
        num_workers: DataLoader worker processes (0 = draw in the main process).
        num_predict: how many samples ``stdiff predict`` generates (in batches of ``batch_size``,
            batch k seeded by ``(seed, PREDICT, k)``).
        generate_on: where streamed training batches are drawn: ``cpu`` (in the loader) or
            ``device`` (the loader hands over the batch's seed and ``sample`` runs on the training
            device). Same seeds either way.
        task: the conditional task (``Forecast``, ``Interpolation``, ``Imputation``): scored against
            the exact posterior by ``stdiff validate`` / ``test``, and applied to ``observed``.
        observed: a ``.npy`` file of observations ``(n, T, *space)`` (or one ``(T, *space)``), NaN
            where missing: ``stdiff predict`` then draws ``num_predict`` conditional samples of
            each, written as ``(n, num_predict, T, *space)``. NaN entries are filled in and every
            other entry is kept, wherever it is; only in a file without NaN does ``task`` choose
            what to sample (a forecast of whole sequences).
    """

    truth = None  # the exact distribution (a KroneckerGP) when known: diagnostics score against it
    truth_is_exact = True  # False: ``truth`` is a reference fitted to the data, not its distribution
    missing_values = False  # True: samples may hold NaN (missing entries, left out of the loss)

    def __init__(
        self,
        batch_size: int = 64,
        num_train: int | None = None,
        num_val: int = 512,
        seed: int = 0,
        num_workers: int = 0,
        num_predict: int = 0,
        generate_on: Literal["cpu", "device"] = "cpu",
        task: Mask | None = None,
        observed: str | None = None,
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
        self.generate_on, self.task, self.observed = generate_on, task, observed
        self._train: Dataset | None = None
        self._val: tuple[Tensor, Tensor, Tensor] | None = None
        self._test: tuple[Tensor, Tensor, Tensor] | None = None

    # --- what a subclass supplies ----------------------------------------------------------------

    @property
    @abstractmethod
    def sample_shape(self) -> tuple[int, ...]:
        """``(T, *space_shape)`` of one sample; the CLI links it to the model."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
        """``n`` samples ``(n, T, *space_shape)`` in float32, drawn with ``generator`` on ``device``."""

    # --- sets (hooks a subclass may replace) --------------------------------------------------------

    def training_set(self) -> Dataset:
        """The fixed training set (``num_train`` set): ``num_train`` samples drawn from one seed."""
        return Samples(draw_fixed(self.sample, self.num_train, derive_seed(self.seed, TRAIN)))

    def evaluation_samples(self, stage: str) -> Tensor:
        """The ``num_val`` samples ``(n, T, *space)`` of the validation (``stage="val"``) or test set."""
        seed = derive_seed(self.seed, VAL if stage == "val" else TEST)
        return draw_fixed(self.sample, self.num_val, derive_seed(seed, 0))

    def evaluation_count(self, stage: str) -> int:
        """How many samples ``evaluation_samples(stage)`` returns (for estimates before it is called)."""
        return self.num_val

    def conditional_cases(self, n: int, generator: torch.Generator, stage: str = "test") -> Tensor:
        """``n`` cases ``(n, T, *space)`` the conditional diagnostics of ``stage`` (``val`` or
        ``test``) observe in part and complete: exact draws of ``truth`` here; that split's
        held-out data where the truth is only a fitted reference."""
        return self.truth.sample(n, generator)

    @property
    def has_truth(self) -> bool:
        """Whether there is a ``truth``, known without computing it (a fitted reference is not fitted)."""
        return self.truth is not None

    def normalize(self, x: Tensor) -> Tensor:
        """Data units to model units (identity here; ``ArrayDataModule`` standardises)."""
        return x

    def denormalize(self, x: Tensor) -> Tensor:
        """Model units back to data units: applied to what ``stdiff predict`` writes."""
        return x

    def describe(self) -> dict:
        """What ``stdiff predict`` records about the data beside its samples (``samples.json``)."""
        return {"normalize": "none"}

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.num_train is not None and self._train is None:
            self._train = self.training_set()
        for name, stages, key in (("_val", ("fit", "validate"), VAL), ("_test", ("test",), TEST)):
            if stage in stages and getattr(self, name) is None:
                x0 = self.evaluation_samples("val" if key == VAL else "test")
                setattr(self, name, evaluation_set(x0, derive_seed(self.seed, key)))

    def __getstate__(self) -> dict:
        # Loader workers started by spawning get a copy of the stream, hence of this module: not of
        # the trainer it points to.
        return {**self.__dict__, "trainer": None}

    # --- training ----------------------------------------------------------------------------------

    def consumed(self) -> int:
        """Training batches this rank has already drawn: 0 for a new run; when resuming, the restored
        step count times the batches per step (gradient accumulation included), so the stream or
        the fixed set's epoch continues where it stopped instead of replaying it."""
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
        settings = {"seed": self.seed, "batch_size": self.batch_size, "num_train": self.num_train, "world_size": world,
                    "accumulate_grad_batches": getattr(trainer, "accumulate_grad_batches", 1)}  # fmt: skip
        common = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0, "settings": settings}
        if self.num_train is None:
            # The stream is already batched: batch_size=None disables automatic batching.
            seeds_only = self.generate_on == "device"
            stream = BatchStream(self.sample, self.batch_size, self.seed, rank, seeds_only, self.consumed())
            return ResumableLoader(stream, batch_size=None, **common)
        sampler = EpochSampler(self.num_train, self.batch_size, self.seed, rank, world, self._epoch_batches(world),
                               position=self.consumed)  # fmt: skip
        return ResumableLoader(self._train, batch_size=self.batch_size, sampler=sampler, **common)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, int):  # a seed from the stream with generate_on="device"
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            return self.sample(self.batch_size, torch.Generator(device=device).manual_seed(batch), device)
        return batch

    # --- evaluation and prediction -----------------------------------------------------------------

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
        sizes = self._request_sizes()
        if self.observed is not None:  # per case, its samples in batches: {seed, observed, mask}
            values, mask = self.observations()
            requests = [{"seed": derive_seed(self.seed, PREDICT, i, k), "observed": values[i].expand(n, *values[i].shape),
                         "mask": mask[i].expand(n, *mask[i].shape)}
                        for i in range(len(values)) for k, n in enumerate(sizes)]  # fmt: skip
            return DataLoader(requests, batch_size=1)
        requests = [torch.tensor([derive_seed(self.seed, PREDICT, k), n]) for k, n in enumerate(sizes)]
        return DataLoader(requests, batch_size=1)  # each batch: one request, shape (1, 2)

    def _request_sizes(self) -> list[int]:
        return [min(self.batch_size, self.num_predict - i) for i in range(0, self.num_predict, self.batch_size)]

    def predict_sizes(self) -> list[int]:
        """Samples per predict request, in order (per case when there are observations)."""
        cases = len(self.observations()[0]) if self.observed is not None else 1
        return self._request_sizes() * cases

    def observations(self) -> tuple[Tensor, Tensor]:
        """The ``observed`` file as values ``(n, T, *space)`` in model units (0 where missing) and
        mask (True where observed: not NaN; in a file without NaN, where ``task`` observes). The file is
        read and checked once (``check_observations``); the units are those of the moment of the
        call, so statistics restored from a checkpoint apply."""
        values, mask = self.check_observations()
        return torch.nan_to_num(self.normalize(values)), mask

    def check_observations(self) -> tuple[Tensor, Tensor]:
        """The ``observed`` file read and checked, in data units (NaN where missing), with its
        mask; ``ValueError`` naming the file and the problem. Called by the CLI's preflight, so a
        bad file is refused before anything starts."""
        if getattr(self, "_observations", None) is None:
            self._observations = self._read_observations()
        return self._observations

    def _read_observations(self) -> tuple[Tensor, Tensor]:
        path, what = self.observed, "data.init_args.observed"
        check_file(path, what)
        stored, _, _, _ = npy_header(path, what=what)
        shape = (1, *stored) if stored == self.sample_shape else stored
        expected = f"(n, {', '.join(map(str, self.sample_shape))}) (n cases of (T, *space_shape)) or one case"
        if tuple(shape[1:]) != self.sample_shape:
            raise ValueError(f"{what}: {path} holds an array of shape {stored}; expected {expected}")
        if shape[0] == 0:
            raise ValueError(f"{what}: {path} holds no case (shape {stored}); expected {expected}")
        with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf: refused below
            values = np.array(np.load(path, mmap_mode="r", allow_pickle=False), dtype=np.float32)  # a copy
        check_values(values, f"{what}: {path}")  # the index as in the file (no case axis for one case)
        values = torch.from_numpy(values.reshape(shape))
        mask = ~values.isnan()
        if self.task is not None and bool(mask.all()):
            # Nothing marked to fill in: the task says what to sample (a forecast of whole sequences).
            mask &= self.task.draw(len(values), self.sample_shape, generator(self.seed, PREDICT, 1))
            rank_zero_info(f"{what}: {path} has no NaN, so data.init_args.task={self.task!r} chooses what to sample: "
                           f"{int((~mask).sum())} of {mask.numel()} entries are drawn anew, the rest kept")  # fmt: skip
        elif self.task is not None:
            # NaN marks what to fill in; every observed entry is kept, wherever it is.
            rank_zero_info(f"{what}: {path} marks {int((~mask).sum())} of {mask.numel()} entries missing (NaN): those "
                           f"are filled in and every other entry kept; data.init_args.task={self.task!r} is not "
                           "applied (it chooses what to sample only for a file without NaN)")  # fmt: skip
        check_mask(mask, self.sample_shape, f"{what}: the mask of {path} (NaN = missing)")
        return values, mask
