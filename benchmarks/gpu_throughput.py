"""Training throughput on one GPU: samples/s, tokens/s, MFU and peak memory of the DiT in
``configs/gpu/single.yaml`` (bf16 autocast, AdamW, data drawn on the device).

    python benchmarks/gpu_throughput.py [--steps 50] [--batch 256] [--compile]

FLOPs per step are measured with Lightning's ``measure_flops`` (forward + backward on the meta
device); MFU divides achieved FLOP/s by ``get_available_flops`` for the card and dtype.
"""

import argparse
import json
import time

import torch
from lightning.fabric.utilities.throughput import get_available_flops, measure_flops

from stdiff.diffusion import denoising_loss, training_times
from stdiff.gp import KroneckerGP
from stdiff.kernels import Matern, PoweredExponential
from stdiff.module import DiffusionModule
from stdiff.nn import DiT, FactorizedAttention


def flops_per_step(backbone, shape, batch: int) -> int:
    """Forward + backward FLOPs of one training step of the backbone, counted on the meta device."""
    with torch.device("meta"):
        net = backbone(shape)
        x, c = torch.randn(batch, *shape), torch.randn(batch)
    return measure_flops(net, lambda: net(x, c), lambda y: y.sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    device = torch.device("cuda")
    shape = (64, 16)

    def backbone(s):
        return DiT(s, patch_size=4, width=384, depth=8, heads=6, attention=FactorizedAttention)

    gp = KroneckerGP(PoweredExponential(8.0), Matern(2.0, 2.5), frames=shape[0], space_shape=shape[1:])
    flops = flops_per_step(backbone, shape, args.batch)
    module = DiffusionModule(shape, backbone=backbone, compile=args.compile).to(device)
    optimizer = module.configure_optimizers()
    generator = torch.Generator(device=device).manual_seed(0)

    def step():
        x0 = gp.sample(args.batch, generator, device=device)
        t = training_times(module.schedule, args.batch, "log_snr", device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = denoising_loss(module, module.schedule, x0, t, torch.randn_like(x0)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    tokens = shape[0] * module.backbone.num_patches
    peak = get_available_flops(device, torch.bfloat16)
    print(json.dumps({
        "device": torch.cuda.get_device_name(), "batch": args.batch, "compile": args.compile,
        "step_s": round(seconds, 5), "samples_per_s": round(args.batch / seconds, 1),
        "tokens_per_s": round(args.batch * tokens / seconds, 1), "flops_per_step": flops,
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
