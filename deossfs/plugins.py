"""Finding plug-ins: Python entry points in the groups `deossfs.processing` (processing
stages, processing/stages.py) and `deossfs.scheduling` (placement policies,
scheduling/policies.py), beside the built-ins of each group. docs/extending.md is the
contract a plug-in keeps.

A plug-in is chosen by name in the config; the name is the entry point's name. A built-in
of the same name wins (a plug-in cannot take over `nearby` or `blacklist` by accident).
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Mapping
from typing import Any

from .errors import MissingPlugin, PluginError

log = logging.getLogger(__name__)

PROCESSING_GROUP = "deossfs.processing"
SCHEDULING_GROUP = "deossfs.scheduling"

_KINDS = {PROCESSING_GROUP: "processing stage", SCHEDULING_GROUP: "scheduling policy"}


def installed(group: str) -> dict[str, str]:
    """name -> "module:object" of every plug-in installed in `group`."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=group)}


def load(group: str, name: str, builtins: Mapping[str, Any]) -> Any:
    """The factory registered as `name` in `group` (a built-in, else an entry point).

    MissingPlugin if nothing has that name; PluginError if the plug-in fails to import."""
    if name in builtins:
        return builtins[name]
    kind = _KINDS.get(group, "plug-in")
    found = list(importlib.metadata.entry_points(group=group, name=name))
    if not found:
        known = sorted({*builtins, *installed(group)})
        raise MissingPlugin(
            f"no {kind} named {name!r} is installed (entry point group {group})",
            hint=f"install the package that provides it (pip install ...); installed: "
                 f"{', '.join(known) or 'none'}")
    entry = found[0]
    try:
        factory = entry.load()
    except Exception as exc:  # a plug-in's import error is its own: name it
        raise PluginError(f"{kind} {name!r} ({entry.value}) failed to load: {exc!r}",
                          hint="reinstall the plug-in, or remove it from the config") from exc
    if not callable(factory):
        raise PluginError(f"{kind} {name!r} ({entry.value}) is not a class or a function")
    return factory


def instantiate(group: str, name: str, factory: Any, options: Mapping[str, Any]) -> Any:
    """`factory(**options)`; an exception (a bad option) becomes a PluginError naming it."""
    kind = _KINDS.get(group, "plug-in")
    try:
        return factory(**dict(options))
    except Exception as exc:
        raise PluginError(f"{kind} {name!r} refused its options {dict(options)!r}: {exc}",
                          hint="check the options in the config (docs/extending.md)") from exc
