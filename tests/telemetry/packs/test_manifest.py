"""The manifest: its JSON Schema is generated and committed (and this fails when it is stale), a
written manifest validates against it, newer formats are refused clearly, and unknown fields of the
same major version are tolerated and kept."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import pytest
from support.packs import make_episodes, reference, write_pack

from telemetry.errors import PackError
from telemetry.packs.manifest import (
    FORMAT_VERSION,
    SCHEMA_FILE,
    Manifest,
    manifest_json_schema,
    packaged_json_schema,
    read_manifest,
    render_json_schema,
)
from telemetry.packs.reader import open_pack
from telemetry.packs.writer import PackWriter


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    path = tmp_path_factory.mktemp("manifest") / "pack"
    write_pack(path, make_episodes(0, 3, steps=4), provenance={"dataset": "cifar10", "seeds": [1, 2]})
    return path


def test_committed_json_schema_is_up_to_date():
    assert packaged_json_schema() == render_json_schema(), (
        f"schemas/{SCHEMA_FILE} is stale: regenerate it with `python -m telemetry.packs.manifest`")


def test_manifest_validates_against_its_json_schema(pack):
    document = json.loads((pack / "manifest.json").read_text())
    schema = json.loads(packaged_json_schema())
    try:
        import jsonschema
    except ImportError:
        _validate(document, schema, schema, "$")
    else:
        jsonschema.validate(document, schema)


def test_the_schema_validator_rejects_what_the_model_rejects(pack):
    schema = json.loads(packaged_json_schema())
    document = json.loads((pack / "manifest.json").read_text())
    for path, value in [(("files", 0, "sha256"), "not-a-checksum"), (("commit",), -1),
                        (("telemetry_config", "history_length"), 2), (("telemetry_config", "bogus"), 1)]:
        broken = json.loads(json.dumps(document))
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(AssertionError):
            _validate(broken, schema, schema, "$")
        with pytest.raises(ValueError):
            Manifest.model_validate(broken)


def test_manifest_round_trips_through_its_model(pack):
    manifest = read_manifest(pack)
    again = Manifest.model_validate_json(manifest.to_json())
    assert again == manifest
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.provenance.dataset == "cifar10" and manifest.provenance.seeds == [1, 2]
    assert manifest.provenance.pyarrow_version and manifest.provenance.command_line
    assert manifest.feature_schema.to_schema() == reference()[1]
    assert manifest.profiles == reference()[2]
    assert json.loads((pack / "manifest.json").read_text())["feature_schema"]["_index"]["epoch"] == 0


def test_newer_major_format_is_refused_with_a_clear_message(pack, tmp_path):
    copy = _copy_manifest(pack, tmp_path, lambda d: d.update(format_version="2.0"))
    with pytest.raises(PackError, match=r"format_version 2.0 is newer than this esper-telemetry reads \(1"):
        open_pack(copy)


def test_unknown_fields_of_a_newer_minor_version_are_tolerated_and_kept(pack, tmp_path):
    def newer(d: dict[str, Any]) -> None:
        d.update(format_version="1.7", future_field={"x": 1})
        d["files"][0]["future_file_field"] = True

    copy = _copy_manifest(pack, tmp_path, newer, with_data=True)
    assert open_pack(copy).steps().num_rows == 12
    config, schema, _ = reference()
    with PackWriter.open_append(copy, config, schema) as writer:
        writer.add_episode(*make_episodes(10, 1, steps=2)[0])
    kept = json.loads((copy / "manifest.json").read_text())
    assert kept["future_field"] == {"x": 1}


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.pop("files"), r"manifest.json: files: Field required"),
    (lambda d: d.update(format_version="one"), r"format_version is 'one'; expected 'MAJOR.MINOR'"),
    (lambda d: d["files"].append(dict(d["files"][0])), "files lists a path twice"),
    (lambda d: d["feature_schema"]["_index"].update(epoch=3), "_index does not match the order of features"),
])
def test_a_damaged_manifest_is_one_line_naming_the_field(pack, tmp_path, mutate, message):
    copy = _copy_manifest(pack, tmp_path, mutate)
    with pytest.raises(PackError, match=message) as info:
        read_manifest(copy)
    assert "\n" not in str(info.value)


def test_not_a_pack(tmp_path):
    with pytest.raises(PackError, match="no such pack"):
        read_manifest(tmp_path / "missing")
    with pytest.raises(PackError, match="not a pack"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(PackError, match=r"manifest.json: not valid JSON \(line 1, column 2"):
        read_manifest(tmp_path)


def test_json_schema_describes_the_model():
    schema = manifest_json_schema()
    assert schema["title"] == "Manifest" and "files" in schema["required"]
    assert schema["$defs"]["FileEntry"]["properties"]["sha256"]["pattern"] == "^[0-9a-f]{64}$"


def _copy_manifest(pack, tmp_path, mutate, with_data: bool = False):
    import shutil

    copy = tmp_path / "copy"
    if with_data:
        shutil.copytree(pack, copy)
    else:
        copy.mkdir()
    data = json.loads((pack / "manifest.json").read_text())
    mutate(data)
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


# ---- a small JSON Schema validator, for when the jsonschema package is not installed -------------
# It knows exactly the keywords pydantic emits for this model and fails on any other, so a schema
# change cannot slip past it unvalidated.

_ANNOTATIONS = {"title", "description", "default", "$schema", "$id", "$defs"}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _validate(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str) -> None:
    unknown = set(schema) - _ANNOTATIONS - set(_KEYWORDS)
    assert not unknown, f"validator does not know keywords {unknown}"
    for keyword, argument in schema.items():
        if keyword in _KEYWORDS:
            _KEYWORDS[keyword](value, argument, schema, root, where)


def _type(value, expected, schema, root, where):
    names = expected if isinstance(expected, list) else [expected]
    ok = any((n == "integer" and isinstance(value, int) and not isinstance(value, bool))
             or (n == "number" and isinstance(value, int | float) and not isinstance(value, bool))
             or (n in _TYPES and isinstance(value, _TYPES[n])) for n in names)
    assert ok, f"{where}: {value!r} is not of type {expected}"


def _ref(value, ref, schema, root, where):
    assert ref.startswith("#/$defs/"), ref
    _validate(value, root["$defs"][ref.split("/")[-1]], root, where)


def _any_of(value, options, schema, root, where):
    for option in options:
        try:
            _validate(value, option, root, where)
            return
        except AssertionError:
            continue
    raise AssertionError(f"{where}: {value!r} matches none of anyOf")


def _properties(value, props, schema, root, where):
    if isinstance(value, dict):
        for key, sub in props.items():
            if key in value:
                _validate(value[key], sub, root, f"{where}.{key}")


def _additional(value, extra, schema, root, where):
    if not isinstance(value, dict):
        return
    for key in set(value) - set(schema.get("properties", {})):
        assert extra is not False, f"{where}: unexpected key {key!r}"
        if isinstance(extra, dict):
            _validate(value[key], extra, root, f"{where}.{key}")


def _required(value, keys, schema, root, where):
    if isinstance(value, dict):
        missing = [k for k in keys if k not in value]
        assert not missing, f"{where}: missing {missing}"


def _items(value, sub, schema, root, where):
    if isinstance(value, list):
        for i, item in enumerate(value):
            _validate(item, sub, root, f"{where}[{i}]")


def _property_names(value, sub, schema, root, where):
    if isinstance(value, dict):
        for key in value:
            _validate(key, sub, root, f"{where} key {key!r}")


def _format(value, fmt, schema, root, where):
    if fmt == "date-time" and isinstance(value, str):
        datetime.fromisoformat(value.replace("Z", "+00:00"))


def _number_bound(op):
    def check(value, bound, schema, root, where):
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert op(value, bound), f"{where}: {value} out of bounds ({bound})"
    return check


_KEYWORDS = {
    "type": _type,
    "$ref": _ref,
    "anyOf": _any_of,
    "properties": _properties,
    "additionalProperties": _additional,
    "required": _required,
    "items": _items,
    "propertyNames": _property_names,
    "format": _format,
    "const": lambda v, c, s, r, w: _check(v == c, f"{w}: {v!r} != {c!r}"),
    "enum": lambda v, e, s, r, w: _check(v in e, f"{w}: {v!r} not in {e}"),
    "pattern": lambda v, p, s, r, w: _check(not isinstance(v, str) or re.search(p, v), f"{w}: {v!r} !~ {p}"),
    "minimum": _number_bound(lambda v, b: v >= b),
    "maximum": _number_bound(lambda v, b: v <= b),
    "exclusiveMinimum": _number_bound(lambda v, b: v > b),
    "exclusiveMaximum": _number_bound(lambda v, b: v < b),
}


def _check(condition: Any, message: str) -> None:
    assert condition, message
