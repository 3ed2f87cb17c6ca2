"""The real CLI: the quickstart trains and writes its outputs, every shipped config instantiates,
and bad input exits with a message that names the problem, writing nothing."""

import json
import os
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from conftest import CONFIGS, GPU_OVERLAYS, OVERLAYS, QUICKSTART, ROOT

from stdiff.cli import StdiffCLI, main
from stdiff.data import GPDataModule
from stdiff.module import DiffusionModule

TINY = [
    "--trainer.max_steps=4",
    "--trainer.val_check_interval=2",
    "--trainer.log_every_n_steps=1",
    "--data.init_args.num_val=32",
    "--trainer.enable_progress_bar=false",
    "--diagnostics.figures=false",
]


def run_cli(args, cwd, timeout=240):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "stdiff", *args],
        cwd=cwd,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_quickstart_fit_writes_events_checkpoint_and_config(tmp_path):
    main(["fit", "--config", str(QUICKSTART), *TINY, f"--trainer.default_root_dir={tmp_path}"])
    run = tmp_path / "lightning_logs" / "version_0"
    assert list(run.glob("events.out.tfevents.*"))
    (ckpt,) = run.glob("checkpoints/*.ckpt")
    assert (run / "config.yaml").read_text().startswith("# stdiff==")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    # The checkpoint rebuilds the model from its stored (plain) config.
    model = DiffusionModule.load_from_checkpoint(ckpt, weights_only=True)
    assert model.sample_shape == (32, 8)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run)).Reload()
    assert {"train/loss", "val/loss"} <= set(events.Tags()["scalars"])


GPU_SINGLE = ROOT / "configs" / "gpu" / "single.yaml"
CONFIG_ARGS = [[c] for c in CONFIGS] + [[QUICKSTART, o] for o in OVERLAYS] + [[GPU_SINGLE, o] for o in GPU_OVERLAYS]
# GPU presets are instantiated here on the CPU: the trainer is pointed at it, all else is theirs.
ON_CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32"]


@pytest.mark.parametrize("configs", CONFIG_ARGS, ids=[str(c[-1].relative_to(ROOT)) for c in CONFIG_ARGS])
def test_every_config_instantiates(configs):
    on_cpu = ON_CPU if any("gpu" in c.parts for c in configs) else []
    cli = StdiffCLI(args=[*(a for c in configs for a in ("--config", str(c))), *on_cpu], run=False)
    assert isinstance(cli.model, DiffusionModule)
    assert cli.model.sample_shape == cli.datamodule.sample_shape
    if isinstance(cli.datamodule, GPDataModule):
        x = cli.datamodule.gp.sample(2)
        assert cli.model(x, torch.zeros(2)).shape == x.shape


def test_python_dash_m_and_help(tmp_path):
    out = run_cli(["fit", "--help"], tmp_path, timeout=120)
    assert out.returncode == 0 and "--data" in out.stdout


