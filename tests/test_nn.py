"""Backbones and attention plug-ins: shape contract, equivalences between variants, the explicit
softmax reference, adaLN-Zero, attention capture, a user-defined variant from YAML, bad input."""

import math

import pytest
import torch
from conftest import FEW_SAMPLES, QUICKSTART, stdiff_subclasses

from stdiff.cli import StdiffCLI
from stdiff.diffusion import Denoiser, denoising_loss
from stdiff.kernels import PoweredExponential
from stdiff.module import DiffusionModule
from stdiff.nn import (
    ATTENTIONS,
    BACKBONES,
    Attention,
    Backbone,
    DiT,
    FactorizedAttention,
    FullAttention,
    TemporalAttention,
    UNet,
    WindowedTemporalAttention,
    capture_attention,
)
from stdiff.nn.attention import MultiHeadAttention, over_time
from stdiff.nn.dit import patchify, unpatchify
from stdiff.truth import KroneckerGP

SHAPES = {"1d": ((8, 6), 2), "2d": ((4, 6, 8), (3, 4))}  # sample shape, patch size


def test_registries_are_the_sets_of_concrete_subclasses():
    assert set(ATTENTIONS.values()) == stdiff_subclasses(Attention)
    assert set(BACKBONES.values()) == stdiff_subclasses(Backbone)


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
@pytest.mark.parametrize("space", sorted(SHAPES))
@pytest.mark.parametrize("patched", [True, False], ids=["patches", "frames"])
def test_shape_contract(name, space, patched):
    shape, patch = SHAPES[space]
    net = DiT(shape, patch_size=patch if patched else None, width=32, depth=2, heads=4, attention=ATTENTIONS[name])
    x = torch.randn(3, *shape)
    assert net(x, torch.randn(3)).shape == x.shape
    tokens = torch.randn(2, shape[0], net.num_patches, 32)  # (B, T, P, D)
    assert net.blocks[0].attn(tokens).shape == tokens.shape


@pytest.mark.parametrize("space", sorted(SHAPES))
def test_unet_shape_contract(space):
    shape = (16, *SHAPES[space][0][1:])
    net = UNet(shape, width=16, levels=3)
    x = torch.randn(2, *shape)
    assert net(x, torch.randn(2)).shape == x.shape


def test_patchify_round_trip_and_order():
    x = torch.randn(2, 3, 6, 8)
    tokens = patchify(x, (3, 4))  # (B, T, P=4, 12)
    assert tokens.shape == (2, 3, 4, 12)
    assert torch.equal(tokens[0, 0, 1], x[0, 0, 0:3, 4:8].reshape(-1))  # patch (row 0, col 1)
    assert torch.equal(unpatchify(tokens, (3, 4), (6, 8)), x)
    x1 = torch.randn(2, 3, 12)
    assert torch.equal(unpatchify(patchify(x1, (4,)), (4,), (12,)), x1)


# --- equivalences -----------------------------------------------------------------------------


def tokens(p=1, t=7, b=3, d=16):
    return torch.randn(b, t, p, d, generator=torch.Generator().manual_seed(0))


def test_temporal_equals_full_with_one_patch():
    full, temporal = FullAttention(16, 4), TemporalAttention(16, 4)
    temporal.load_state_dict(full.state_dict())
    x = tokens(p=1)
    torch.testing.assert_close(temporal(x), full(x))
    assert not torch.allclose(temporal(tokens(p=3)), full(tokens(p=3)))  # they differ once P > 1


def test_factorized_equals_temporal_plus_identity_spatial_step_with_one_patch():
    factorized, temporal = FactorizedAttention(16, 4), TemporalAttention(16, 4)
    factorized.temporal.load_state_dict(temporal.attn.state_dict())
    with torch.no_grad():  # spatial step = identity: V = I, output projection = I, zero biases
        factorized.spatial.qkv.weight[32:] = torch.eye(16)
        factorized.spatial.qkv.bias.zero_()
        factorized.spatial.proj.weight.copy_(torch.eye(16))
        factorized.spatial.proj.bias.zero_()
    x = tokens(p=1)
    torch.testing.assert_close(factorized(x), temporal(x))


