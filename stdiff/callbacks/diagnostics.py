"""``GPDiagnostics``: every validation and test scored against the exact GP, in TensorBoard, as
PNG figures and in ``metrics.json``.

Every validation (cheap): relative score error per log-SNR bin and the excess ε-loss over the
exact model on the same inputs (from the validation step's outputs, no extra forward pass), and
the alignment of each layer's temporal attention with Γ at a few noise levels, next to the same
network at random initialisation. Every ``sample_every`` validations during fit, and always in
``stdiff validate`` / ``stdiff test``: ``num_samples`` generated samples scored by
``stdiff.metrics.sample_distances`` (each number beside its finite-sample floor).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from stdiff._validation import check_int, warn
from stdiff.callbacks.conditional import conditional_metrics, run_precision
from stdiff.callbacks.reliability import stop_if_signalled
from stdiff.callbacks.summary import best_report, stopped_by_signal
from stdiff.callbacks.timing import Clock, FitTime, sampling_note
from stdiff.callbacks.verdicts import CLOSE_PER_DIM
from stdiff.kernels import Kernel
from stdiff.metrics import (
    SampleDistance,
    ScoreError,
    attention_by_component,
    attention_report,
    early_stopping_report,
    missing_kl_note,  # fmt: skip
    planned_endpoint,
    random_init_copy,
    score_error_terms,
)
from stdiff.seeding import DIAGNOSTICS, derive_seed, generator


class GPDiagnostics(Callback):
    """Scores the model against the data module's exact distribution, ``truth`` (off, with a
    warning, when the data module has none). The numbers come from ``stdiff.metrics``; this
    callback decides when, and writes them to the logger, ``metrics.json`` and ``figures/``.

    Args:
        num_samples: samples generated for the sample-based metrics (split across ranks).
        sample_every: during fit, compute the sample-based metrics every this many validations
            (0: never during fit; validate and test always do).
        score_bins: number of log-SNR bins of the score error.
        attention_log_snr: noise levels (log-SNR) at which attention is compared with Γ.
        reference_kernel: compare attention with this temporal kernel's Γ instead of the data's
            (the control: a model trained on Γ = I should not align with a real kernel).
        figures: write PNG figures to ``<run>/figures`` and to TensorBoard.
        seed: root seed of the generated, the exact (floor) and the attention-probe samples.
        conditional_cases: with a task (``data.init_args.task``): cases scored against the exact
            posterior, each observed at the task's mask (``stdiff.metrics.conditional_report``).
        conditional_samples: conditional samples drawn per case.
        conditional_estimator: estimator of the conditional CRPS and energy score: ``"biased"``
            (1/k² over sample pairs, as torchmetrics and properscoring) or ``"fair"`` (1/(k(k−1)),
            unbiased for the sampler's own score whatever k); recorded in ``metrics.json``.
        sample_at_steps: during fit, also compute the sample-based metrics at the validations of
            these training steps (``python -m stdiff.bench time_to_truth`` sets a geometric grid).
    """

    def __init__(
        self,
        num_samples: int = 1000,
        sample_every: int = 4,
        score_bins: int = 8,
        attention_log_snr: list[float] = [4.0, 0.0, -4.0],  # noqa: B006 (jsonargparse shows the default)
        reference_kernel: Kernel | None = None,
        figures: bool = True,
        seed: int = 0,
        conditional_cases: int = 32,
        conditional_samples: int = 64,
        conditional_estimator: Literal["biased", "fair"] = "biased",
        sample_at_steps: list[int] = [],  # noqa: B006 (jsonargparse shows the default)
    ) -> None:
        if num_samples < 2:
            raise ValueError(f"GPDiagnostics.num_samples must be >= 2, got {num_samples}")
        if sample_every < 0 or score_bins < 1:
            raise ValueError(f"sample_every must be >= 0 and score_bins >= 1, got {sample_every}, {score_bins}")
        self.num_samples, self.sample_every, self.score_bins = num_samples, sample_every, score_bins
        self.attention_log_snr = list(attention_log_snr)
        self.reference_kernel, self.figures, self.seed = reference_kernel, figures, seed
        self.conditional_cases = check_int("GPDiagnostics.conditional_cases", conditional_cases, 1)
        self.conditional_samples = check_int("GPDiagnostics.conditional_samples", conditional_samples, 2)
        if conditional_estimator not in ("biased", "fair"):
            raise ValueError(f"GPDiagnostics.conditional_estimator must be 'biased' or 'fair', got {conditional_estimator!r}")
        self.conditional_estimator = conditional_estimator
        bad = [s for s in sample_at_steps if not isinstance(s, int) or s < 1]
        if bad:
            raise ValueError(f"GPDiagnostics.sample_at_steps must be training steps >= 1, got {bad}")
        self.sample_at_steps = set(sample_at_steps)
        self.truth = None
        self.results: dict[str, float] = {}
        self.latest: dict[str, float] = {}
        self._validations = 0
        self.clock: Clock | None = None  # the validation in progress
        self._fit_time: FitTime | None = None  # the fit in progress

    # --- lifecycle -------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._checkpoint = None  # set by on_load_checkpoint, which Lightning calls after setup
        if stage == "predict":  # nothing to score: a fitted reference is not fitted for nothing
            self.truth = None
            return
        truth = getattr(trainer.datamodule, "truth", None)
        if truth is None:
            warn("GPDiagnostics: the data module has no `truth`; truth-checking metrics are off.")
            return
        self.truth = truth.simplified()  # a mixture of one: its Gaussian
        schedule = pl_module.schedule
        ends = schedule.log_snr(torch.tensor([schedule.t_max, schedule.t_min], dtype=torch.float64))
        self.score = ScoreError(torch.linspace(ends[0].item(), ends[1].item(), self.score_bins + 1))
        self.gamma = self.truth.gamma
        self._stopping = early_stopping_report(self.truth, schedule, CLOSE_PER_DIM * self.truth.dim / 10,
                                               planned_endpoint(pl_module.sampler, self.truth, schedule))
        if self.reference_kernel is not None:
            self.gamma = self.reference_kernel(torch.arange(self.truth.frames, dtype=torch.float64)[:, None])

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_time = FitTime()
        note = self.sampling_note(trainer.max_steps, getattr(trainer.datamodule, "batch_size", 1),
                                  getattr(pl_module.sampler, "steps", 0))  # fmt: skip
        if note and trainer.is_global_zero and self.truth is not None:
            print(f"stdiff: note: {note}", file=sys.stderr, flush=True)

    def sampling_note(self, max_steps: int, batch_size: int, sampler_steps: int) -> str | None:
        """``timing.sampling_note`` for this callback's sample count and schedule."""
        return sampling_note(self.num_samples, self.sample_every, max_steps, batch_size, sampler_steps)

    # A fit's validation time runs from each validation's start to the next training step (see
    # FitTime); this callback's hooks come first (StdiffCLI.instantiate_trainer).
    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._fit_time is not None:
            self._fit_time.validation_started(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._fit_time is not None:
            self._fit_time.training_resumed()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.clock = Clock(pl_module.device)
        if self.truth is not None:
            self.score = self.score.to(pl_module.device)
            self.score.reset()

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.truth is None or trainer.sanity_checking or not isinstance(outputs, dict) or "x_t" not in outputs:
            return  # (a conditional model's outputs: its exact counterpart is not the unconditional score)
        self.score.update(**score_error_terms(self.truth, pl_module.schedule, outputs))

    on_test_batch_end = on_validation_batch_end

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.truth is None or trainer.sanity_checking:
            return
        fitting = trainer.state.fn == "fit"
        self._validations += 1
        # the fit's last validation (see DiffusionModule.on_train_batch_end) always samples: the
        # end-of-fit summary and metrics.json then describe the final weights' samples
        due = self.sample_every > 0 and (self._validations % self.sample_every == 0 or trainer.should_stop)
        due = due or trainer.global_step in self.sample_at_steps
        self._sampled = with_samples = not fitting or due
        self._report(trainer, pl_module, "val", with_samples)
        if fitting:  # the step the verdicts describe, which a fit stopped by a signal reports
            self.results["fit/verdict_step"] = float(trainer.global_step)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self.truth is not None:
            self._report(trainer, pl_module, "test", True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate" and self.truth is not None:
            self._write_json(trainer, "validate")
            self._print_summary(trainer, "validate")

    def on_test_end(self, trainer, pl_module) -> None:
        if self.truth is not None:
            self._write_json(trainer, "test")
            self._print_summary(trainer, "test")

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._fit_time is not None and self._fit_time.parts:  # what validation cost the fit, by part
            self.results.update(self._fit_time.results())
        self.results.update(best_report(trainer))  # what BestCheckpoint chose: in the summary and metrics.json
        if self.truth is not None and self.results and not getattr(self, "_sampled", True) and trainer.global_step > 0:
            # stopped after a validation without samples (EarlyStopping): sample the weights handed
            # over (the fit's last, EMA-averaged where EMA runs) now, so the summary has its verdicts
            self.clock = Clock(pl_module.device)
            with torch.no_grad():
                self._report(trainer, pl_module.eval(), "val", True, log=False)
        if self.truth is not None and self.results:
            self._write_json(trainer, "fit")
            self._print_summary(trainer, "fit")
        elif self.truth is None:  # nothing to check against: say where things are
            from stdiff.callbacks.summary import no_truth_summary

            run, loss = self._run_dir(trainer), trainer.callback_metrics.get("val/loss")  # every rank: it broadcasts
            if trainer.is_global_zero:
                print(no_truth_summary(trainer.global_step, None if loss is None else float(loss), run, self.results,
                                       type(getattr(pl_module, "denoiser", None)).__name__), flush=True)  # fmt: skip

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # a fit stopped by SIGTERM or Ctrl+C: the verdicts of its last validation, now (no new sampling)
        if stopped_by_signal(trainer, exception) and self.truth is not None and self.results:
            self.results.update(best_report(trainer))
            self._write_json(trainer, "fit")
            self._print_summary(trainer, "fit")

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # which weights validate / test score: recorded in metrics.json and the summary
        self._checkpoint = {"path": os.path.abspath(str(trainer.ckpt_path)) if trainer.ckpt_path else None,
                            "global_step": checkpoint.get("global_step")}  # fmt: skip

    def _step(self, trainer) -> int:
        """The training step of the weights scored: the fit's, or the loaded checkpoint's."""
        loaded = getattr(self, "_checkpoint", None)
        if trainer.state.fn != "fit" and loaded and loaded["global_step"] is not None:
            return loaded["global_step"]
        return trainer.global_step

    @property
    def fit_validation_seconds(self) -> float:
        """Wall seconds the validations of the current fit took so far."""
        return self._fit_time.validation_seconds if self._fit_time is not None else 0.0

    # --- the metrics -----------------------------------------------------------------------------

    def _report(self, trainer, pl_module, stage: str, with_samples: bool, log: bool = True) -> None:
        self._dir = self._run_dir(trainer)  # a collective call: every rank, before rank-0-only work
        clock = self.clock  # started with the validation epoch
        conditional_model = pl_module.mask is not None
        scored = not conditional_model and self.score.update_called  # data with gaps in every window: none
        with clock.part("metrics"):
            results = {f"{stage}/{k}": v.item() for k, v in self.score.compute().items()} if scored else {}
            results.update(self._attention(trainer, pl_module, stage))
            if with_samples and not conditional_model:
                results.update(self._samples(trainer, pl_module, stage))
            task = getattr(trainer.datamodule, "task", None)
            if with_samples and task is not None and pl_module.conditioning is not None:
                results.update(conditional_metrics(self, trainer, pl_module, stage, task))
        bad = sorted(k for k, v in results.items() if not math.isfinite(v) and "/head" not in k)
        if bad:  # e.g. diverging samples: say so, rather than leave `null` in metrics.json unexplained
            warn(f"GPDiagnostics: {len(bad)} metrics are not finite ({', '.join(bad[:5])}): the samples or the "
                 "model's outputs hold NaN or inf (a schedule whose log-SNR range is too wide for the sampler, too "
                 "few steps, or a diverged model)")  # fmt: skip
        if log:
            for name, value in results.items():
                if math.isfinite(value) and "/head" not in name:  # per-head values: metrics.json only
                    pl_module.log(name, value, sync_dist=True)  # equal on every rank already; averaging keeps it
        if self.figures and trainer.is_global_zero:
            bins = [k.split("logsnr_")[1] for k in results if "/score_rel_error/logsnr_" in k]
            values = [v for k, v in results.items() if "/score_rel_error/logsnr_" in k]
            from stdiff.callbacks.figures import score_error_figure

            with clock.part("figures"):
                self.save_figure(trainer, f"{stage}_score_error", score_error_figure(bins, values))
        total, cost = clock.costs()  # what this validation cost, by part
        timing = {f"{stage}/seconds": total, **{f"{stage}/seconds/{k}": v for k, v in cost.items()}}
        for name, value in timing.items() if log else ():
            pl_module.log(name, value, rank_zero_only=True)
        if not log and trainer.is_global_zero:  # after the fit, where Lightning's log() is closed
            for logger in trainer.loggers:
                logger.log_metrics({k: v for k, v in {**results, **timing}.items() if math.isfinite(v) and "/head" not in k},
                                   trainer.global_step)  # fmt: skip
        if trainer.state.fn == "fit" and self._fit_time is not None:
            for k, v in cost.items():
                self._fit_time.parts[k] += v
        if not self.truth.is_gaussian:  # what the summary says it scored against (not logged: not a measurement)
            results[f"{stage}/mixture_components"] = float(len(self.truth.components))
        self.results = {**self.results, **results, **timing}
        self.latest = {**results, **timing}  # this validation's alone (results keeps earlier sample metrics)

    def _attention(self, trainer, pl_module, stage: str) -> dict[str, float]:
        """Alignment of each temporal attention map with Γ at each noise level, for the model and
        for the same network at random initialisation (the control)."""
        backbone = getattr(pl_module.denoiser, "backbone", None)
        if backbone is None:  # the exact model, or a noise model without a network
            return {}
        # 64 probe samples up to d = 8192, fewer beyond (8 at d = 65,536): maps averaged over samples
        # need few, and the probe's network evaluations are not to outweigh the sampling's
        probes = min(64, max(8, 2**19 // self.truth.dim))
        x0 = self.truth.sample(probes, generator(self.seed, DIAGNOSTICS, 0)).to(pl_module.device)
        noise = torch.randn(x0.shape, generator=generator(self.seed, DIAGNOSTICS, 1)).to(x0)
        out: dict[str, float] = {}
        if not self.truth.is_gaussian:  # each component's samples against each component's Γ
            values = attention_by_component(backbone, pl_module.schedule, self.truth, self.attention_log_snr,
                                            lambda *key: generator(self.seed, DIAGNOSTICS, *key), pl_module.device)  # fmt: skip
            out.update({f"{stage}/attention/{k}": v for k, v in values.items()})
        for label, net in (("", backbone), ("random_init/", random_init_copy(backbone, self.seed))):
            values, maps = attention_report(net, pl_module.schedule, x0, noise, self.gamma, self.attention_log_snr)
            out.update({f"{stage}/attention/{label}{k}": v for k, v in values.items()})
            if label == "" and self.figures and trainer.is_global_zero:
                import matplotlib.pyplot as plt

                from stdiff.callbacks.figures import attention_figures

                with self.clock.part("figures"):
                    fig = None
                    for lam, fig in attention_figures(maps, self.gamma):  # one figure, refilled level by level
                        self.save_figure(trainer, f"{stage}_attention_logsnr{lam:+.0f}", fig, close=False)
                    if fig is not None:
                        plt.close(fig)
        return out

    def _samples(self, trainer, pl_module, stage: str) -> dict[str, float]:
        """Generate ``num_samples`` (split across ranks) and score them against the truth."""
        world, rank = trainer.world_size, trainer.global_rank
        n = math.ceil(self.num_samples / world)
        # test draws its own samples and its own exact floor, apart from validation's
        stream, floor_key = ((2, rank), (3,)) if stage == "val" else ((2, rank, 1), (3, 1))
        g = generator(self.seed, DIAGNOSTICS, *stream, device=pl_module.device)
        bar = None
        if trainer.is_global_zero and trainer.progress_bar_callback is not None:
            from tqdm.auto import tqdm

            bar = tqdm(total=pl_module.sampler.intervals, desc=f"sampling {self.num_samples} for {stage} metrics", leave=False)

        def progress(i: int, total: int) -> None:
            stop_if_signalled(trainer)  # SIGTERM or Ctrl+C: now, not after minutes of sampling
            if bar is not None:
                bar.update(1)

        with self.clock.part("sampling"), run_precision(trainer):
            x = pl_module.sampler.sample(pl_module.denoiser, (n, *self.truth.sample_shape), g, pl_module.device,
                                         progress=progress).float()  # fmt: skip
        if bar is not None:
            bar.close()
        floor_seed = derive_seed(self.seed, DIAGNOSTICS, *floor_key)
        endpoint = getattr(pl_module.sampler, "resolved", None) or planned_endpoint(pl_module.sampler, self.truth,
                                                                                   pl_module.schedule)  # what it ended on
        metric = SampleDistance(self.truth, pl_module.schedule, floor_seed, endpoint=endpoint).to(pl_module.device)
        metric.update(x)
        values = metric.compute()
        note = missing_kl_note(self.truth, values, len(x) * world, metric.full_max_dim)
        if note is not None:
            warn(f"GPDiagnostics: {note}")
        values.update(self._sampler_floor(trainer, pl_module, values, (n, *self.truth.sample_shape), stream))
        if self.figures and trainer.is_global_zero:
            with self.clock.part("figures"):
                from stdiff.callbacks.figures import sample_figures

                for name, fig in sample_figures(self.truth, x.double().cpu(), floor_seed, values).items():
                    self.save_figure(trainer, f"{stage}_{name}", fig)
        return {f"{stage}/samples/{k}": v for k, v in values.items()}

    def _sampler_floor(self, trainer, pl_module, values: dict, shape: tuple, stream: tuple) -> dict:
        """What the exact model reaches through the same sampler, steps and t_min, from the same
        noise (``stdiff.metrics.sampler_floor``: the part of the KL no training can remove), with
        what stopping at t_min costs (``early_stopping_report``, made once in setup), so that the
        summary can say what to change when the sampler, not the model, is far off."""
        from stdiff.metrics import sampler_floor

        def draw(model) -> torch.Tensor:  # the exact model's samples from the model's own noise, every rank's
            g = generator(self.seed, DIAGNOSTICS, *stream, device=pl_module.device)
            with self.clock.part("sampling"):
                x = pl_module.sampler.sample(model, shape, g, pl_module.device,
                                             progress=lambda i, total: stop_if_signalled(trainer)).float()  # fmt: skip
            return pl_module.all_gather(x).reshape(-1, *shape[1:]).cpu()

        with self.clock.part("sampling"):
            floor = sampler_floor(self.truth, pl_module.sampler, pl_module.denoiser, values, draw,
                                  derive_seed(self.seed, DIAGNOSTICS, *stream), pl_module.device)  # fmt: skip
        return {**self._stopping, **floor}

    # --- output ----------------------------------------------------------------------------------

    def save_figure(self, trainer, name: str, fig, close: bool = True) -> None:
        """``fig`` into ``<run>/figures/<name>_step<N>.png`` and TensorBoard (``figures.write``)."""
        from stdiff.callbacks.figures import write

        tensorboard = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        write(fig, os.path.join(self._dir, "figures"), name, self._step(trainer), tensorboard, close)

    def _print_summary(self, trainer, stage: str) -> None:
        from stdiff.callbacks.summary import print_summary

        print_summary(self, trainer, stage, self._run_dir(trainer))  # on every rank: it broadcasts

    @staticmethod
    def _run_dir(trainer) -> str:
        """The run directory; ``trainer.log_dir`` broadcasts, so every rank must call this."""
        return trainer.log_dir or trainer.default_root_dir

    def _write_json(self, trainer, stage: str) -> None:
        from stdiff.callbacks.summary import write_metrics

        write_metrics(self, trainer, stage, self._run_dir(trainer))  # on every rank: it broadcasts
