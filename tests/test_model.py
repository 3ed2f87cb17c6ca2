"""The model path: DiT shapes and initialisation, attention against an explicit reference, and
the module's optimizer."""

import math

import pytest
import torch

from stdiff.diffusion import denoising_loss
from stdiff.gp import KroneckerGP
from stdiff.kernels import PoweredExponential
from stdiff.module import DiffusionModule
from stdiff.nn import DiT, FullAttention


@pytest.mark.parametrize("shape", [(8, 5), (6, 3, 4)], ids=["1d", "2d"])
def test_dit_maps_samples_to_samples(shape):
    net = DiT(shape, width=32, depth=2, heads=4)
    x, c = torch.randn(3, *shape), torch.randn(3)
    assert torch.equal(net(x, c), torch.zeros(3, *shape))  # adaLN-Zero: the untrained net outputs 0
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    (net(x, c) - x).pow(2).mean().backward()
    opt.step()
    out = net(x, c)
    assert out.shape == x.shape and out.abs().sum() > 0


def test_dit_rejects_bad_configuration():
    with pytest.raises(ValueError, match=r"heads must be >= 1 and divide width=30, got heads=4"):
        DiT((8, 5), width=30, heads=4)
    with pytest.raises(ValueError, match=r"depth must be an integer >= 1, got 0"):
        DiT((8, 5), depth=0)
    with pytest.raises(ValueError, match=r"sample_shape must be"):
        DiT((8,))
    with pytest.raises(ValueError, match=r"DiT built for samples of shape \(8, 5\), got input \(2, 8, 6\)"):
        DiT((8, 5), width=16, heads=2)(torch.zeros(2, 8, 6), torch.zeros(2))


def test_full_attention_matches_explicit_softmax():
    attn = FullAttention(width=16, heads=4)
    x = torch.randn(2, 5, 3, 16)  # (B, T, P, D)
    q, k, v = attn.qkv(x.reshape(2, 15, 16)).reshape(2, 15, 3, 4, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 15, 16)).reshape(2, 5, 3, 16)
    torch.testing.assert_close(attn(x), expected)


def test_module_optimizer_reduces_the_loss():
    torch.manual_seed(0)
    gp = KroneckerGP(PoweredExponential(3.0), None, frames=8, space_shape=(4,))
    module = DiffusionModule((8, 4), backbone=lambda shape: DiT(shape, width=32, depth=1, heads=2))
    opt = module.configure_optimizers()
    x0 = gp.sample(256, torch.Generator().manual_seed(1))
    t = torch.full((256,), 1.0)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    first = denoising_loss(module, module.schedule, x0, t, noise).mean().item()
    for _ in range(30):
        opt.zero_grad()
        loss = denoising_loss(module, module.schedule, x0, t, noise).mean()
        loss.backward()
        opt.step()
    assert denoising_loss(module, module.schedule, x0, t, noise).mean().item() < 0.9 * first
