"""What a run leaves and says: every fit ends with a validation (diagnostics, metrics.json and
figures even when shorter than val_check_interval), a plain end-of-run summary with a verdict,
test/validate record which checkpoint they scored, no Lightning warning about checkpoint state a
test or predict never needed, and the exact model's runs are labelled."""

import json
import math
import warnings

import pytest
import torch
from conftest import QUICKSTART

from stdiff.callbacks.verdicts import verdict
from stdiff.cli import main
from stdiff.kernels import RBF, PoweredExponential
from stdiff.metrics import gaussian_fit_kl
from stdiff.metrics.distances import kl_noise
from stdiff.truth import KroneckerGP

SHORT = ["--trainer.max_steps=7", "--trainer.log_every_n_steps=1", "--data.init_args.num_val=32",
         "--trainer.enable_progress_bar=false", "--diagnostics.num_samples=40", "--model.sampler.init_args.steps=2"]  # fmt: skip


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A 7-step fit under the quickstart's val_check_interval of 500 and sample_every of 6."""
    root = tmp_path_factory.mktemp("short")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["fit", "--config", str(QUICKSTART), *SHORT, f"--trainer.default_root_dir={root}"])
    return root, root / "lightning_logs" / "version_0"


def test_a_fit_shorter_than_the_validation_interval_still_validates_at_its_end(short_run, capsys):
    _, run = short_run
    written = json.loads((run / "metrics.json").read_text())
    assert written["stage"] == "fit" and written["global_step"] == 7
    m = written["metrics"]
    assert math.isfinite(m["val/loss"]) and math.isfinite(m["val/score_rel_error"])
    assert "val/samples/whitened_norm_excess" in m  # the last validation samples, whatever sample_every
    assert sorted(p.name for p in (run / "figures").glob("val_paths_step*.png")) == ["val_paths_step7.png"]
    assert (run / "checkpoints" / "best.ckpt").is_file()  # the final validation also feeds the best checkpoint


def test_the_end_of_fit_summary_names_the_numbers_the_verdict_and_where_they_are(tmp_path, capsys):
    main(["fit", "--config", str(QUICKSTART), *SHORT, "--diagnostics.num_samples=600", "--model.sampler.init_args.steps=20",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    out = capsys.readouterr().out
    summary = out[out.index("stdiff fit: step 7, against the exact GP") :]
    for line in ("score error", "excess loss", "sample KL excess", "whitened norm", "verdict: NOT at the truth yet"):
        assert line in summary, summary
    run = tmp_path / "lightning_logs" / "version_0"
    assert f"{run}/metrics.json" in summary and f"{run}/figures/" in summary
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    assert f"sample KL excess  {m['val/samples/kl_excess']:.3g}" in summary
    # beside it, what the exact model reaches through the same sampler from the same noise
    assert f"exact model       {m['val/samples/exact_model_kl_excess']:.3g}   its KL excess through the same" in summary
    from stdiff.callbacks.summary import summary_of_run

    assert summary_of_run(str(run)) in out  # again from the run's files: the same lines


def test_test_records_the_checkpoint_it_scored_and_test_and_predict_raise_no_checkpoint_warnings(short_run):
    root, run = short_run
    ckpt = run / "checkpoints" / "last.ckpt"
    common = ["--config", str(QUICKSTART), f"--ckpt_path={ckpt}", "--trainer.enable_progress_bar=false",
              f"--trainer.default_root_dir={root}", "--model.sampler.init_args.steps=2"]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["test", *common, "--data.init_args.num_val=32", "--diagnostics.num_samples=40",
              "--likelihood.num_samples=4", "--likelihood.steps=2"])  # fmt: skip
        main(["predict", *common, "--data.init_args.num_predict=4"])
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "WeightAveraging" in m or "dirpath has changed" in m], messages
    written = json.loads((run / "test_0" / "metrics.json").read_text())
    assert written["checkpoint"] == {"path": str(ckpt), "global_step": 7} and written["global_step"] == 7
    assert written["model"] == "Denoiser"
    from stdiff.callbacks.summary import summary_of_run

    assert "  true KL           " in summary_of_run(str(run / "test_0"))  # the likelihood, in the summary too
    assert [p.name for p in (run / "test_0" / "figures").glob("test_paths_*.png")] == ["test_paths_step7.png"]
    assert not (run / "test_0" / "checkpoints").exists() and not (run / "predict_0" / "checkpoints").exists()


