"""``stdiff``: the LightningCLI entry point (``fit / validate / test / predict``) driven by YAML.

Before jsonargparse parses anything, ``stdiff.config_check`` walks the configuration against the
classes it names (unknown names, wrong bases, unknown keys, wrong types: the key, the value and
what is allowed). After instantiation, ``stdiff.runs.preflight`` checks the checkpoint, the output
directory and the request, from the public ``before_<subcommand>`` hooks, before anything is written.
"""

from __future__ import annotations

import difflib
import os
import signal
import sys
import threading
import traceback
import warnings
from typing import Literal

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks.progress import ProgressBar as LightningProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from stdiff import checkpoints, runs
from stdiff.atomic import AtomicCheckpointIO
from stdiff.callbacks import (
    BestCheckpoint,
    Checkpoint,
    GPDiagnostics,
    LikelihoodReport,
    NonFiniteError,
    NonFiniteGuard,
    SampleWriter,
    reliability,
)
from stdiff.callbacks.reliability import STOP_SIGNALS
from stdiff.config_check import ConfigError, check_config, resolve_class
from stdiff.config_files import check_encoding, config_relative_paths, packaged_configs
from stdiff.data import SequenceDataModule
from stdiff.module import DiffusionModule
from stdiff.plugins import PluginError, load_plugins

# Keys of a subcommand's configuration that name classes: (class, subclass mode).
ROOTS = {
    "model": (DiffusionModule, False),
    "data": (SequenceDataModule, True),
    "trainer": (L.Trainer, False),
    "diagnostics": (GPDiagnostics, False),
    "likelihood": (LikelihoodReport, False),
    "checkpoint": (Checkpoint, False),
    "best_checkpoint": (BestCheckpoint, False),
    "nonfinite": (NonFiniteGuard, False),
    "sample_writer": (SampleWriter, False),
}


DESCRIPTION = ("stdiff: train diffusion transformers on spatial-temporal sequences and check them against the "
               "truth. Start with `stdiff fit --config configs/quickstart.yaml`; `stdiff <subcommand> --help` lists "
               "a subcommand's options.")  # fmt: skip
SUBCOMMAND_HELP = {
    "fit": "Train a model; every validation is scored against the truth, the end prints a summary.",
    "validate": "Score a checkpoint (--ckpt_path) or the exact model on the validation set and its own samples.",
    "test": "Score a checkpoint on the test set with fresh samples, and its exact log-likelihood.",
    "predict": "Draw samples (data.init_args.num_predict), or complete observations (data.init_args.observed).",
}


class UsageError(Exception):
    """A problem with the command: reported as ``stdiff <subcommand>: error: …``, exit status 2."""

    def __init__(self, subcommand: str | None, message: str) -> None:
        super().__init__(message)
        self.subcommand = subcommand


