"""``stdiff``: the LightningCLI entry point (``fit / validate / test / predict``) driven by YAML."""

from __future__ import annotations

import difflib
import os
import re
import sys
import traceback
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks.progress import ProgressBar as LightningProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from stdiff import runs
from stdiff._validation import unknown_name_message
from stdiff.callbacks import (
    Checkpoint,
    GPDiagnostics,
    NonFiniteError,
    NonFiniteGuard,
    ProgressBar,
    SampleWriter,
    reliability,
)
from stdiff.callbacks.reliability import STOP_SIGNALS
from stdiff.data import GPDataModule  # noqa: F401 (imported: short names resolve among imported classes)
from stdiff.kernels import Kernel
from stdiff.module import DiffusionModule
from stdiff.nn import Attention, Backbone
from stdiff.plugins import PluginError, load_plugins
from stdiff.sampling import Sampler
from stdiff.schedules import NoiseSchedule

# Which plug-in base a config key draws from, by its last component; used to explain unknown
# names with every class currently importable by short name (plug-ins included).
BASES = {
    "kernel": Kernel,
    "schedule": NoiseSchedule,
    "backbone": Backbone,
    "attention": Attention,
    "sampler": Sampler,
    "data module": L.LightningDataModule,
}


def registry(kind: str) -> dict[str, type]:
    """Concrete subclasses of the base of ``kind``, by class name."""
    out, todo = {}, [BASES[kind]]
    while todo:
        for cls in todo.pop().__subclasses__():
            todo.append(cls)
            if not getattr(cls, "__abstractmethods__", None) and not cls.__name__.startswith("LazyInstance_"):
                out[cls.__name__] = cls
    return out


_KEY_KIND = {
    "temporal": "kernel",
    "spatial": "kernel",
    "kernel": "kernel",
    "kernels": "kernel",
    "reference_kernel": "kernel",
    "schedule": "schedule",
    "backbone": "backbone",
    "attention": "attention",
    "sampler": "sampler",
    "data": "data module",
}
# jsonargparse's words for a class name it cannot resolve: a short name, or a dotted path.
_UNKNOWN = re.compile(
    r"Expected a dot import path string: (?P<short>[\w.]+)"
    r"|Problem with given class_path '(?P<path>[\w.]+)':\s*\n\s*(?:module '[\w.]+' has no attribute|No module named)"
)
_KEY = re.compile(r'Parser key "(?P<key>[^"]+)"')


def explain_unknown_name(message: str) -> str | None:
    """For a parse error about an unknown class name, one line naming it, the closest valid name
    and all valid names of the registry the parameter draws from."""
    matches = list(_UNKNOWN.finditer(message))
    if not matches:
        return None
    match = matches[-1]  # the innermost: wrappers around a nested config report first
    name = (match["short"] or match["path"]).rstrip(".").rsplit(".", 1)[-1]
    keys = [k["key"] for k in _KEY.finditer(message, 0, match.start())]
    parts = [p for p in (keys[-1].split(".") if keys else []) if p != "init_args" and not p.isdigit()]
    kind = next((_KEY_KIND[p] for p in reversed(parts) if p in _KEY_KIND), None)
    if kind is None:  # fall back on the registry holding the closest name
        scored = [(difflib.SequenceMatcher(None, name, v).ratio(), k) for k in BASES for v in registry(k)]
        kind = max(scored)[1]
    return unknown_name_message(kind, name, registry(kind)) + " (or the full class_path of your own subclass)"


_PROBLEM = re.compile(
    r"^(?P<indent> *)(?:- )?(?P<what>Expected a (?!<class 'NoneType'>).*|Option '.*' is not accepted.*"
    r"|File does not exist.*|Key '.*' is not expected.*)$"
)
_KEY_LINE = re.compile(r'^(?P<indent> *)(?:- )?Parser key "(?P<key>[^"]+)":(?P<rest>.*)$')