def test_the_exact_models_runs_are_labelled(tmp_path, capsys):
    main(["validate", "--config", str(QUICKSTART), "--model.denoiser=ExactDenoiser", "--data.init_args.num_val=32",
          "--diagnostics.num_samples=40", "--model.sampler.init_args.steps=2", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    written = json.loads((tmp_path / "lightning_logs" / "exact_validate_0" / "metrics.json").read_text())
    assert written["checkpoint"] is None and written["model"] == "ExactDenoiser"
    assert "stdiff validate: ExactDenoiser, no checkpoint, against the exact GP" in capsys.readouterr().out
    assert not list((tmp_path / "lightning_logs").glob("version_*"))


@pytest.mark.parametrize("frames,space,n,seeds,rel", [(4, 4, 500, 300, 0.12), (32, 8, 2000, 100, 0.2)],
                         ids=["d=16", "quickstart d=256"])  # fmt: skip
def test_the_verdicts_noise_is_the_spread_of_exact_samples_kl(frames, space, n, seeds, rel):
    """Oracle: the spread over seeds of the Gaussian-fit KL of n exact samples (its sample sd is
    within 1/sqrt(2·seeds) of the true one: 4 % and 7 %) is kl_noise, about sqrt(d(d+3))/(2n)."""
    gp = KroneckerGP(PoweredExponential(4.0, 1.0), RBF(1.0), frames=frames, space_shape=(space,))
    cov = gp.covariance()
    kls = [gaussian_fit_kl(gp.sample(n, torch.Generator().manual_seed(s), dtype=torch.float64), gp.mean, cov)
           for s in range(seeds)]  # fmt: skip
    d, sd = gp.dim, torch.tensor(kls).std().item()
    assert sd == pytest.approx(kl_noise(d, n), rel=rel), (sd, kl_noise(d, n))
    assert kl_noise(16, 500) == pytest.approx(math.sqrt(16 * 19) / (2 * 500), rel=0.02)  # first order: d/n small
    assert kl_noise(256, 2000) == pytest.approx(0.0674, abs=1e-4)  # the quickstart (first order: 0.0644)


def test_the_verdict_says_which_of_three_it_is():
    d, n = 256, 2000  # the quickstart: noise 0.064, close below 2.56
    assert verdict(0.1, d, n).startswith("reached the truth")
    assert verdict(0.31, d, n).startswith("close to the truth")
    assert verdict(36.9, d, n).startswith("NOT at the truth yet")
    assert verdict(float("nan"), d, n).startswith("NOT at the truth")


def test_a_config_files_data_paths_are_found_beside_it_from_any_directory(tmp_path, monkeypatch, capsys):
    import numpy as np
    import yaml

    from stdiff.config_files import config_relative_paths

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "data").mkdir(parents=True)
    elsewhere.mkdir()
    np.save(project / "data" / "train.npy", np.random.default_rng(0).standard_normal((3, 120, 4)).astype("float32"))
    config = project / "own.yaml"
    config.write_text(yaml.safe_dump({"data": {"class_path": "ArrayDataModule", "init_args": {
        "paths": ["data/train.npy"], "frames": 8, "stride": 4, "batch_size": 8}}}))  # fmt: skip
    monkeypatch.chdir(elsewhere)
    args = ["fit", "--config", str(config), "--data.init_args.frames=8"]
    assert config_relative_paths(args) == [*args[:3], f'--data.init_args.paths=["{project / "data" / "train.npy"}"]',
                                           args[3]]  # fmt: skip
    (elsewhere / "data").mkdir()
    np.save(elsewhere / "data" / "train.npy", np.zeros((1, 10, 4), dtype="float32"))
    assert config_relative_paths(args) == args  # a path that exists where the command runs is the one meant
    (elsewhere / "data" / "train.npy").unlink()
    main(["fit", "--config", str(QUICKSTART), "--config", str(config), "--trainer.max_steps=2",
          "--trainer.enable_progress_bar=false", "--diagnostics.figures=false", "--trainer.default_root_dir=out"])  # fmt: skip
    assert (elsewhere / "out" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    out = capsys.readouterr().out  # no truth here: the summary says so, and where the run is
    assert "stdiff fit: step 2, val/loss " in out and "no known distribution to score against" in out


def test_the_summary_reports_conditional_tasks_and_says_when_there_is_no_kl():
    from stdiff.callbacks.summary import summary

    results = {"test/score_rel_error": 0.02, "test/samples/whitened_norm_excess": 0.5,
               "test/conditional/Forecast/crps_ratio": 1.009, "test/conditional/Forecast/coverage50": 0.479,
               "test/conditional/Forecast/coverage90": 0.861, "test/conditional/Forecast/spread": 0.993}  # fmt: skip
    text = summary(results, "test", 4096, 200, "lightning_logs/version_3/test_0", checkpoint={"path": "a.ckpt",
                   "global_step": 20}, model="Denoiser")  # fmt: skip
    assert text.startswith("stdiff test: checkpoint a.ckpt (step 20), against the exact GP")
    assert "no full-covariance KL" in text and "  verdict: " not in text  # no KL verdict, a conditional one
    assert ("Forecast          CRPS 1.009 × the Bayes-optimal's; the 50 % and 90 % intervals hold 47.9 % and 86.1 % of "
            "held-out values; spread 0.993") in text  # fmt: skip
    assert "verdict (Forecast): at the exact posterior: CRPS within 0.9 % of the Bayes-optimal, intervals of the right" in text
    from stdiff.callbacks.verdicts import conditional_verdict

    wide = conditional_verdict({"crps_ratio": 1.3, "spread": 1.4, "coverage50": 1.0})
    assert wide.startswith("NOT at the posterior yet: CRPS 30 % above the Bayes-optimal, intervals too wide (spread 1.4")
    assert conditional_verdict({"crps_ratio": 0.89, "spread": 0.95}, exact_truth=False).startswith("better than the fitted")
    assert "tensorboard --logdir lightning_logs\n" in text + "\n"
    bare = summary({}, "validate", 16, 100, "out", exact_truth=False, model="ExactDenoiser")
    assert "ExactDenoiser, no checkpoint, against the fitted Gaussian reference" in bare
    assert "no sample metrics this time" in bare


def test_one_disk_check_for_predict_names_both_figures(tmp_path):
    from stdiff._validation import check_disk_space

    check_disk_space(1024, tmp_path / "not" / "made" / "yet", "predict would write {size} of samples", "lower it")
    with pytest.raises(OSError, match=r"predict would write 9.09e\+06 TiB of samples to .*/new, whose disk has .* "
                                      r"free: lower it"):  # fmt: skip
        check_disk_space(10**19, tmp_path / "new", "predict would write {size} of samples", "lower it")


def test_a_checkpoint_knows_its_data_and_is_refused_on_other_data(short_run, capsys):
    """[S] 2: scored against a distribution it was not trained on only on purpose."""
    root, run = short_run
    ckpt = run / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=True)["stdiff_data"]
    assert stored["class_path"].endswith("GPDataModule") and stored["init_args"]["frames"] == 32
    assert stored["init_args"]["temporal"] == {"class_path": "stdiff.kernels.PoweredExponential",
                                               "init_args": {"lengthscale": 4.0, "power": 1.0}}  # fmt: skip
    assert "batch_size" not in stored["init_args"] and "seed" not in stored["init_args"]  # how it is served: free
    common = ["validate", "--config", str(QUICKSTART), f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={root}",
              "--trainer.enable_progress_bar=false", "--diagnostics.num_samples=40", "--model.sampler.init_args.steps=2",
              "--data.init_args.num_val=16", "--data.init_args.batch_size=16", "--data.init_args.temporal=GeneralizedCauchy"]  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        main(common)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "was trained on other data: data.init_args.temporal: PoweredExponential(lengthscale=4.0, " \
        "power=1.0) in the checkpoint, GeneralizedCauchy(lengthscale=4.0, alpha=2.0, beta=1.0) now" in err, err
    assert f"--config {run / 'config.yaml'}" in err and "--allow_other_data=true" in err
    main([*common, "--allow_other_data=true"])  # on purpose: scored on this data
    assert "stdiff validate: checkpoint" in capsys.readouterr().out


def test_every_figure_panel_has_axis_labels_and_no_module_path_in_its_title():
    from stdiff.callbacks import figures

    t, g = torch.eye(6), torch.randn(40, 6, 3)
    maps = {"denoiser.backbone.blocks.0.attn": torch.rand(2, 6, 6), "denoiser.backbone.blocks.1.attn": torch.rand(2, 6, 6)}
    made = [figures.attention_figure(maps, t, 0.0), figures.covariance_figure({"Γ": t, "Σ": torch.eye(3)},
            {"Γ": t, "Σ": torch.eye(3)}), figures.paths_figure(g, g), figures.correlation_figure(torch.ones(6), torch.ones(6)),
            figures.score_error_figure(["-8_-4", "-4_0"], [0.1, 0.01]),
            figures.fan_chart(g[0], torch.zeros(6, 3, dtype=torch.bool), g[:8], g[8:16], "Forecast(context=3)")]  # fmt: skip
    for fig in made:
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert panels
        for ax in panels:
            assert ax.get_xlabel() and ax.get_title(), (fig, ax.get_title())
            assert "backbone" not in ax.get_title() and "blocks" not in ax.get_title()
        assert any(ax.get_ylabel() for ax in panels)
    assert [ax.get_title() for ax in made[0].axes if ax.get_label() != "<colorbar>"][:2] == ["layer 1, head 1",
                                                                                              "layer 1, head 2"]  # fmt: skip


def test_ckpt_path_last_takes_the_latest_checkpoint_of_this_data_and_says_which_it_passed_over(tmp_path, caplog):
    """README task 1 in order: a GeneralizedCauchy fit after the quickstart's, then `test --config
    configs/quickstart.yaml --ckpt_path last` scores the quickstart's checkpoint, not the newer one."""
    tiny = ["--trainer.max_steps=2", "--trainer.enable_progress_bar=false", "--data.init_args.num_val=16",
            "--diagnostics.num_samples=8", "--model.sampler.init_args.steps=2", "--diagnostics.figures=false",
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    main(["fit", "--config", str(QUICKSTART), *tiny])
    main(["fit", "--config", str(QUICKSTART), *tiny, "--data.init_args.temporal=GeneralizedCauchy"])
    main(["validate", "--config", str(QUICKSTART), *tiny, "--ckpt_path=last"])
    runs = tmp_path / "lightning_logs"
    assert (runs / "version_0" / "validate_0" / "metrics.json").is_file() and not (runs / "version_1" / "validate_0").exists()
    assert f"--ckpt_path last: passing over {runs / 'version_1' / 'checkpoints' / 'last.ckpt'}: data.init_args.temporal: " \
        "GeneralizedCauchy(lengthscale=4.0, alpha=2.0, beta=1.0) in the checkpoint" in caplog.text


def test_attention_figures_refill_one_figure_level_by_level():
    from stdiff.callbacks import figures

    maps = {lam: {"a": torch.full((2, 4, 4), 0.1 * (i + 1))} for i, lam in enumerate((-4.0, 0.0, 4.0))}
    seen = []
    for lam, fig in figures.attention_figures(maps, torch.eye(4)):
        image = fig.axes[0].get_images()[0]
        seen.append((lam, id(fig), float(image.get_array().max()), image.get_clim()[1], fig._suptitle.get_text()))
    assert [s[0] for s in seen] == [-4.0, 0.0, 4.0] and len({s[1] for s in seen}) == 1  # one figure, three levels
    assert [round(s[2], 6) for s in seen] == [0.1, 0.2, 0.3] and [round(s[3], 6) for s in seen] == [0.1, 0.2, 0.3]
    assert seen[-1][4].endswith("log-SNR +4.0")
