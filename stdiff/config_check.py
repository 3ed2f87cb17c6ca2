"""A configuration checked against the classes it names, before jsonargparse parses it.

The YAML files and command-line overrides are merged as plain data, then walked from the
subcommand's roots (``model``, ``data``, ``trainer``, the callbacks) along the type hints of each
class's ``__init__``: every ``class_path`` (or short name) is resolved against the registry of the
base its parameter expects, every key must be a parameter of its class, and plain values must
have the declared type. The first problem is reported with the full key, the value, what is
allowed and the closest valid name, and with the file it came from. What this walk cannot judge it
leaves to jsonargparse, so it never refuses a configuration jsonargparse would accept.
"""

from __future__ import annotations

import collections.abc
import difflib
import importlib
import inspect
import math
import types
import typing
from typing import Any

from stdiff._validation import unknown_name_message
from stdiff.config_files import CARRIED, CHANGED, ConfigError, raw_config

# --- registries ------------------------------------------------------------------------------------


def registry(base: type) -> dict[str, type]:
    """Concrete, imported subclasses of ``base`` (itself included), by class name."""
    out, todo = {}, [base]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if not inspect.isabstract(cls) and not cls.__name__.startswith("LazyInstance_"):
            out.setdefault(cls.__name__, cls)
    return out


def kinds() -> dict[type, str]:
    """The plug-in bases and how messages name them."""
    import lightning as L
    import torch

    from stdiff.conditioning import Conditioning, Mask
    from stdiff.data import SequenceDataModule
    from stdiff.diffusion import NoiseModel
    from stdiff.kernels import Kernel
    from stdiff.nn import Attention, Backbone
    from stdiff.sampling import Sampler
    from stdiff.schedules import NoiseSchedule

    return {Kernel: "kernel", NoiseSchedule: "schedule", NoiseModel: "noise model", Backbone: "backbone",
            Attention: "attention", Sampler: "sampler", SequenceDataModule: "data module",
            L.LightningDataModule: "data module", L.Callback: "callback", torch.optim.Optimizer: "optimizer",
            torch.optim.lr_scheduler.LRScheduler: "lr scheduler", Mask: "mask", Conditioning: "conditioning method"}  # fmt: skip


def kind_of(base: type) -> str:
    """How messages name what ``base`` stands for: ``kernel``, ``noise model``, ``data module``…"""
    return next((name for cls, name in kinds().items() if issubclass(base, cls)), base.__name__)


def resolve_class(name: str, base: type, key: str, functions_ok: bool = False) -> type | None:
    """The class ``name`` (a short name or a dotted path) stands for, a subclass of ``base``."""
    kind = kind_of(base)
    if "." not in name:
        found = registry(base)
        if name not in found:
            raise ConfigError(f"{key}: {unknown_name_message(kind, name, found)} (or the full class_path of your "
                              "own subclass)")  # fmt: skip
        return found[name]
    module, _, attr = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as err:
        raise ConfigError(f"{key}: cannot import {name!r}: no module named {err.name!r}") from None
    except AttributeError:
        raise ConfigError(f"{key}: cannot import {name!r}: module {module!r} has no attribute {attr!r}") from None
    except Exception as err:  # noqa: BLE001 (the user's module failed to import: say how)
        raise ConfigError(f"{key}: importing {module!r} failed: {type(err).__name__}: {err}") from None
    if not inspect.isclass(obj):
        if functions_ok and callable(obj):
            return None
        raise ConfigError(f"{key}: {name!r} is not a class; expected a {kind} class")
    if not issubclass(obj, base):
        valid = ", ".join(sorted(registry(base)))
        raise ConfigError(f"{key}: {name} is not a subclass of {base.__name__}, so not a {kind}. Valid {kind} names: "
                          f"{valid} (or the full class_path of your own subclass of {base.__name__})")  # fmt: skip
    return obj


# --- types -----------------------------------------------------------------------------------------


def _class_base(annotation) -> type | None:
    """The class a parameter's value is an instance of (or, for a factory, what it returns)."""
    origin = typing.get_origin(annotation)
    if origin is collections.abc.Callable:
        args = typing.get_args(annotation)
        annotation = args[-1] if args else None
    plain = (str, int, float, bool, bytes, dict, list, tuple, type(None))
    if inspect.isclass(annotation) and annotation not in plain and typing.get_origin(annotation) is None:
        return annotation if annotation.__module__ not in ("builtins", "typing", "pathlib") else None
    return None


def _default_class(default) -> type | None:
    if default is inspect.Parameter.empty or default is None:
        return None
    if inspect.isclass(default):
        return default
    cls = type(default)
    return cls.__mro__[1] if cls.__name__.startswith("LazyInstance_") else cls