class StdiffArgumentParser(LightningArgumentParser):
    """Lightning's parser, with the problem first and no usage block of every option above it."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["dump_header"] = [f"stdiff=={stdiff_version()}"]  # heads every saved config.yaml
        kwargs.setdefault("prog", "stdiff")  # not "__main__.py" under python -m stdiff
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        hint = self._closest_option(message)
        if hint:
            message = f"{hint}\n{message}"
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)  # raises: a caller handles it
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {message}\ntip: `{prog} --help` lists every option\n")
        self.exit(2)

    def _closest_option(self, message: str) -> str | None:
        """For a misspelt top-level option, the option meant."""
        if not message.startswith("unrecognized arguments:"):
            return None
        given = message.split(":", 1)[1].split()[0].split("=")[0]
        options = [o for a in self._actions for o in a.option_strings]
        for sub in getattr(self, "_subcommands_action", None) and self._subcommands_action.choices.values() or []:
            options += [o for a in sub._actions for o in a.option_strings]
        close = difflib.get_close_matches(given, options, n=1, cutoff=0.6)
        return f"unknown option {given}" + (f". Did you mean {close[0]}?" if close else "")


class StdiffCLI(LightningCLI):
    """LightningCLI for stdiff: ``DiffusionModule`` as the model, any ``SequenceDataModule`` by
    ``class_path`` as the data, the sample shape linked from data to model."""

    def __init__(self, *args, **kwargs) -> None:
        silence_advertisements()  # here too, for the benchmarks and experiments that build a CLI directly
        kwargs.setdefault("model_class", DiffusionModule)
        kwargs.setdefault("datamodule_class", SequenceDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("parser_class", StdiffArgumentParser)
        kwargs.setdefault("auto_configure_optimizers", False)  # one optimizer path: the module's
        super().__init__(*args, **kwargs)

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        main_kwargs = {**main_kwargs, "description": DESCRIPTION}
        for name, text in SUBCOMMAND_HELP.items():  # the subcommand's own --help: the same line, in stdiff's words
            subparser_kwargs[name] = {"description": text, **subparser_kwargs.get(name, {})}
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        self.parser.add_argument("--version", action="version", version=f"stdiff {stdiff_version()}")
        action = getattr(self.parser, "_subcommands_action", None)
        for choice in getattr(action, "_choices_actions", []):  # Lightning's help: its Trainer docstrings, cut short
            choice.help = SUBCOMMAND_HELP.get(choice.dest, choice.help)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        if args is None or isinstance(args, (list, tuple)):
            given = list(sys.argv[1:] if args is None else args)
            try:
                check_encoding(given)
            except ConfigError as err:
                raise UsageError(next((a for a in given if a in SUBCOMMAND_HELP), None), str(err)) from None
            resolved = config_relative_paths(packaged_configs(given))
            subcommand = next((a for a in resolved if a in ("fit", "validate", "test", "predict")), None)
            try:
                notes = check_config(resolved, ROOTS)
            except ConfigError as err:
                raise UsageError(subcommand, str(err)) from None
            from lightning.pytorch.utilities.rank_zero import rank_zero_only

            for note in notes if rank_zero_only.rank == 0 else []:
                print(f"stdiff: note: {note}", file=sys.stderr, flush=True)
            args = None if args is None and resolved == given else resolved
        with warnings.catch_warnings():  # args given in place of sys.argv (a packaged config found): intended
            warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter")
            super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The data decides the sample shape; the model is built for it (never written twice).
        parser.link_arguments("data.sample_shape", "model.sample_shape", apply_on="instantiate")
        # Always present, configurable under their own keys: `stdiff predict` writes its samples,
        # every validation and test is scored against the truth.
        parser.add_lightning_class_args(SampleWriter, "sample_writer")
        parser.add_lightning_class_args(GPDiagnostics, "diagnostics")
        parser.add_lightning_class_args(LikelihoodReport, "likelihood")  # `stdiff test` only
        # Periodic and on-signal checkpoints (checkpoints/last.ckpt), and the non-finite check.
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        # checkpoints/best.ckpt (chosen by held-out forecasts, step 0 a candidate) and a warning when
        # val/loss keeps rising.
        parser.add_lightning_class_args(BestCheckpoint, "best_checkpoint")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_argument(
            "--float32_matmul_precision", type=Literal["highest", "high", "medium"], default="highest",
            help="torch.set_float32_matmul_precision for the run: 'highest' (exact float32, the default), "
            "'high' (TF32 tensor cores on NVIDIA GPUs: ~7x the fp32 matmul throughput, "
            "inputs rounded to 10 mantissa bits) or 'medium' (bf16). It applies to what runs in "
            "float32: all of a 32-true run; under bf16-mixed, what autocast leaves in float32.",
        )  # fmt: skip
        parser.add_argument(
            "--allow_other_data", type=bool, default=False,
            help="Use a checkpoint (--ckpt_path) on data other than it was trained on, on purpose: validate or "
            "test it against another distribution, sample it under other data settings, or fine-tune it on "
            "other data. Without it such a checkpoint is refused, naming what differs.",
        )  # fmt: skip

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):
            # The end-of-run summary and metrics.json take the place of Lightning's table of every
            # logged metric (over a hundred rows, per layer and head); --verbose=true prints it.
            parser.set_defaults(verbose=False)
        return parser

    def _parse_ckpt_path(self) -> None:
        # Lightning would replace the model settings given here by those stored in the checkpoint,
        # silently (a different sampler for predict, say, would be ignored), and has no public hook
        # to turn that off. In stdiff the model is what the configuration says; runs.preflight
        # checks that the checkpoint fits it.
        pass

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if config.get("float32_matmul_precision"):
            torch.set_float32_matmul_precision(config.float32_matmul_precision)
        trainer = config.get("trainer")
        if trainer is None:
            return
        if trainer.get("enable_checkpointing") is False:
            # Lightning refuses any checkpoint callback then; stdiff's is always there, so it is told
            # to write nothing instead.
            trainer.enable_checkpointing = True
            config.checkpoint.every_n_train_steps, config.checkpoint.save_last = 0, False
            if "best_checkpoint" in config:
                config.best_checkpoint.enabled = False
        # stdiff's lighter progress bar, unless there is none or the configuration brings its own.
        callbacks = trainer.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        own_bar = any(_is_progress_bar(cb) for cb in callbacks)
        if trainer.get("enable_progress_bar") is not False and not own_bar:
            trainer.callbacks = [*callbacks, Namespace(class_path="stdiff.callbacks.ProgressBar",
                                                       init_args=Namespace())]  # fmt: skip

    def instantiate_classes(self) -> None:
        # A ValueError from a constructor (or Lightning's refusal of a trainer setting, such as
        # more devices than exist) is a configuration error, reported before anything is written.
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException) as err:
            raise UsageError(self.subcommand, f"invalid configuration: {runs.innermost_message(err)}") from None

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one the configuration chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # written beside last.ckpt, renamed over it
        # Diagnostics must run their epoch-end work before the EMA swaps the training weights back
        # in, so that they score the same (EMA) weights as val/loss.
        # BestCheckpoint scores the same weights (its forecasts) in its epoch-end hook, just before
        # the diagnostics add up what the validation cost.
        first = [cb for kind in (BestCheckpoint, GPDiagnostics) for cb in trainer.callbacks if isinstance(cb, kind)]
        trainer.callbacks = first + [cb for cb in trainer.callbacks if not isinstance(cb, (GPDiagnostics, BestCheckpoint))]
        return trainer

    def _preflight(self) -> None:
        kwargs = self.config_init[self.subcommand]
        config = self.config[self.subcommand]
        data = checkpoints.data_settings(config.get("data"))
        self.model.data_settings = data  # stored in every checkpoint this run writes
        try:
            runs.preflight(self.subcommand, self.trainer, self.model, self.datamodule, kwargs, data,
                           bool(config.get("allow_other_data")))  # fmt: skip
        except (runs.RunError, ValueError) as err:
            raise UsageError(self.subcommand, str(err)) from None
        note = busy_machine_note(self.trainer.strategy.root_device.type)
        if note and self.trainer.is_global_zero:
            print(f"stdiff: note: {note}", file=sys.stderr, flush=True)
        if threading.current_thread() is threading.main_thread():
            # validate / test / predict have no step to finish and no checkpoint to write: SIGTERM and
            # Ctrl+C stop them at once (Lightning calls this handler after its own, which only takes
            # note). A fit is stopped at once too while it sets up (the data, a reference fit), until
            # its training loop takes over (``Checkpoint.on_fit_start``). The previous handlers come
            # back when the subcommand ends (``_restore_signals``).
            reliability.graceful = False
            self._previous_handlers = {s: signal.signal(s, reliability.stop_now) for s in (signal.SIGTERM, signal.SIGINT)}

    before_fit = before_validate = before_test = before_predict = _preflight

    def _restore_signals(self) -> None:
        for signum, handler in getattr(self, "_previous_handlers", {}).items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    after_fit = after_validate = after_test = after_predict = _restore_signals


def busy_machine_note(device_type: str) -> str | None:
    """What to say when a CPU run starts on a machine already busier than its cores: torch's worker
    threads then wait on one another at every operation, and a step can take many times longer
    than with one thread. None when the machine is not busy, torch uses one thread, or
    OMP_NUM_THREADS is set (the user chose)."""
    if device_type != "cpu" or not hasattr(os, "getloadavg") or os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load, threads = os.getloadavg()[0], torch.get_num_threads()
    if threads <= 1 or load < cores + 1:
        return None
    return (f"this machine is busy (load {load:.1f} on {cores} cores) and torch runs {threads} threads, which then "
            "wait on one another: a step can take several times longer than with one thread. If steps are slow, "
            "rerun with OMP_NUM_THREADS=1 in front of the command (or on a quieter machine).")  # fmt: skip


def _is_progress_bar(callback) -> bool:
    if isinstance(callback, LightningProgressBar):
        return True
    name = callback.get("class_path") if isinstance(callback, (dict, Namespace)) else None
    try:
        cls = resolve_class(name, L.Callback, "trainer.callbacks") if isinstance(name, str) else None
    except ConfigError:
        return False
    return cls is not None and issubclass(cls, LightningProgressBar)


def stdiff_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stdiff")
    except PackageNotFoundError:
        return "unknown"


def _destroy_process_group() -> None:
    # Lightning leaves the process group of a multi-process run alive; its threads torn down at
    # interpreter exit instead can abort the process after a finished run ("terminate called
    # without an active exception", seen with gloo on CPUs).
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _is_advertisement(record) -> bool:
    return not str(record.msg).startswith("💡 Tip:")  # False drops the record


def silence_advertisements() -> None:
    """Drop Lightning's product tips ("💡 Tip: … try installing litlogger / litmodels"), printed on
    every run; its other messages stay."""
    from lightning_utilities.core import rank_zero

    if _is_advertisement not in rank_zero.log.filters:
        rank_zero.log.addFilter(_is_advertisement)


def main(args: list[str] | None = None) -> None:
    """Console script ``stdiff``."""
    silence_advertisements()
    from stdiff._validation import format_warning

    warnings.formatwarning = format_warning  # stdiff's warnings as `stdiff: warning: …`, not under Lightning's cli.py
    # Deprecation notices raised inside Lightning's own use of jsonargparse and torch's pytree:
    # nothing a stdiff user can act on, and they bury the progress output.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Steps, not epochs, set the logging interval: a fixed training set with fewer batches per epoch
    # than log_every_n_steps is still logged every log_every_n_steps steps.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
    try:
        load_plugins()  # before parsing: plug-in classes must be importable by short name
    except PluginError as err:
        sys.exit(f"stdiff: error: {err}")
    reliability.stopped_by = None
    if threading.current_thread() is not threading.main_thread():
        return _run(args)  # signal handlers can only be set, hence only changed, in the main thread
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        _run(args)
    finally:  # a library caller (tests, notebooks) gets its own signal handlers back, whatever happened
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _run(args: list[str] | None) -> None:
    try:
        StdiffCLI(args=args)
        _destroy_process_group()
    except UsageError as err:
        prog = f"stdiff {err.subcommand}" if err.subcommand else "stdiff"
        sys.stderr.write(f"{prog}: error: {err}\ntip: `{prog} --help` lists every option\n")
        sys.exit(2)
    except SIGTERMException:  # stopped by a signal (fit: after writing a checkpoint, see Checkpoint)
        runs.discard_unused_run()
        print(f"stdiff: stopped by {reliability.stopped_by or 'SIGTERM'}", file=sys.stderr)
        sys.exit(STOP_SIGNALS.get(reliability.stopped_by, 143))
    except (ValueError, runs.RunError, NonFiniteError, MisconfigurationException, OSError) as err:
        # A problem with the input or the run: its message is the explanation.
        runs.discard_unused_run()
        sys.exit(f"stdiff: error: {runs.innermost_message(err)}")
    except Exception as err:  # noqa: BLE001 (a bug: the message first, the traceback for a report after it)
        runs.discard_unused_run()
        print(f"stdiff: error: {type(err).__name__}: {err}\n", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
