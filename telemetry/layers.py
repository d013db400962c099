"""Resolving configured layer names against a real model, once, when the schema is built.

The first implementation's standard profile named layers that matched no parameter and so tracked
nothing, silently. Here an unknown name is an error listing the nearest real names, and `"all"` means
every module that owns parameters directly (seed modules excluded: they report into the seed group).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable

from torch import nn

from telemetry.errors import SchemaError

SeedSlots = Callable[[], dict[str, "nn.Module | None"]]


def feature_key(name: str) -> str:
    """A SQL-safe identifier fragment for a module or slot name (`blocks.0.conv` -> `blocks_0_conv`)."""
    if not name:
        return "root"  # the model itself, when it owns parameters directly (a bare nn.Linear)
    key = re.sub(r"[^0-9a-zA-Z_]", "_", name).lower()
    return key if not key[0].isdigit() else f"m_{key}"


def seed_slot_names(model: nn.Module) -> list[str]:
    """Slot names of a model that exposes `seed_slots()` (the morphogenetic host); else none."""
    slots = getattr(model, "seed_slots", None)
    return list(slots()) if callable(slots) else []


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _inside(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def resolve_layers(model: nn.Module, layers: list[str] | str) -> list[tuple[str, nn.Module]]:
    """Map the config's `layers` to (module name, module) pairs in the model's registration order."""
    modules = dict(model.named_modules())
    slot_prefixes = _slot_prefixes(model)
    if layers == "all":
        found = [(n, m) for n, m in modules.items() if not _inside(n, slot_prefixes) and _owns_parameters(m)]
        if not found:
            raise SchemaError("gradients.layers = 'all' matched no module that owns parameters")
        return found
    candidates = [n for n, m in modules.items() if n and _owns_parameters(m)]
    resolved = []
    for name in layers:
        module = modules.get(name)
        if module is None or not any(True for _ in module.parameters()):
            near = difflib.get_close_matches(name, candidates, n=3, cutoff=0.3) or candidates[:5]
            raise SchemaError(
                f"gradients.layers: {name!r} is not a module with parameters in "
                f"{type(model).__name__}; nearest: {', '.join(near)}"
            )
        resolved.append((name, module))
    return resolved


def _slot_prefixes(model: nn.Module) -> list[str]:
    """Module names under which seeds live, so `"all"` never counts a seed as a host layer."""
    names = seed_slot_names(model)
    modules = dict(model.named_modules())
    return [n for n in names if n in modules]


def check_unique_keys(names: list[str], what: str) -> None:
    keys = [feature_key(n) for n in names]
    seen: dict[str, str] = {}
    for name, key in zip(names, keys, strict=True):
        if key in seen:
            raise SchemaError(f"{what} {seen[key]!r} and {name!r} both map to feature key {key!r}")
        seen[key] = name
