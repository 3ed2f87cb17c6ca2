"""``stdiff``: the LightningCLI entry point (``fit / validate / test / predict``) driven by YAML."""

from __future__ import annotations

import difflib
import re
import sys
import warnings

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from stdiff._validation import unknown_name_message
from stdiff.callbacks import GPDiagnostics, SampleWriter
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
    name = (match["short"] or match["path"]).rsplit(".", 1)[-1]
    keys = [k["key"] for k in _KEY.finditer(message, 0, match.start())]
    parts = [p for p in (keys[-1].split(".") if keys else []) if p != "init_args" and not p.isdigit()]
    kind = next((_KEY_KIND[p] for p in reversed(parts) if p in _KEY_KIND), None)
    if kind is None:  # fall back on the registry holding the closest name
        scored = [(difflib.SequenceMatcher(None, name, v).ratio(), k) for k in BASES for v in registry(k)]
        kind = max(scored)[1]
    return unknown_name_message(kind, name, registry(kind)) + " (or the full class_path of your own subclass)"


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
    try:
        load_plugins()  # before parsing: plug-in classes must be importable by short name
    except PluginError as err:
        sys.exit(f"stdiff: error: {err}")
    StdiffCLI(args=args)


if __name__ == "__main__":
    sys.exit(main())
