"""Configuration files as plain data: the YAML files and command-line overrides of a ``stdiff``
command merged the way jsonargparse merges them (for ``stdiff.config_check``), every file error
naming the file, and the configs shipped inside the package (``stdiff/configs``), found for a
``--config configs/…`` path that does not exist where the command runs (a non-editable install).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import yaml

SUBCOMMANDS = ("fit", "validate", "test", "predict")


# Marks a class spec whose class_path replaced another: like jsonargparse, the new class keeps the
# init_args it accepts and drops the others. Its value: the class replaced on the command line (True
# for a file stacked on another, which means to keep them); CARRIED: the init_args kept from it and
# not set again since (``stdiff.config_check`` reports those that differ from the new defaults).
CHANGED = "__class_changed__"
CARRIED = "__carried__"


class ConfigError(ValueError):
    """A configuration names something that does not exist or has the wrong type."""


def packaged_configs(args: list[str]) -> list[str]:
    """``args`` with each ``--config configs/<name>.yaml`` that does not exist here replaced by the
    same file shipped with the package, where there is one."""
    out = list(args)
    for i, token in enumerate(out):
        if token == "--config" and i + 1 < len(out):
            out[i + 1] = _packaged(out[i + 1])
        elif token.startswith("--config="):
            out[i] = "--config=" + _packaged(token.split("=", 1)[1])
    return out


# Data-file options a config file may give as paths relative to itself.
FILE_OPTIONS = ("paths", "coordinates", "observed")


def config_relative_paths(args: list[str]) -> list[str]:
    """``args`` where a config file gives a data file (``data.init_args.paths``, ``coordinates``,
    ``observed``) as a relative path that does not exist where the command runs but does beside the
    config file: that file is meant, whatever the working directory, so an override with its full
    path follows the ``--config`` (options after it still win). A path that exists here is kept."""
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        out.append(token)
        value = None
        if token == "--config" and i + 1 < len(args):
            value = args[i + 1]
            out.append(value)
            i += 1
        elif token.startswith("--config="):
            value = token.split("=", 1)[1]
        i += 1
        if value is not None:
            out += _beside(value)
    return out


def _beside(config: str) -> list[str]:
    path = Path(config)
    if not path.is_file() or path.suffix not in (".yaml", ".yml"):
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []  # config_check reports it, naming the file
    init_args = data.get("data", {}).get("init_args") if isinstance(data, dict) and isinstance(data.get("data"), dict) else None
    if not isinstance(init_args, dict):
        return []
    overrides = []
    for key in FILE_OPTIONS:
        given = init_args.get(key)
        items = given if isinstance(given, list) else [given]
        if not all(isinstance(p, str) for p in items):
            continue  # coordinates given as rows of numbers, or nothing
        found = [str(path.parent.absolute() / p) if _only_beside(p, path.parent) else p for p in items]
        if found != items:
            value = json.dumps(found) if isinstance(given, list) else found[0]
            overrides.append(f"--data.init_args.{key}={value}")
    return overrides


def _only_beside(name: str, directory: Path) -> bool:
    return not Path(name).is_absolute() and not Path(name).exists() and (directory / name).exists()


def _packaged(path: str) -> str:
    if Path(path).exists() or "configs/" not in path.replace("\\", "/"):
        return path
    relative = path.replace("\\", "/").split("configs/", 1)[1]
    shipped = resources.files("stdiff") / "configs" / relative
    return str(shipped) if shipped.is_file() else path


def _set(tree: dict, path: list[str], value) -> None:
    """Set ``tree[path]`` the way an override ``--a.b.c=value`` does: ``--a.b+=value`` appends to a
    list, and a key below a list (``--trainer.callbacks.path=…``) sets its last item's argument."""
    node = tree
    for i, part in enumerate(path[:-1]):
        if CARRIED in node:  # an init_arg set again after a class change: chosen, not carried
            name = path[i + 1] if part == "init_args" and i + 1 < len(path) else part
            node[CARRIED] = [k for k in node[CARRIED] if k != name.rstrip("+")]
        child = node.get(part)
        if isinstance(child, list) and child:
            if isinstance(child[-1], str):
                child[-1] = {"class_path": child[-1]}
            child = child[-1]
        if isinstance(child, str):  # a short class name, now given init_args
            child = node[part] = {"class_path": child}
        elif not isinstance(child, dict):
            child = node[part] = {}
        node = child
    last = path[-1]
    if last.endswith("+"):
        last = last[:-1]
        items = node.get(last) if isinstance(node.get(last), list) else []
        node[last] = items + (value if isinstance(value, list) else [value])
    elif isinstance(value, str) and isinstance(node.get(last), dict) and "class_path" in node[last]:
        node[last] = _changed(node[last], value, {})  # keeps the init_args it accepts
    elif isinstance(value, dict) and isinstance(node.get(last), dict) and value.get("class_path") not in (
        None, node[last].get("class_path")):  # fmt: skip
        node[last] = _changed(node[last], value["class_path"], value)  # so does a whole spec
    else:
        if CARRIED in node:
            node[CARRIED] = [k for k in node[CARRIED] if k != last]
        node[last] = value


def _changed(old: dict, class_path: str, new: dict) -> dict:
    """A class spec ``old`` given another ``class_path`` (and, from a file, ``new``'s other keys):
    the init_args of ``old`` carried over, marked with the class they came from."""
    given = {**(new.get("init_args") or {}), **{k: v for k, v in new.items() if k not in ("class_path", "init_args")}}
    kept = {**(old.get("init_args") or {}), **{k: v for k, v in old.items() if k not in _MARKS}}
    carried = [k for k in kept if k not in given]
    previous = old.get("class_path")
    return {**{k: v for k, v in new.items() if k != "init_args"}, "class_path": class_path, "init_args": {**kept, **given},
            CHANGED: previous if isinstance(previous, str) else True, CARRIED: carried}  # fmt: skip


