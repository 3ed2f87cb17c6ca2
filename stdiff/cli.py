"""``stdiff``: the LightningCLI entry point (``fit / validate / test / predict``) driven by YAML."""

from __future__ import annotations

import difflib
import re
import sys
import warnings

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import stdiff.data
from stdiff._validation import unknown_name_message
from stdiff.callbacks import GPDiagnostics, SampleWriter
from stdiff.kernels import KERNELS
from stdiff.module import DiffusionModule
from stdiff.nn import ATTENTIONS, BACKBONES
from stdiff.sampling import SAMPLERS
from stdiff.schedules import SCHEDULES

DATAMODULES = {"GPDataModule": stdiff.data.GPDataModule}

# Which registry a config key draws from, by its last component; used to explain unknown names.
REGISTRIES = {
    "kernel": KERNELS,
    "schedule": SCHEDULES,
    "backbone": BACKBONES,
    "attention": ATTENTIONS,
    "sampler": SAMPLERS,
    "data module": DATAMODULES,
}
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
    name = (match["short"] or match["path"]).rsplit(".", 1)[-1]
    keys = [k["key"] for k in _KEY.finditer(message, 0, match.start())]
    parts = [p for p in (keys[-1].split(".") if keys else []) if p != "init_args" and not p.isdigit()]
    kind = next((_KEY_KIND[p] for p in reversed(parts) if p in _KEY_KIND), None)
    if kind is None:  # fall back on the registry holding the closest name
        scored = [(difflib.SequenceMatcher(None, name, v).ratio(), k) for k, r in REGISTRIES.items() for v in r]
        kind = max(scored)[1]
    return unknown_name_message(kind, name, REGISTRIES[kind]) + " (or the full class_path of your own subclass)"


def innermost_message(err: BaseException) -> str:
    """The message of the original error under jsonargparse's wrappers ("Does not validate...")."""
    while (inner := err.__cause__ or err.__context__) is not None and isinstance(inner, ValueError):
        err = inner
    return str(err)


class StdiffArgumentParser(LightningArgumentParser):
    """Lightning's parser, with errors that list valid names for an unknown class name."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["dump_header"] = [f"stdiff=={stdiff_version()}"]  # heads every saved config.yaml
        super().__init__(*args, **kwargs)

    def error(self, message: str, *args, **kwargs):
        hint = explain_unknown_name(message)
        if hint:
            message = f"{hint}\n{message}"
        return super().error(message, *args, **kwargs)


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

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # Diagnostics must run their epoch-end work before EMAWeightAveraging swaps the training
        # weights back in, so that they score the same (EMA) weights as val/loss.
        first = [cb for cb in trainer.callbacks if isinstance(cb, GPDiagnostics)]
        trainer.callbacks = first + [cb for cb in trainer.callbacks if not isinstance(cb, GPDiagnostics)]
        return trainer

    def instantiate_classes(self) -> None:
        # A ValueError from a constructor is a configuration error: report it like a parse
        # error (usage line, message, exit code 2) before anything is written to disk.
        try:
            super().instantiate_classes()
        except ValueError as err:
            self.parser.error(f"invalid configuration: {innermost_message(err)}")


def stdiff_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stdiff")
    except PackageNotFoundError:
        return "unknown"


def main(args: list[str] | None = None) -> None:
    """Console script ``stdiff``."""
    # Deprecation notices raised inside Lightning's own use of jsonargparse and torch's pytree:
    # nothing a stdiff user can act on, and they bury the progress output.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    StdiffCLI(args=args)


if __name__ == "__main__":
    sys.exit(main())
