"""GPDataModule: disjoint, reproducible streams across ranks and workers; fixed sets."""

import itertools
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from stdiff.data import BatchStream, EpochSampler, GPDataModule
from stdiff.kernels import RBF, PoweredExponential


def make_dm(**kwargs):
    defaults = {
        "temporal": PoweredExponential(3.0),
        "spatial": RBF(1.0),
        "frames": 6,
        "space_shape": (4,),
        "batch_size": 8,
    }
    return GPDataModule(**{**defaults, **kwargs})


def first_batches(dm, n, rank=0):
    dm.trainer = SimpleNamespace(global_rank=rank)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    return [next(it) for _ in range(n)]


def rows(batches):
    return torch.cat([b.reshape(len(b), -1) for b in batches])


def assert_disjoint(a, b):
    # No sample of one stream occurs in the other (continuous draws: any overlap means a replay).
    assert torch.cdist(rows(a), rows(b)).min() > 1e-3


def test_stream_batches_have_sample_shape():
    (batch,) = first_batches(make_dm(), 1)
    assert batch.shape == (8, 6, 4) and batch.dtype == torch.float32


def test_ranks_get_disjoint_streams():
    assert_disjoint(first_batches(make_dm(), 5, rank=0), first_batches(make_dm(), 5, rank=1))