def summarize(message: str) -> str | None:
    """For jsonargparse's nested type errors, one line naming the full key and the problem: the
    innermost problem in the message, with the chain of keys above it."""
    stack: list[tuple[int, str]] = []
    lines = message.splitlines()
    for i, line in enumerate(lines):
        if key := _KEY_LINE.match(line):
            indent = len(key["indent"])
            stack = [(d, k) for d, k in stack if d < indent] + [(indent, key["key"])]
            if key["rest"].strip() and _PROBLEM.match(key["rest"].strip()):
                return f"{'.init_args.'.join(k for _, k in stack)}: {key['rest'].strip()}"
            union = i + 1 < len(lines) and "Does not validate against any of the Union subtypes" in lines[i + 1]
            if union and not any("Problem with given class_path" in rest for rest in lines[i + 1 :]):
                subtypes = next((x.strip() for x in lines[i + 1 :] if x.strip().startswith("Subtypes:")), "")
                return f"{'.init_args.'.join(k for _, k in stack)}: not an accepted value. {subtypes}"
        elif problem := _PROBLEM.match(line):
            indent = len(problem["indent"])
            keys = [k for d, k in stack if d < indent]
            return f"{'.init_args.'.join(keys)}: {problem['what']}" if keys else problem["what"]
    return None


def innermost_message(err: BaseException) -> str:
    """The message of the original error under jsonargparse's wrappers ("Does not validate...")."""
    while (inner := err.__cause__ or err.__context__) is not None and isinstance(inner, ValueError):
        err = inner
    return str(err)


