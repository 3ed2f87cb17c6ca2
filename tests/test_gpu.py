"""GPU paths (run with `python -m pytest -m gpu` on a machine with CUDA; skipped elsewhere)."""

import pytest
import torch
from conftest import ROOT

from stdiff.cli import main
from stdiff.kernels import RBF, PoweredExponential
from stdiff.nn import DiT, FullAttention, TemporalAttention
from stdiff.truth import KroneckerGP

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
SINGLE = ROOT / "configs" / "gpu" / "single.yaml"
SMALL = ["--trainer.max_steps=20", "--trainer.val_check_interval=10", "--data.init_args.num_val=256",
         "--diagnostics.num_samples=256", "--diagnostics.figures=false", "--model.sampler.init_args.steps=10",
         "--model.denoiser.init_args.backbone.init_args.width=128", "--model.denoiser.init_args.backbone.init_args.depth=2",
         "--model.denoiser.init_args.backbone.init_args.heads=4"]  # fmt: skip


def test_bf16_fit_on_gpu_with_data_generated_on_device(tmp_path):
    main(["fit", "--config", str(SINGLE), *SMALL, f"--trainer.default_root_dir={tmp_path}"])
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 20
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_compiled_fit_on_gpu(tmp_path):
    main(["fit", "--config", str(SINGLE), *SMALL, "--model.compile=true", f"--trainer.default_root_dir={tmp_path}"])


def test_device_generation_draws_on_the_gpu():
    gp = KroneckerGP(PoweredExponential(4.0), RBF(1.0), frames=64, space_shape=(16,))
    x = gp.sample(512, torch.Generator(device="cuda").manual_seed(0), device="cuda")
    assert x.device.type == "cuda" and x.shape == (512, 64, 16)
    emp = torch.cov(x[:, 0].T.double()).cpu()  # the first frame: covariance Γ₀₀ Σ
    assert (emp - gp.sigma * gp.gamma[0, 0]).abs().max() < 0.35


@pytest.mark.parametrize("attention", [FullAttention, TemporalAttention])
def test_flash_attention_kernel_is_used(attention):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    net = DiT((64, 16), patch_size=4, width=128, depth=1, heads=2, attention=attention).cuda()
    x, c = torch.randn(8, 64, 16, device="cuda"), torch.randn(8, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = net(x, c)  # raises if the flash kernel cannot take these inputs
    assert out.shape == x.shape