_MARKS = ("class_path", "init_args", "dict_kwargs", "__path__", CHANGED, CARRIED)


def _merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            if "class_path" in v and v["class_path"] != into[k].get("class_path"):
                # keeps the init_args it accepts; a file stacked on another means it (CHANGED, no note)
                into[k] = {**_changed(into[k], v["class_path"], v), CHANGED: True, CARRIED: []}
            else:
                _merge(into[k], v)
        else:
            into[k] = v


def load_yaml(path: str) -> dict:
    """A config file as a mapping; ``ConfigError`` naming the file for anything else."""
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not a text file (binary content)") from None
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot be read: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        tabs = " (tabs are not allowed for indentation in YAML)" if "\t" in text and "tab" in str(err) else ""
        raise ConfigError(f"config file {path}: invalid YAML{at}: {problem}{tabs}") from None
    duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
    if duplicate:
        key, first, second = duplicate
        raise ConfigError(f"config file {path}: key {key!r} is given twice (lines {first} and {second}); YAML would "
                          "keep only the second silently. Remove one, or merge them")  # fmt: skip
    if data is None:
        raise ConfigError(f"config file {path} is empty: it must hold a mapping such as `model:` / `data:` keys")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys (model:, data:, trainer:, ...), "
                          f"got a {type(data).__name__}")  # fmt: skip
    return data


def _duplicate_key(node, prefix: str = "", visited: set | None = None) -> tuple[str, int, int] | None:
    """The first key given twice in one mapping of a composed YAML document, as (dotted key, line
    of the first, line of the second), or None."""
    visited = set() if visited is None else visited
    if id(node) in visited:  # an alias of a node already walked (anchors may even nest themselves)
        return None
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key, value in node.value:
            name = f"{prefix}.{key.value}" if prefix else str(key.value)
            if isinstance(key, yaml.ScalarNode) and key.value in seen and key.value != "<<":
                return name, seen[key.value] + 1, key.start_mark.line + 1
            seen.setdefault(key.value if isinstance(key, yaml.ScalarNode) else id(key), key.start_mark.line)
            found = _duplicate_key(value, name, visited)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate_key(item, f"{prefix}[{i}]", visited)
            if found:
                return found
    return None


def _refuse_duplicates(text: str, option: str) -> None:
    """A mapping given inline on the command line (``--data.init_args='{a: 1, a: 2}'``) with a key twice."""
    try:
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return  # not YAML: jsonargparse reports it
    if duplicate:
        raise ConfigError(f"{option}: key {duplicate[0]!r} is given twice in its value; YAML would keep only the "
                          "second silently")  # fmt: skip


def check_encoding(args: list[str]) -> None:
    """Refuse an argument that is not valid UTF-8 (a file name in another encoding: Python holds its
    bytes as surrogates, which YAML, JSON and the saved config.yaml cannot write), naming its option."""
    for i, token in enumerate(args):
        bad = next((j for j, c in enumerate(token) if "\udc80" <= c <= "\udcff"), None)
        if bad is None:
            continue
        if token.startswith("--") and bad > len(token.partition("=")[0]):
            option, value = token.partition("=")[0], token.partition("=")[2]
            bad -= len(token) - len(value)
        elif token.startswith("--"):
            option, value = "an option name", token
        else:
            option, value = (args[i - 1] if i and args[i - 1].startswith("--") else "an argument"), token
        shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ConfigError(f"{option}: '{shown}' is not valid UTF-8 (byte 0x{ord(value[bad]) - 0xDC00:02x} at position "
                          f"{bad}): stdiff takes paths and values in UTF-8; rename the file or directory")  # fmt: skip


def raw_config(args: list[str]) -> tuple[str | None, dict, dict[str, str]]:
    """The subcommand, the merged configuration as plain data, and for each top-level key the file
    that last set it (or ``command line``)."""
    sub = next((i for i, a in enumerate(args) if a in SUBCOMMANDS), None)
    tokens = args[sub + 1 :] if sub is not None else list(args)
    tree: dict = {}
    origin: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--"):
            continue
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            if i < len(tokens) and not tokens[i].startswith("--"):
                value, i = tokens[i], i + 1
            else:
                continue  # a flag
        if key == "config":
            if not value.strip():
                raise ConfigError("--config was given an empty path: give a YAML file, e.g. --config "
                                  "configs/quickstart.yaml")  # fmt: skip
            if Path(value).exists() and not Path(value).is_file() and not Path(value).is_dir():
                raise ConfigError(f"config file {value} is not a regular file (a device, FIFO or socket): give a YAML "
                                  "file")  # fmt: skip
            if not Path(value).is_file():
                if value.endswith((".yaml", ".yml", ".json")) or "/" in value:  # a path, not inline YAML
                    what = "is a directory, not a file" if Path(value).is_dir() else "does not exist"
                    raise ConfigError(f"config file {value} {what}")
                _refuse_duplicates(value, "--config")
                continue  # inline YAML: jsonargparse reads it
            data = load_yaml(value)
            _merge(tree, data)
            origin.update({k: f"config file {value}" for k in data})
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, dict):
            _refuse_duplicates(value, f"--{key}")
        _set(tree, key.split("."), parsed)
        origin[key.split(".")[0]] = "command line"
    return (args[sub] if sub is not None else None), tree, origin
