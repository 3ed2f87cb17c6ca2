"""The SequenceDataModule contract: a new data set is ``sample_shape`` and ``sample`` (the toy below,
13 lines), and gets seeding, exact resume, validation and predict from the base, through the CLI."""

import numpy as np
import torch
from conftest import QUICKSTART

from stdiff.cli import main
from stdiff.data import SequenceDataModule


class RandomWalks(SequenceDataModule):
    """Gaussian random walks on ``points`` independent coordinates (a toy data set)."""

    def __init__(self, frames: int = 8, points: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        self.frames, self.points = frames, points

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.frames, self.points)

    def sample(self, n, generator, device="cpu"):
        steps = torch.randn(n, self.frames, self.points, generator=generator, device=device)
        return steps.cumsum(1) / self.frames**0.5


ARGS = ["--config", str(QUICKSTART), "--data=test_data_contract.RandomWalks", "--data.init_args.batch_size=16",
        "--data.init_args.num_val=32", "--data.init_args.frames=8", "--trainer.val_check_interval=5", "--checkpoint.every_n_train_steps=5",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]  # fmt: skip


def state(root):
    (path,) = root.glob("lightning_logs/version_*/checkpoints/last.ckpt")
    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_toy_subclass_trains_resumes_exactly_and_predicts(tmp_path):
    main(["fit", *ARGS, "--trainer.max_steps=10", f"--trainer.default_root_dir={tmp_path / 'straight'}"])
    main(["fit", *ARGS, "--trainer.max_steps=5", f"--trainer.default_root_dir={tmp_path / 'cut'}"])
    main(["fit", *ARGS, "--trainer.max_steps=10", "--ckpt_path=last", f"--trainer.default_root_dir={tmp_path / 'cut'}"])
    a, b = state(tmp_path / "straight"), state(tmp_path / "cut")
    assert a["global_step"] == b["global_step"] == 10
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    (ckpt,) = (tmp_path / "cut").glob("lightning_logs/version_*/checkpoints/last.ckpt")
    main(["predict", *ARGS, f"--ckpt_path={ckpt}", "--data.init_args.num_predict=20",
          "--model.sampler.init_args.steps=3", f"--trainer.default_root_dir={tmp_path / 'cut'}"])  # fmt: skip
    (samples,) = (tmp_path / "cut").glob("lightning_logs/version_0/predict_0/samples.npy")  # under the run
    x = np.load(samples)
    assert x.shape == (20, 8, 4) and np.isfinite(x).all()
    # --ckpt_path best: the run's checkpoints/best.ckpt (BestCheckpoint's choice), beside its training too
    main(["predict", *ARGS, "--ckpt_path=best", "--data.init_args.num_predict=2", "--model.sampler.init_args.steps=3",
          f"--trainer.default_root_dir={tmp_path / 'cut'}"])  # fmt: skip
    meta = (tmp_path / "cut" / "lightning_logs" / "version_0" / "predict_1" / "samples.json").read_text()
    assert str(ckpt.with_name("best.ckpt")) in meta
    # a conditional predict of a checkpoint outside the output folder writes under the checkpoint's run
    observed = np.random.default_rng(0).standard_normal((1, 8, 4)).astype(np.float32)
    observed[:, 5:] = np.nan
    np.save(tmp_path / "obs.npy", observed)
    main(["predict", *ARGS, f"--ckpt_path={ckpt}", "--data.init_args.num_predict=3", "--model.sampler.init_args.steps=3",
          "--model.conditioning=ReconstructionGuidance", f"--data.init_args.observed={tmp_path / 'obs.npy'}",
          f"--trainer.default_root_dir={tmp_path / 'elsewhere'}"])  # fmt: skip
    x = np.load(tmp_path / "cut" / "lightning_logs" / "version_0" / "predict_2" / "samples.npy")
    assert x.shape == (1, 3, 8, 4) and np.array_equal(x[:, :, :5], np.broadcast_to(observed[:, None, :5], (1, 3, 5, 4)))
    assert not [p for p in (tmp_path / "elsewhere").rglob("*") if p.is_file()]  # nothing written there