class StdiffArgumentParser(LightningArgumentParser):
    """Lightning's parser, with errors that list valid names for an unknown class name."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["dump_header"] = [f"stdiff=={stdiff_version()}"]  # heads every saved config.yaml
        kwargs.setdefault("prog", "stdiff")  # not "__main__.py" under python -m stdiff
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        hint = explain_unknown_name(message) or summarize(message) or self._closest_option(message)
        if hint and not message.startswith(hint):
            message = f"{hint}\n{message}"
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)  # raises: a caller handles it
        # The problem first; no usage block of every option above it.
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {message}\ntip: `{prog} --help` lists every option\n")
        self.exit(2)

    def _closest_option(self, message: str) -> str | None:
        """For a misspelt option, the option meant."""
        if not message.startswith("unrecognized arguments:"):
            return None
        given = message.split(":", 1)[1].split()[0].split("=")[0]
        options = [o for a in self._actions for o in a.option_strings]
        for sub in getattr(self, "_subcommands_action", None) and self._subcommands_action.choices.values() or []:
            options += [o for a in sub._actions for o in a.option_strings]
        close = difflib.get_close_matches(given, options, n=1, cutoff=0.6)
        return f"unknown option {given}" + (f". Did you mean {close[0]}?" if close else "")


class StdiffCLI(LightningCLI):
    """LightningCLI for stdiff: ``DiffusionModule`` as the model, any ``LightningDataModule`` by
    ``class_path`` as the data, the sample shape linked from data to model."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("model_class", DiffusionModule)
        kwargs.setdefault("datamodule_class", L.LightningDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("parser_class", StdiffArgumentParser)
        kwargs.setdefault("auto_configure_optimizers", False)  # one optimizer path: the module's
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The data decides the sample shape; the model is built for it (never written twice).
        parser.link_arguments("data.sample_shape", "model.sample_shape", apply_on="instantiate")
        # Always present, configurable under their own keys: `stdiff predict` writes its samples,
        # every validation and test is scored against the exact GP.
        parser.add_lightning_class_args(SampleWriter, "sample_writer")
        parser.add_lightning_class_args(GPDiagnostics, "diagnostics")
        # Periodic and on-signal checkpoints (checkpoints/last.ckpt), and the non-finite check.
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # Diagnostics must run their epoch-end work before EMAWeightAveraging swaps the training
        # weights back in, so that they score the same (EMA) weights as val/loss.
        first = [cb for cb in trainer.callbacks if isinstance(cb, GPDiagnostics)]
        trainer.callbacks = first + [cb for cb in trainer.callbacks if not isinstance(cb, GPDiagnostics)]
        return trainer

    def _parse_ckpt_path(self) -> None:
        # Lightning would replace the model settings given here by those stored in the checkpoint,
        # silently (a different sampler for predict, say, would be ignored). In stdiff the model is
        # what the configuration says; _preflight checks that the checkpoint fits it.
        pass

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        if config.get("enable_checkpointing") is False:  # Lightning refuses a checkpoint callback then
            callbacks = [cb for cb in callbacks if not isinstance(cb, Checkpoint)]
        # stdiff's lighter progress bar, unless there is none or the configuration brings its own.
        given = [*callbacks, *(config.get("callbacks") or [])]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(cb, LightningProgressBar) for cb in given
        ):
            callbacks = [*callbacks, ProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_classes(self) -> None:
        # A ValueError from a constructor (or Lightning's refusal of a trainer setting, such as
        # more devices than exist) is a configuration error: report it like a parse error (message,
        # exit code 2) before anything is written to disk.
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException) as err:
            self._parser(self.subcommand).error(f"invalid configuration: {innermost_message(err)}")

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        try:
            self._preflight(subcommand, kwargs)
        except (runs.RunError, ValueError) as err:
            self._parser(subcommand).error(str(err))
        return kwargs

    def _preflight(self, subcommand: str, kwargs: dict) -> None:
        """Checks that need the instantiated classes, done before anything is written: the
        checkpoint (found, loadable without running pickled code, fits the model), the output
        directory, the request itself. Then the run directory is claimed."""
        trainer, model = self.trainer, self.model
        if kwargs.get("weights_only") is None:
            kwargs["weights_only"] = True  # torch < 2.6 would otherwise unpickle arbitrary objects
        logger = trainer.logger
        version = None
        ckpt_path = kwargs.get("ckpt_path")
        if ckpt_path == "last":
            ckpt_path = kwargs["ckpt_path"] = self._find_last(trainer)
            if ckpt_path is None:
                rank_zero_info("--ckpt_path last: no checkpoint yet, starting a new run")
            elif logger is not None and Path(ckpt_path).parent.name == "checkpoints":
                version = Path(ckpt_path).parents[1].name  # continue in the run directory it came from
                rank_zero_info(f"--ckpt_path last: resuming from {ckpt_path}")
        if ckpt_path not in (None, "best", "hpc", "registry") and not str(ckpt_path).startswith("registry:"):
            checkpoint = runs.load_checkpoint(ckpt_path, kwargs["weights_only"])
            model.on_load_checkpoint(checkpoint)  # the sample shape, named first
            runs.check_compatible(checkpoint, ckpt_path, model)
            if version is not None:  # the run's config.yaml stays; this run's settings go beside it
                for cb in trainer.callbacks:
                    if isinstance(cb, SaveConfigCallback):
                        cb.config_filename = f"config.resumed_step{checkpoint.get('global_step', 0)}.yaml"
        if subcommand == "fit":
            if getattr(model, "use_oracle", False):
                raise runs.RunError(
                    "model.oracle=true uses the exact model, which has nothing to train: use it with validate, "
                    "test or predict"
                )
            model.configure_optimizers()  # a bad optimizer setting fails now, not after set-up
        if subcommand == "predict":
            if ckpt_path is None and not getattr(model, "use_oracle", False):
                raise runs.RunError(
                    "predict needs a trained model: pass --ckpt_path <file>.ckpt (or --ckpt_path last), or "
                    "--model.oracle=true for the exact model"
                )
            if getattr(self.datamodule, "num_predict", None) == 0:
                raise runs.RunError(
                    "predict needs a number of samples: set data.init_args.num_predict (e.g. "
                    "--data.init_args.num_predict=1000)"
                )
        out = getattr(logger, "root_dir", None) or trainer.default_root_dir
        runs.check_writable(out)
        if hasattr(logger, "_version") and getattr(logger, "_version", None) is None:
            # Claimed atomically on rank 0 (other ranks take rank 0's log directory from Lightning's
            # broadcast): concurrent runs never share a version directory.
            if version is not None:
                logger._version = version if not version.startswith("version_") else int(version[8:])
            elif rank_zero_only.rank == 0:
                logger._version = runs.claim_version(logger.root_dir)

    @staticmethod
    def _find_last(trainer: L.Trainer) -> str | None:
        places = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        logger = trainer.logger
        if logger is not None and getattr(logger, "root_dir", None):
            places.append(Path(logger.root_dir))
        places.append(Path(trainer.default_root_dir) / "checkpoints")
        found = runs.find_last_checkpoint(places)
        return None if found is None else str(found)


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


def main(args: list[str] | None = None) -> None:
    """Console script ``stdiff``."""
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
    try:
        StdiffCLI(args=args)
        _destroy_process_group()
    except SIGTERMException:  # stopped by a signal, after writing a checkpoint (see Checkpoint)
        sys.exit(STOP_SIGNALS.get(reliability.stopped_by, 143))
    except (ValueError, runs.RunError, NonFiniteError, MisconfigurationException, OSError) as err:
        # A problem with the input or the run: its message is the explanation.
        sys.exit(f"stdiff: error: {innermost_message(err)}")
    except Exception as err:  # noqa: BLE001 (a bug: the message first, the traceback for a report after it)
        print(f"stdiff: error: {type(err).__name__}: {err}\n", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
