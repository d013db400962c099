"""Bounded parsing: deep, self-repeating or huge YAML and JSON are one error line, never a RecursionError,
an exhausted memory or a file read whole before it is refused; ordinary documents pass unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from telemetry.bounded import (
    MAX_DEPTH,
    check_yaml_events,
    json_depth,
    loads_json,
    read_json,
    read_text,
)
from telemetry.config import parse_yaml
from telemetry.errors import ConfigError, EsperError, PackError


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def events(text: str) -> None:
    check_yaml_events(yaml.parse(text, Loader=yaml.SafeLoader), "t.yaml", ConfigError)


def test_json_depth_is_walked_without_recursion() -> None:
    value: list = []
    for _ in range(50_000):  # far beyond Python's recursion limit
        value = [value]
    assert json_depth(value) == 50_001
    assert json_depth(3) == 0 and json_depth({"a": [1, {"b": []}]}) == 4


def test_json_at_the_limit_passes_and_one_level_more_is_refused() -> None:
    assert loads_json(nested(MAX_DEPTH), "x.json", PackError) is not None
    with pytest.raises(PackError, match=f"x.json: JSON nested {MAX_DEPTH + 1} levels deep; expected at most"):
        loads_json(nested(MAX_DEPTH + 1), "x.json", PackError)


class PolicyLike(EsperError):
    """Any error class of an entry point: the caller chooses what its users see."""


def test_json_deeper_than_the_decoder_recurses_is_one_error() -> None:
    with pytest.raises(PolicyLike, match="p.json: JSON nested deeper than Python can parse"):
        loads_json(nested(200_000), "p.json", PolicyLike)


def test_a_file_larger_than_its_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 5000 + "0]")
    with pytest.raises(PackError, match=r"big.json: 10003 bytes, more than the 1000 bytes this file may hold"):
        read_json(path, PackError, limit=1000)
    assert read_text(path, 20_000, PackError).startswith("[0,")
    assert read_json(path, PackError) == [0] * 5001


def test_unreadable_and_invalid_json_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(PackError, match=r"bad.json: cannot read \(UnicodeDecodeError\)"):
        read_json(tmp_path / "bad.json", PackError)
    (tmp_path / "cut.json").write_text('{"a": ')
    with pytest.raises(PackError, match=r"cut.json: not valid JSON \(line 1, column 7"):
        read_json(tmp_path / "cut.json", PackError)
    (tmp_path / "dir").mkdir()
    with pytest.raises(PackError, match=r"dir: cannot read \(Is a directory\)"):
        read_json(tmp_path / "dir", PackError)


def test_yaml_aliases_count_as_the_values_they_repeat() -> None:
    """Six lines whose last list expands to 10**6 values: refused before anything is built."""
    lines = [f"{k}: &{k} [" + ",".join([f"*{p}" if p else "x"] * 10) + "]"
             for k, p in zip("abcdef", ["", *"abcde"], strict=True)]
    with pytest.raises(ConfigError, match="t.yaml: YAML expands to more than 100000 values"):
        events("\n".join(lines))
    events("\n".join(lines[:4]))  # 10**4 values: fine


def test_yaml_depth_counts_through_aliases() -> None:
    """An alias of a 40-deep value, used 30 levels down, is 70 deep once built."""
    anchor = "a: &a " + nested(40) + "\n"
    events(anchor + "b: " + "[" * 20 + "*a" + "]" * 20)
    with pytest.raises(ConfigError, match=r"t.yaml: YAML nested 6[5-9] levels deep; expected at most 64"):
        events(anchor + "b: " + "[" * 30 + "*a" + "]" * 30)


def test_a_yaml_value_that_contains_itself_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"t.yaml:1:11: recursive YAML alias \*x"):
        events("a: &x [1, *x]")


def test_ordinary_configs_parse_as_before() -> None:
    text = "gradients:\n  percentiles: [1, 50, 99]\n  vanishing_threshold: 1e-7\nbase: &b {enabled: true}\n" \
           "per_class:\n  <<: *b\n  track_loss: true\n"
    assert parse_yaml(text, "c.yaml") == {"gradients": {"percentiles": [1, 50, 99], "vanishing_threshold": 1e-7},
                                          "base": {"enabled": True},
                                          "per_class": {"enabled": True, "track_loss": True}}
    assert json.loads(json.dumps(parse_yaml("[1, [2, [3]]]", "x"))) == [1, [2, [3]]]


def test_a_key_given_twice_is_refused_but_a_merge_key_may_override() -> None:
    with pytest.raises(ConfigError, match=r"c.yaml:2:3: duplicate key 'enabled' \(first given on line 1\)"):
        parse_yaml("a: {enabled: true,\n  enabled: false}", "c.yaml")
    assert parse_yaml("base: &b {x: 1}\nc: {<<: *b, x: 2}", "c.yaml")["c"] == {"x": 2}
