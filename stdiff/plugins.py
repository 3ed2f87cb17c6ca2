"""Plug-ins from other packages: modules named by entry points in the group ``stdiff.plugins``.

A package declares, in its ``pyproject.toml``,

    [project.entry-points."stdiff.plugins"]
    my_package = "my_package.stdiff_plugins"

and that module's subclasses of ``Kernel``, ``NoiseSchedule``, ``Attention``, ``Backbone``,
``Sampler`` or ``LightningDataModule`` become selectable by short name from YAML once the CLI
has imported it (``load_plugins``). Only installed entry points are imported: no path scanning.
"""

from __future__ import annotations

from importlib.metadata import entry_points

GROUP = "stdiff.plugins"


class PluginError(ImportError):
    """An entry point of ``stdiff.plugins`` failed to import."""


def load_plugins() -> list[str]:
    """Import every ``stdiff.plugins`` entry point; returns their names. A failure names the
    entry point, its target and the distribution that declares it."""
    loaded = []
    for ep in entry_points(group=GROUP):
        try:
            ep.load()
        except Exception as err:
            dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
            raise PluginError(
                f"stdiff plug-in entry point '{ep.name} = {ep.value}' from package '{dist}' failed to import: "
                f"{type(err).__name__}: {err}"
            ) from err
        loaded.append(ep.name)
    return loaded