def _describe(annotation) -> str:
    if annotation in (int, float, bool, str):
        return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[annotation]
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    base = _class_base(annotation)
    if base is not None:
        return f"a {kind_of(base)}"
    return str(annotation).replace("typing.", "")


def check_value(value, annotation, key: str, default=inspect.Parameter.empty) -> None:
    """Raise ``ConfigError`` when ``value`` (plain YAML data) cannot be ``annotation``."""
    if annotation in (Any, inspect.Parameter.empty) or isinstance(annotation, (str, typing.TypeVar)):
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for member in args:
            try:
                check_value(value, member, key, default)
                return
            except ConfigError as err:
                errors.append((member, err))
        classy = [err for member, err in errors if _class_base(member) is not None]
        plain = [(member, err) for member, err in errors if _class_base(member) is None and member is not type(None)]
        if classy and not plain:  # a class (or nothing): the class's problem is the problem
            raise classy[0]
        if len(plain) == 1 and typing.get_origin(plain[0][0]) is not typing.Literal:
            raise plain[0][1]  # e.g. float | Tensor given "nan": a number was expected
        literals = [a for m in args if typing.get_origin(m) is typing.Literal for a in typing.get_args(m)]
        close = difflib.get_close_matches(str(value), [str(a) for a in literals], n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        allowed = "; ".join(_describe(m) for m in args)
        raise ConfigError(f"{key}: {value!r} is not accepted.{hint} Allowed: {allowed}")
    if origin is typing.Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in args)}.{hint}")
        return
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:  # "1e-3" is a string to YAML, a number to jsonargparse; "nan" and "inf" are not
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise ConfigError(f"{key}: expected a number, got {value!r}")
        return
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable) and not isinstance(value, str):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args and (origin is not tuple or len(args) == 2 and args[1] is Ellipsis) else Any
        for i, item in enumerate(value):
            check_value(item, inner, f"{key}[{i}]")
        return
    base = _class_base(annotation)
    if base is not None:
        check_class(value, base, key, _default_class(default),
                    functions_ok=typing.get_origin(annotation) is collections.abc.Callable)  # fmt: skip


def check_class(value, base: type, key: str, default: type | None = None, functions_ok: bool = False) -> None:
    """``value``: a short name, a dotted path, or ``{class_path, init_args}`` of a ``base`` subclass."""
    if isinstance(value, str):
        resolve_class(value, base, key, functions_ok)
        return
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a {kind_of(base)} (a class name or class_path), got {value!r}")
    name = value.get("class_path")
    if name is None:
        if default is None:
            return  # init_args of a class given elsewhere: jsonargparse decides
        cls = default
    else:
        if not isinstance(name, str):
            raise ConfigError(f"{key}.class_path: expected a class name, got {name!r}")
        cls = resolve_class(name, base, key, functions_ok)
        if cls is None:
            return
    init_args = {
        k: v for k, v in value.items() if k not in ("class_path", "init_args", "dict_kwargs", "__path__", CHANGED, CARRIED)
    }
    init_args.update(value.get("init_args") or {})
    check_init_args(cls, init_args, f"{key}.init_args", drop_unknown=bool(value.get(CHANGED)))
    if isinstance(value.get(CHANGED), str):
        _note_carried(cls, value[CHANGED], base, init_args, value.get(CARRIED) or [], key)


NOTES: list[str] = []  # what the last check_config found worth saying (values carried between classes)


def _note_carried(cls: type, previous: str, base: type, init_args: dict, carried: list[str], key: str) -> None:
    """Say which values ``cls`` took over from the class it replaced (``previous``) that differ from
    its own defaults: jsonargparse keeps them, and they change what the new class means."""
    try:
        before = resolve_class(previous, base, key) if "." in previous or previous in registry(base) else None
    except ConfigError:
        before = None
    if before is cls:
        return
    params, _, _ = _parameters(cls)
    from stdiff.data import SequenceDataModule

    # how a data module serves its data (batch size, set sizes, num_predict…) means the same in every one
    serving = set(inspect.signature(SequenceDataModule.__init__).parameters) if issubclass(cls, SequenceDataModule) else set()
    # a component given as a class (Denoiser's schedule, kept by ExactDenoiser) is what users mean to keep
    kept = [(k, init_args[k], params[k].default) for k in carried if k in params and k in init_args and k not in serving
            and init_args[k] != params[k].default and not isinstance(init_args[k], dict)]  # fmt: skip
    if not kept:
        return
    old = before.__name__ if before is not None else previous
    listed = ", ".join(f"{k}={v!r}" + ("" if d is inspect.Parameter.empty else f" (its default: {d!r})")
                       for k, v, d in kept)  # fmt: skip
    NOTES.append(f"{key}: {cls.__name__} keeps {listed} from the {old} it replaces (jsonargparse carries the "
                 f"arguments a new class accepts); set --{key}.init_args.{kept[0][0]}=… to choose")  # fmt: skip