@pytest.mark.parametrize("window", [6, 7, 100])
def test_windowed_with_window_at_least_t_minus_one_equals_temporal(window):
    windowed, temporal = WindowedTemporalAttention(16, 4, window=window), TemporalAttention(16, 4)
    windowed.load_state_dict(temporal.state_dict())
    x = tokens(p=3, t=7)
    torch.testing.assert_close(windowed(x), temporal(x))


def test_windowed_attends_only_within_the_window():
    attn = WindowedTemporalAttention(16, 4, window=2)
    with capture_attention(attn) as maps:
        attn(tokens(p=2, t=9))
    (weights,) = maps.values()  # (H, T, T)
    lag = (torch.arange(9)[:, None] - torch.arange(9)[None, :]).abs()
    assert (weights[:, lag > 2] == 0).all() and (weights[:, lag <= 2] > 0).all()


def explicit_attention(unit: MultiHeadAttention, x, mask=None):
    """softmax(QKᵀ/√d)V written out, for x (N, L, D); returns output and weights (N, H, L, L)."""
    n, length, d = x.shape
    h = unit.heads
    q, k, v = unit.qkv(x).split(d, dim=-1)
    q, k, v = (z.reshape(n, length, h, d // h).transpose(1, 2) for z in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    w = torch.softmax(logits, dim=-1)
    return unit.proj((w @ v).transpose(1, 2).reshape(n, length, d)), w


@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_path_equals_explicit_softmax(masked):
    unit = MultiHeadAttention(16, 4)
    x = torch.randn(5, 9, 16)
    mask = (torch.arange(9)[:, None] - torch.arange(9)[None, :]).abs() <= 3 if masked else None
    expected, _ = explicit_attention(unit, x, mask)
    torch.testing.assert_close(unit(x, mask), expected)


# --- adaLN-Zero -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
def test_adaln_zero_output_is_zero_then_every_block_learns(name):
    torch.manual_seed(0)
    net = DiT((8, 6), patch_size=2, width=32, depth=3, heads=4, attention=ATTENTIONS[name])
    x, c = torch.randn(4, 8, 6), torch.randn(4)
    assert torch.equal(net(x, c), torch.zeros_like(x))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step():
        opt.zero_grad()
        (net(x, c) - x).pow(2).mean().backward()
        opt.step()

    def grads(block):
        return {n: p.grad is not None and p.grad.abs().sum().item() > 0 for n, p in block.named_parameters()}

    step()  # only the zero-initialised output projection gets a gradient at first
    step()  # now every block does, through its (still zero) gates
    assert all(grads(block)["ada.1.weight"] for block in net.blocks)
    step()  # and with non-zero gates, every parameter of every block
    step()
    for i, block in enumerate(net.blocks):
        missing = [n for n, ok in grads(block).items() if not ok]
        assert not missing, f"block {i}: no gradient reaches {missing}"


def test_unet_output_is_zero_at_initialisation():
    net = UNet((16, 5), width=16, levels=2)
    x = torch.randn(3, 16, 5)
    assert torch.equal(net(x, torch.randn(3)), torch.zeros_like(x))


# --- attention capture ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
def test_capture_records_the_weights_used_and_leaves_outputs_unchanged(name):
    torch.manual_seed(0)
    net = DiT((8, 6), patch_size=2, width=32, depth=2, heads=4, attention=ATTENTIONS[name])
    for p in net.parameters():  # leave adaLN-Zero so attention actually shapes the output
        torch.nn.init.normal_(p, std=0.2)
    x, c = torch.randn(5, 8, 6), torch.randn(5)
    before = net(x, c)
    with capture_attention(net) as maps:
        captured_out = net(x, c)
        inputs = {}
        hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: inputs.__setitem__(n, args))
                 for n, m in net.named_modules() if isinstance(m, MultiHeadAttention)]  # fmt: skip
        net(x, c)
        for h in hooks:
            h.remove()
    after = net(x, c)
    assert torch.equal(before, after)  # capture off: bit-identical
    torch.testing.assert_close(captured_out, before)  # capture on: same computation
    assert set(maps) == set(inputs) and len(maps) == 2 * (2 if name == "FactorizedAttention" else 1)
    for unit_name, weights in maps.items():
        unit = net.get_submodule(unit_name)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))  # rows sum to 1
        _, used = explicit_attention(unit, *inputs[unit_name])
        torch.testing.assert_close(weights, used.mean(0))  # equal to the weights the pass used
    assert all(m.captured is None and not m.capture for m in net.modules() if isinstance(m, MultiHeadAttention))