BAD = [
    (["--data.init_args.temporal=PoweredExp"], r"unknown kernel 'PoweredExp'. Did you mean 'PoweredExponential'?"),
    (["--data.init_args.spatial=Matren"], r"unknown kernel 'Matren'. Did you mean 'Matern'?"),
    (["--data.init_args.temporal.init_args.power=3"], "PoweredExponential.power must lie in (0.0, 2.0], got 3.0"),
    (
        ["--data.init_args.temporal.init_args.lengthscale=0"],
        "PoweredExponential.lengthscale must be a finite number > 0",
    ),
    (
        ["--data.init_args.spatial.init_args.lengthscale=40"],
        "spatial kernel RBF(lengthscale=40.0) is not positive definite",
    ),
    (["--data.init_args.frames=1"], "frames must be an integer >= 2, got 1"),
    (["--data.init_args.space_shape=[]"], "space_shape must have 1 or 2 entries"),
    (["--model.backbone.init_args.heads=5"], "heads must be >= 1 and divide width=64, got heads=5"),
    (["--model.sampler=Hune"], "unknown sampler 'Hune'. Did you mean 'Heun'? Valid sampler names: Ancestral, DDIM"),
    (["--model.schedule=Cosin"], "unknown schedule 'Cosin'. Did you mean 'Cosine'? Valid schedule names: Cosine,"),
    (
        ["--model.parameterization=velocity"],
        "Expected a typing.Literal['eps', 'x0', 'v', 'score']. Got value: velocity",
    ),
    (["--model.sampler.init_args.steps=0"], "Heun.steps must be an integer >= 1, got 0"),
    (["--model.schedule.init_args.t_min=20"], "OrnsteinUhlenbeck.t_max must be > t_min=20.0, got 10.0"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[b[0][0].split("=")[0] + "=" + b[0][0].split("=")[1] for b in BAD])
def test_bad_input_exits_with_a_message_and_writes_nothing(tmp_path, extra, message):
    out = run_cli(["fit", "--config", str(QUICKSTART), f"--trainer.default_root_dir={tmp_path}", *extra], tmp_path)
    assert out.returncode != 0
    head = "\n".join(out.stderr.strip().splitlines()[-6:])
    assert message in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, head
    assert not (tmp_path / "lightning_logs").exists()


COMPOSITE = """
data:
  class_path: GPDataModule
  init_args:
    frames: 6
    space_shape: [3, 2]
    temporal:
      class_path: Sum
      init_args:
        kernels:
          - class_path: Scaled
            init_args: {kernel: {class_path: PoweredExponential, init_args: {lengthscale: 2.0, power: 1.5}}, scale: 2.0}
          - class_path: Product
            init_args:
              kernels:
                - {class_path: Periodic, init_args: {lengthscale: 0.5, period: 3.0}}
                - {class_path: stdiff.kernels.Matern, init_args: {nu: 2.5}}
    spatial: {class_path: White}
model:
  backbone: {class_path: DiT, init_args: {width: 16, depth: 1, heads: 2}}
"""


def test_composite_kernels_compose_from_yaml(tmp_path):
    from stdiff.kernels import Matern, Periodic, PoweredExponential, Product, Scaled, Sum, White

    path = tmp_path / "composite.yaml"
    path.write_text(COMPOSITE)
    cli = StdiffCLI(args=["--config", str(path)], run=False)
    gp = cli.datamodule.gp
    expected = Sum([Scaled(PoweredExponential(2.0, 1.5), 2.0), Product([Periodic(0.5, 3.0), Matern(nu=2.5)])])
    times = torch.arange(6.0)
    torch.testing.assert_close(gp.gamma, expected(times))
    assert isinstance(gp.spatial, White) and cli.model.sample_shape == (6, 3, 2)


def test_unknown_name_inside_a_composite_is_explained(tmp_path):
    path = tmp_path / "composite.yaml"
    path.write_text(COMPOSITE.replace("class_path: Periodic", "class_path: Periodik"))
    out = run_cli(["fit", "--config", str(path), f"--trainer.default_root_dir={tmp_path}"], tmp_path)
    assert out.returncode != 0
    assert "unknown kernel 'Periodik'. Did you mean 'Periodic'?" in out.stderr


def fit_tiny(tmp_path, *extra):
    main(["fit", "--config", str(QUICKSTART), *TINY, f"--trainer.default_root_dir={tmp_path}", *extra])
    (ckpt,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    return ckpt


def test_validation_and_checkpoint_use_the_ema_weights(tmp_path):
    ckpt = fit_tiny(tmp_path)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert "current_model_state" in state  # EMAWeightAveraging: state_dict holds the average
    key = "backbone.blocks.0.attn.attn.qkv.weight"
    assert not torch.equal(state["state_dict"][key], state["current_model_state"][key])
    # The logged val/loss is the EMA model's: recompute it from the checkpoint's state_dict.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(ckpt.parents[1])).Reload().Scalars("val/loss")[-1].value
    model = DiffusionModule.load_from_checkpoint(ckpt, weights_only=True).eval()
    cli = StdiffCLI(args=["--config", str(QUICKSTART), "--data.init_args.num_val=32"], run=False)
    cli.datamodule.setup("validate")
    from stdiff.diffusion import denoising_loss

    total = 0.0
    with torch.no_grad():
        for i, batch in enumerate(cli.datamodule.val_dataloader()):
            x0, t, noise = model.evaluation_inputs(batch, i)
            total += denoising_loss(model, model.schedule, x0, t, noise).sum().item()
    assert total / 32 == pytest.approx(logged, rel=1e-5)


def test_resume_keeps_the_ema_state(tmp_path):
    ckpt = fit_tiny(tmp_path)
    main(["fit", "--config", str(QUICKSTART), *TINY[1:], "--trainer.max_steps=6", f"--ckpt_path={ckpt}",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    (resumed,) = (tmp_path / "lightning_logs" / "version_1" / "checkpoints").glob("*.ckpt")
    state = torch.load(resumed, map_location="cpu", weights_only=True)
    first = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 6
    ema = next(v for k, v in state["callbacks"].items() if "EMAWeightAveraging" in k)
    assert ema["latest_update_step"] == 6
    key = "backbone.blocks.0.attn.attn.qkv.weight"
    # EMA continued from the stored average: new average = d^2 · old average + (1 − d) · (recent weights)
    assert not torch.equal(state["state_dict"][key], first["state_dict"][key])


def test_predict_with_the_exact_model_needs_no_checkpoint(tmp_path):
    main(["predict", "--config", str(QUICKSTART), "--model.oracle=true", "--data.init_args.num_predict=70",
          "--data.init_args.batch_size=32", "--model.sampler=DDIM", "--model.sampler.init_args.steps=5",
          "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    run = tmp_path / "lightning_logs" / "version_0"
    samples = np.load(run / "samples.npy")
    assert samples.shape == (70, 32, 8) and np.isfinite(samples).all()
    meta = json.loads((run / "samples.json").read_text())
    assert meta["oracle"] and meta["sampler"].startswith("DDIM(steps=5") and meta["checkpoint"] is None
    assert (run / "config.yaml").exists()


def test_predict_from_a_checkpoint_writes_samples(tmp_path):
    ckpt = fit_tiny(tmp_path)
    main(["predict", "--config", str(QUICKSTART), f"--ckpt_path={ckpt}", "--data.init_args.num_predict=8",
          "--model.sampler.init_args.steps=3", "--sample_writer.format=pt", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    samples = torch.load(tmp_path / "lightning_logs" / "version_1" / "samples.pt", weights_only=True)
    assert samples.shape == (8, 32, 8)


def test_predict_with_a_checkpoint_of_another_shape_names_both_shapes(tmp_path):
    ckpt = fit_tiny(tmp_path)
    out = run_cli(["predict", "--config", str(QUICKSTART), f"--ckpt_path={ckpt}", "--data.init_args.frames=16",
                   f"--trainer.default_root_dir={tmp_path}"], tmp_path)  # fmt: skip
    assert out.returncode != 0
    assert "trained on samples of shape (32, 8) (T, *space_shape), but the data gives (16, 8)" in out.stderr


def test_predict_without_samples_requested_says_how_to_ask(tmp_path):
    out = run_cli(["predict", "--config", str(QUICKSTART), "--model.oracle=true", "--data.init_args.num_predict=0",
                   f"--trainer.default_root_dir={tmp_path}"], tmp_path)  # fmt: skip
    assert out.returncode != 0 and "set data.init_args.num_predict" in out.stderr


def read_metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_validate_with_the_exact_model_has_zero_score_error(tmp_path):
    main(["validate", "--config", str(QUICKSTART), "--model.oracle=true", "--data.init_args.num_val=128",
          "--diagnostics.num_samples=600", "--model.sampler.init_args.steps=300", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    run = tmp_path / "lightning_logs" / "version_0"
    out = read_metrics(run)
    assert out["stage"] == "validate"
    m = out["metrics"]
    assert m["val/score_rel_error"] < 1e-10 and abs(m["val/excess_loss"]) < 1e-7
    # 600 samples in d = 256: the full-covariance KL is estimated, next to its floor
    assert {"val/samples/kl", "val/samples/kl_floor", "val/samples/w2_excess", "val/samples/ks_excess"} <= set(m)
    assert abs(m["val/samples/gamma_rel_frob_excess"]) < 0.05
    # Samples stop at t0, where the exact covariance is α²K + σ²I: the whitened norm is
    # (1/d) Σ (α²λ + σ²)/λ, far from 1 in K's smallest directions; the exact model reproduces it.
    cli = StdiffCLI(args=["--config", str(QUICKSTART)], run=False)
    gp, schedule = cli.datamodule.gp, cli.model.schedule
    t0 = torch.tensor(schedule.t_min, dtype=torch.float64)
    lam = (gp.gamma_evals[:, None] * gp.sigma_evals[None, :]).reshape(-1)
    expected = ((schedule.alpha(t0) ** 2 * lam + schedule.sigma(t0) ** 2) / lam).mean().item()
    assert m["val/samples/whitened_norm"] == pytest.approx(expected, rel=0.03)
    assert m["val/samples/early_stopping_kl"] > 0
    figures = {p.name.split("_step")[0] for p in (run / "figures").glob("*.png")}
    assert {"val_covariances", "val_paths", "val_correlation_vs_lag", "val_score_error"} <= figures


def test_fit_and_test_write_diagnostics(tmp_path):
    ckpt = fit_tiny(tmp_path, "--diagnostics.sample_every=1", "--diagnostics.num_samples=64",
                    "--model.sampler.init_args.steps=4")  # fmt: skip
    fit = read_metrics(ckpt.parents[1])
    assert fit["stage"] == "fit" and fit["global_step"] == 4
    m = fit["metrics"]
    assert 0 < m["val/score_rel_error"] and "val/attention/pearson_best" in m
    assert "val/attention/random_init/pearson_best" in m
    assert any(k.endswith("/head0/pearson") for k in m)  # per layer and head in metrics.json
    assert "val/samples/gamma_kl_excess" in m and "val/samples/kl" not in m  # 64 samples: structured only
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(ckpt.parents[1])).Reload().Tags()["scalars"])
    assert {"val/score_rel_error", "val/excess_loss", "val/attention/pearson_best", "val/samples/ks_excess"} <= tags
    main(["test", "--config", str(QUICKSTART), f"--ckpt_path={ckpt}", "--data.init_args.num_val=64",
          "--diagnostics.num_samples=64", "--model.sampler.init_args.steps=4", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    out = read_metrics(tmp_path / "lightning_logs" / "version_1")
    assert out["stage"] == "test" and "test/score_rel_error" in out["metrics"] and "test/samples/ks" in out["metrics"]


def test_two_process_validation_matches_one_process(tmp_path):
    """DDP on the CPU (the CLI in a subprocess, Lightning's own launcher): the loss, score error
    and attention metrics equal those of one process, since every sample carries its own noise
    and time and the metrics reduce across ranks."""
    ckpt = fit_tiny(tmp_path)
    args = ["validate", "--config", str(QUICKSTART), f"--ckpt_path={ckpt}", "--data.init_args.num_val=64",
            "--diagnostics.num_samples=64", "--diagnostics.figures=false", "--model.sampler.init_args.steps=3",
            "--trainer.enable_progress_bar=false", "--trainer.strategy=ddp", f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    for devices in (1, 2):
        out = run_cli([*args, f"--trainer.devices={devices}"], tmp_path, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    one, two = (read_metrics(tmp_path / "lightning_logs" / f"version_{v}")["metrics"] for v in (1, 2))
    keys = [k for k in one if "/samples/" not in k]  # samples differ: each rank draws its own
    assert "val/score_rel_error" in keys and "val/attention/pearson_best" in keys
    for k in keys:
        assert two[k] == pytest.approx(one[k], rel=1e-5, abs=1e-8), k


class BatchLog(L.Callback):
    """Appends a checksum of every training batch to ``path`` (resume test)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {batch.double().sum().item():.12e}\n")


def test_resumed_fit_continues_the_data_stream(tmp_path):
    def fit(root, steps, *extra):
        log = tmp_path / f"{root}.log"
        main(["fit", "--config", str(QUICKSTART), *TINY, f"--trainer.max_steps={steps}", "--trainer.val_check_interval=4",
              f"--trainer.default_root_dir={tmp_path / root}", "--trainer.callbacks+=test_cli.BatchLog",
              f"--trainer.callbacks.path={log}", *extra])  # fmt: skip
        return log.read_text().splitlines()

    straight = fit("straight", 8)
    first = fit("first", 4)
    (ckpt,) = (tmp_path / "first" / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    resumed = fit("resumed", 8, f"--ckpt_path={ckpt}")
    assert first == straight[:4] and resumed == straight[4:]  # no batch replayed or skipped


def test_resumed_fit_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    """8 steps straight vs 4 steps, then resumed from the checkpoint to 8: same parameters, same EMA,
    same optimizer state, bit for bit (data, times and noise are all seeded by position)."""

    def fit(root, steps, *extra):
        main(["fit", "--config", str(QUICKSTART), *TINY, f"--trainer.max_steps={steps}",
              "--trainer.val_check_interval=4", f"--trainer.default_root_dir={tmp_path / root}", *extra])  # fmt: skip
        (ckpt,) = (tmp_path / root / "lightning_logs").glob("version_*/checkpoints/*.ckpt")
        return ckpt

    straight = torch.load(fit("straight", 8), map_location="cpu", weights_only=True)
    half = fit("half", 4)
    resumed = torch.load(fit("resumed", 8, f"--ckpt_path={half}"), map_location="cpu", weights_only=True)
    for key in ("state_dict", "current_model_state"):  # EMA weights, and the trained weights
        assert straight[key].keys() == resumed[key].keys()
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}/{name}"
    for a, b in zip(
        straight["optimizer_states"][0]["state"].values(), resumed["optimizer_states"][0]["state"].values()
    ):
        assert all(torch.equal(a[k], b[k]) for k in a)