def test_same_seed_reproduces_the_stream_and_another_seed_does_not():
    a, b = first_batches(make_dm(seed=3), 4), first_batches(make_dm(seed=3), 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert_disjoint(a, first_batches(make_dm(seed=4), 4))


def test_workers_get_disjoint_streams():
    dm = make_dm()
    stream = BatchStream(dm.sample, batch_size=8, seed=0, rank=0)
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    it = iter(loader)
    batches = [next(it) for _ in range(4)]
    # The loader alternates workers, worker w drawing batches w, w + 2, ...: the same stream as
    # without workers (to float round-off: a worker's matrix products run on one thread).
    expected = [stream.batch(k) for k in range(4)]
    assert all(torch.allclose(x, y, atol=1e-6, rtol=0) for x, y in zip(batches, expected))
    assert_disjoint(batches[0::2], batches[1::2])
    assert_disjoint(batches, first_batches(make_dm(), 4, rank=1))


def test_fixed_training_set_is_reused_and_seeded():
    dm = make_dm(num_train=20, batch_size=8)
    dm.setup("fit")
    epoch = rows(list(dm.train_dataloader()))
    assert epoch.shape == (20, 24)
    train = dm._train.tensors[0].reshape(20, -1)
    assert torch.equal(epoch[torch.argsort(epoch[:, 0])], train[torch.argsort(train[:, 0])])
    other = make_dm(num_train=20, batch_size=8)
    other.setup("fit")
    assert torch.equal(other._train.tensors[0], dm._train.tensors[0])


def test_validation_set_is_fixed_and_separate_from_training():
    dm, again = make_dm(num_val=16), make_dm(num_val=16)
    dm.setup("fit")
    again.setup("validate")
    batches = list(dm.val_dataloader())
    x0, noise, u = (torch.cat(parts) for parts in zip(*batches))  # fixed (x0, noise, u) triples
    assert x0.shape == noise.shape == (16, 6, 4) and u.shape == (16,) and 0 <= u.min() and u.max() <= 1
    for a, b in zip(batches, again.val_dataloader()):
        assert all(torch.equal(p, q) for p, q in zip(a, b))
    val = rows([x0])
    assert_disjoint([val], first_batches(make_dm(), 3))
    # a different batch size serves the same triples: validation does not depend on batching
    other = make_dm(num_val=16, batch_size=5)
    other.setup("validate")
    assert torch.equal(torch.cat([b[0] for b in other.val_dataloader()]), x0)
    dm.setup("test")
    assert_disjoint([val], [torch.cat([b[0] for b in dm.test_dataloader()])])


def test_sample_shape_is_exposed_for_linking():
    assert make_dm(space_shape=(3, 5)).sample_shape == (6, 3, 5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
        ({"num_train": 0}, r"num_train must be an integer >= 1, got 0"),
        ({"num_val": -5}, r"num_val must be an integer >= 1, got -5"),
        ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
        ({"frames": 1}, r"frames must be an integer >= 2"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dm(**kwargs)


def test_generation_on_the_device_gives_the_same_stream():
    """generate_on="device" moves only the seed through the loader; on the CPU the batches are the
    very ones the loader would have drawn, so disjointness and reproducibility carry over."""
    on_cpu, on_device = make_dm(seed=5), make_dm(seed=5, generate_on="device")
    for dm in (on_cpu, on_device):
        dm.trainer = SimpleNamespace(global_rank=1, strategy=SimpleNamespace(root_device=torch.device("cpu")))
        dm.setup("fit")
    seeds = iter(on_device.train_dataloader())
    for batch in first_batches(on_cpu, 3, rank=1):
        seed = next(seeds)
        assert isinstance(seed, int)
        assert torch.equal(on_device.on_after_batch_transfer(seed, 0), batch)
    with pytest.raises(ValueError, match=r"generate_on must be 'cpu' or 'device', got 'gpu'"):
        make_dm(generate_on="gpu")


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resumes_where_it_stopped(workers):
    """Resuming at global step s continues the stream at batch s (with one batch per step), for any
    number of loader workers: no batch is replayed or skipped."""
    dm = make_dm(seed=2)
    stream = BatchStream(dm.sample, 8, seed=2, rank=0)
    expected = [stream.batch(k) for k in range(3, 7)]
    resumed = DataLoader(BatchStream(dm.sample, 8, seed=2, rank=0, start=3), batch_size=None, num_workers=workers)
    it = iter(resumed)
    # (to float round-off: a worker's matrix products run on one thread)
    assert all(torch.allclose(next(it), e, atol=1e-6, rtol=0) for e in expected)


def test_data_module_resumes_from_the_trainer_step():
    dm = make_dm(seed=2)
    dm.trainer = SimpleNamespace(global_rank=0, global_step=5, accumulate_grad_batches=2, fit_loop=object())
    dm.setup("fit")
    assert dm.train_dataloader().dataset.start == 10


def epochs(sampler, n):
    return [list(sampler) for _ in range(n)]


def test_fixed_set_is_reshuffled_every_epoch_and_split_between_ranks():
    one = epochs(EpochSampler(10, batch_size=4, seed=3), 3)
    assert all(sorted(e) == list(range(10)) for e in one) and one[0] != one[1] != one[2]
    assert epochs(EpochSampler(10, batch_size=4, seed=3), 3) == one  # seeded
    # Three ranks: each its own third of the same order, wrapped around to 12 = 3 × 4 indices.
    ranks = [epochs(EpochSampler(10, batch_size=2, seed=3, rank=r, world_size=3), 2) for r in range(3)]
    for e in range(2):
        parts = [r[e] for r in ranks]
        assert all(len(p) == 4 for p in parts) and set().union(*parts) == set(range(10))
        assert [i for four in zip(*parts) for i in four][:10] == one[e]  # the single-rank order, dealt out


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("consumed", [0, 2, 3, 7])  # 3 batches an epoch: start, middle, end of an epoch
def test_fixed_set_resumes_mid_epoch_where_it_stopped(workers, consumed):
    """Resumed after ``consumed`` batches, the loader serves exactly the batches that an
    uninterrupted run would have served next, across epoch boundaries, for any number of workers,
    also when the trainer ends its first epoch after one batch (its count of an epoch interrupted
    by a signal can be off by one; the order must not depend on it)."""

    def batches(step, n, first_epoch=None):
        dm = make_dm(num_train=20, batch_size=8, num_workers=workers)
        trainer = dm.trainer = SimpleNamespace(global_rank=0, world_size=1, global_step=step, accumulate_grad_batches=1,
                                               fit_loop=object(), limit_train_batches=1.0)  # fmt: skip
        dm.setup("fit")
        loader, out = dm.train_dataloader(), []
        while len(out) < n:  # one iter() per epoch, as the trainer does
            epoch = list(itertools.islice(loader, first_epoch if not out else None))
            out += epoch
            trainer.global_step += len(epoch)
        return out[:n]

    straight = batches(0, consumed + 4)
    for first_epoch in (None, 1):
        resumed = batches(consumed, 4, first_epoch)
        assert all(torch.equal(a, b) for a, b in zip(straight[consumed:], resumed, strict=True))


def test_fixed_set_epochs_follow_limit_train_batches():
    dm = make_dm(num_train=40, batch_size=8)  # 5 batches an epoch, 2 of them trained on
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, global_step=3, accumulate_grad_batches=1,
                                 fit_loop=object(), limit_train_batches=2)  # fmt: skip
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    assert sampler.epoch_batches == 2
    assert list(sampler) == sampler.order(1)[8:].tolist()  # step 3 = epoch 1, its second batch


def test_resuming_with_other_data_settings_warns():
    dm = make_dm(num_train=20)
    dm.setup("fit")
    loader = dm.train_dataloader()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.load_state_dict(loader.state_dict())  # the same settings: silent
    with pytest.warns(UserWarning, match=r"batch_size: 16 in the checkpoint, 8 now"):
        loader.load_state_dict({**loader.state_dict(), "batch_size": 16})
