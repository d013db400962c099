"""Bounded parsing of what users hand the project: YAML configs and overrides, JSON documents.

A document nested a few thousand levels deep makes Python's parsers, and any code that walks the
result, raise RecursionError; a YAML alias chain ("billion laughs") expands a few lines into more
values than memory holds; a huge file is read whole before anything can refuse it. Each of those
ended in a traceback. Here every document is bounded in bytes, nesting depth and (for YAML, whose
aliases can repeat a value) expanded size before it is built, and a violation is one line naming
the file and the limit. Nothing in this module is specific to one file kind: callers pass the
error class their entry point raises (ConfigError, PackError, ...).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from telemetry.errors import EsperError

MAX_DEPTH = 64  # nesting levels: configs use 3, manifests 6, comparison results 6
MAX_YAML_BYTES = 1 << 20  # a config or override file: a few hundred bytes in practice
MAX_YAML_NODES = 100_000  # values after aliases are expanded
MAX_JSON_BYTES = 256 << 20  # a manifest of a very large pack, a comparison's results.json


def _limit(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"


def check_size(size: int, limit: int, source: str, error: type[EsperError]) -> None:
    if size > limit:
        raise error(f"{source}: {size} bytes, more than the {_limit(limit)} this file may hold")


def read_text(path: str | os.PathLike[str], limit: int, error: type[EsperError]) -> str:
    """A file's UTF-8 text, refused unread when it is larger than `limit` bytes."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        check_size(size, limit, str(path), error)
        data = f.read(limit + 1)
    check_size(len(data), limit, str(path), error)  # a file that grew, or one stat cannot size (a pipe)
    return data.decode("utf-8")


# ---- JSON ------------------------------------------------------------------------------------------

def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), walked without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children if isinstance(child, dict | list))
    return deepest


def loads_json(text: str, source: str, error: type[EsperError], max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads`, with deep nesting refused in one line (Python's decoder recurses per level)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{source}: JSON nested deeper than Python can parse; expected at most "
                    f"{max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise error(f"{source}: {str(exc).split(':')[0]}; expected a JSON document written by esper") from None
    depth = json_depth(value)
    if depth > max_depth:
        raise error(f"{source}: JSON nested {depth} levels deep; expected at most {max_depth}")
    return value


def read_json(path: str | os.PathLike[str], error: type[EsperError], limit: int = MAX_JSON_BYTES,
              max_depth: int = MAX_DEPTH) -> Any:
    """A JSON file, bounded in size and depth; every failure is one `error` line naming the file."""
    try:
        text = read_text(path, limit, error)
    except UnicodeDecodeError:
        raise error(f"{path}: cannot read (UnicodeDecodeError); expected UTF-8 JSON") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    return loads_json(text, str(Path(path)), error, max_depth)


# ---- YAML ------------------------------------------------------------------------------------------

def check_yaml_events(events: Any, source: str, error: type[EsperError], max_depth: int = MAX_DEPTH,
                      max_nodes: int = MAX_YAML_NODES) -> None:
    """Refuse a YAML stream whose values, aliases expanded, nest or number beyond the limits.

    Runs on the parser's events, before any value is built. Each anchored value's expanded size and
    height are remembered, so `*alias` counts as the whole value it repeats; an alias of a value
    that is still open (a value containing itself) is refused, as nothing can be built from it.
    """
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (expanded nodes, height)
    open_anchors: set[str] = set()
    stack: list[list[Any]] = []  # [anchor, nodes, height of the tallest child]
    total = 0

    def finish(anchor: str | None, nodes: int, height: int) -> None:
        nonlocal total
        if anchor is not None:
            sizes[anchor] = (nodes, height)
            open_anchors.discard(anchor)
        if stack:
            stack[-1][1] += nodes
            stack[-1][2] = max(stack[-1][2], height)
        else:
            total += nodes
        if height > max_depth:
            raise error(f"{source}: YAML nested {height} levels deep; expected at most {max_depth}")
        if total + sum(frame[1] for frame in stack) > max_nodes:
            raise error(f"{source}: YAML expands to more than {max_nodes} values (through aliases?); "
                        "expected a small config")

    for event in events:
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= max_depth:
                raise error(f"{source}: YAML nested more than {max_depth} levels deep; expected at most "
                            f"{max_depth}")
            stack.append([event.anchor, 1, 0])
            if event.anchor is not None:
                open_anchors.add(event.anchor)
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, nodes, tallest = stack.pop()
            finish(anchor, nodes, tallest + 1)
        elif isinstance(event, yaml.ScalarEvent):
            finish(event.anchor, 1, 0)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors:
                mark = event.start_mark
                where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
                raise error(f"{where}: recursive YAML alias *{event.anchor} (a value that contains itself)")
            nodes, height = sizes.get(event.anchor, (1, 0))
            finish(None, nodes, height)