def test_captured_temporal_map_is_t_by_t_per_head():
    net = DiT((8, 6), patch_size=2, width=32, depth=1, heads=4, attention=TemporalAttention)
    with capture_attention(net) as maps:
        net(torch.randn(2, 8, 6), torch.zeros(2))
    assert maps["blocks.0.attn.attn"].shape == (4, 8, 8)


# --- plug-ins and bad input -------------------------------------------------------------------


class LagBiasedAttention(Attention):
    """A user's attention: temporal attention with a learned bias per lag (defined outside stdiff)."""

    def __init__(self, width: int, heads: int, max_lag: int = 8) -> None:
        super().__init__(width, heads)
        self.attn = MultiHeadAttention(width, heads)
        self.lag_scale = torch.nn.Parameter(torch.zeros(1))
        self.max_lag = max_lag

    def forward(self, x):
        return over_time(self.attn, x) * (1 + self.lag_scale)


def test_user_attention_from_yaml_trains(tmp_path):
    cli = StdiffCLI(
        args=[
            "fit", "--config", str(QUICKSTART), f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=3",
            "--trainer.val_check_interval=3", "--trainer.enable_progress_bar=false", "--data.init_args.num_val=16",
            *FEW_SAMPLES,
            "--model.denoiser.init_args.backbone.init_args.patch_size=2", "--model.denoiser.init_args.backbone.init_args.attention=test_nn.LagBiasedAttention",
            "--model.denoiser.init_args.backbone.init_args.attention.init_args.max_lag=3",
        ]
    )  # fmt: skip
    attn = cli.model.denoiser.backbone.blocks[0].attn
    assert type(attn).__name__ == "LagBiasedAttention" and attn.max_lag == 3
    assert cli.trainer.global_step == 3


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: DiT((8, 6), patch_size=4), r"patch_size 4 must be a positive divisor of the spatial size 6 \(axis 0"),
        (
            lambda: DiT((4, 6, 8), patch_size=(3, 3)),
            r"patch_size 3 must be a positive divisor of the spatial size 8 \(axis 1",
        ),
        (lambda: DiT((4, 6, 8), patch_size=[2]), r"patch_size must have 2 entries"),
        (lambda: DiT((8, 6), width=48, heads=5), r"heads must be >= 1 and divide width=48, got heads=5"),
        (lambda: DiT((8, 6), width=30), r"width must be divisible by 4"),
        (
            lambda: WindowedTemporalAttention(16, 4, window=-1),
            r"WindowedTemporalAttention.window must be an integer >= 0, got -1",
        ),
        (lambda: UNet((12, 4), levels=4), r"UNet with levels=4 needs T divisible by 8, got T=12"),
        (lambda: DiT((8,)), r"sample_shape must be"),
        (lambda: DiT((8, 6), position_embedding="learned"), r"position_embedding must be 'separate' or 'joint_2d'"),
    ],
)
def test_bad_configuration(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_input_shape():
    with pytest.raises(ValueError, match=r"DiT built for samples of shape \(8, 5\), got input \(2, 8, 6\)"):
        DiT((8, 5), width=16, heads=2)(torch.zeros(2, 8, 6), torch.zeros(2))


def test_module_optimizer_reduces_the_loss():
    torch.manual_seed(0)
    gp = KroneckerGP(PoweredExponential(3.0), None, frames=8, space_shape=(4,))
    module = DiffusionModule(
        (8, 4),  # ε-prediction: starts at loss 1 (v starts at the white-data denoiser, nearer the floor)
        denoiser=lambda shape: Denoiser(shape, lambda s: DiT(s, width=32, depth=1, heads=2), parameterization="eps"),
    )
    opt = module.configure_optimizers()
    x0 = gp.sample(256, torch.Generator().manual_seed(1))
    t = torch.full((256,), 1.0)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    first = denoising_loss(module, x0, t, noise).mean().item()
    for _ in range(30):
        opt.zero_grad()
        denoising_loss(module, x0, t, noise).mean().backward()
        opt.step()
    assert denoising_loss(module, x0, t, noise).mean().item() < 0.9 * first