def _type_hints(function) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 (unresolvable annotations: the values are left to jsonargparse)
        return {}


def _parameters(cls: type) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """``cls``'s ``__init__`` parameters with their type hints, following ``**kwargs`` into the base
    classes' ``__init__`` (as jsonargparse does); open-ended if the chain ends in ``**kwargs``."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    for owner in cls.__mro__:
        if "__init__" not in vars(owner) or owner is object:
            continue
        try:
            signature = inspect.signature(owner.__init__).parameters
        except (TypeError, ValueError):
            return params, hints, True
        hints = {**_type_hints(owner.__init__), **hints}
        for name, p in signature.items():
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                params.setdefault(name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in signature.values()):
            return params, hints, False
    return params, hints, True


def check_init_args(cls: type, init_args: dict, key: str, drop_unknown: bool = False) -> None:
    """Every key of ``init_args`` a parameter of ``cls``, every value of its declared type."""
    if not isinstance(init_args, dict):
        raise ConfigError(f"{key}: expected a mapping of {cls.__name__}'s parameters, got {init_args!r}")
    params, hints, open_ended = _parameters(cls)
    for name, value in init_args.items():
        if name not in params:
            if open_ended or drop_unknown:
                continue
            close = difflib.get_close_matches(name, list(params), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listed = f" Its parameters: {', '.join(params) or 'none'}" if len(params) <= 16 else ""
            raise ConfigError(f"{key}.{name}: {cls.__name__} has no parameter {name!r}.{hint}{listed}")
        check_value(value, hints.get(name, Any), f"{key}.{name}", params[name].default)


def check_config(args: list[str], roots: dict[str, tuple[type, bool]]) -> list[str]:
    """Check the configuration ``args`` describe. ``roots``: top-level key -> (class, subclass
    mode); in subclass mode the value names a subclass, otherwise it holds the class's arguments.
    Returns notes: values a class took over from the class it replaced, where they differ from its
    defaults (``--data.init_args.temporal=GeneralizedCauchy`` over a PoweredExponential of
    lengthscale 4 keeps lengthscale 4)."""
    NOTES.clear()
    helping = ("-h", "--help", "--print_config")
    if any(a.split("=")[0] in helping or a.split("=")[0].endswith(".help") for a in args):
        return []  # help and printing read the configuration, they do not run it
    _, tree, origin = raw_config(args)
    check_top_level(tree, roots, origin)
    for key, (cls, subclass_mode) in roots.items():
        if key not in tree or tree[key] is None:
            continue
        try:
            if subclass_mode:
                check_class(tree[key], cls, key)
            else:
                check_init_args(cls, tree[key], key)
        except ConfigError as err:
            source = origin.get(key)
            raise ConfigError(f"{err} (from {source})" if source and source != "command line" else str(err)) from None
    return list(NOTES)


# Top-level keys of a subcommand's configuration besides the roots (LightningCLI's own).
TOP_LEVEL = ("seed_everything", "ckpt_path", "weights_only", "verbose", "return_predictions", "config",
             "float32_matmul_precision", "allow_other_data")
MAX_SEED = 2**32 - 1  # what Lightning's seed_everything (NumPy's legacy seeding) accepts


def check_top_level(tree: dict, roots: dict, origin: dict[str, str]) -> None:
    """A misspelt top-level key named with the closest valid one; ``seed_everything`` in range."""
    valid = [*roots, *TOP_LEVEL]
    for key in tree:
        if key in valid or key == "__path__":
            continue
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        if close:  # otherwise jsonargparse's own message stands
            source = origin.get(key)
            where = f" (from {source})" if source and source != "command line" else ""
            raise ConfigError(f"{key}: unknown top-level key. Did you mean {close[0]!r}?{where} Valid top-level keys: "
                              f"{', '.join(valid)}")  # fmt: skip
    seed = tree.get("seed_everything")
    if seed is not None and not isinstance(seed, bool) and not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
        raise ConfigError(f"seed_everything: {seed!r} is not a seed: an integer from 0 to {MAX_SEED} (the range "
                          "Lightning's seed_everything accepts), or true for a random one")  # fmt: skip
