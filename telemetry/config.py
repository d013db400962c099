"""Telemetry configuration: strict pydantic models, YAML profiles and overrides.

A profile is a named TelemetryConfig in `schemas/telemetry_profiles.yaml`. Users refine it with an
override file and with dotted `--set a.b=value` assignments; the merged mapping is validated once,
strictly, so a typo is an error naming its full path and the closest valid key, never a silent no-op.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from telemetry.bounded import MAX_YAML_BYTES, check_size, check_yaml_events, read_text
from telemetry.errors import ConfigError

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class GradientConfig(BaseModel):
    """Per-layer gradient health, accumulated over every batch of a decision step."""

    model_config = _STRICT

    enabled: bool = False
    layers: list[str] | Literal["all"] = "all"
    track_norm: bool = True
    track_std: bool = True
    percentiles: list[int] = Field(default_factory=lambda: [1, 50, 99])
    detect_vanishing: bool = True
    detect_exploding: bool = True
    vanishing_threshold: float = Field(default=1e-7, gt=0)
    exploding_threshold: float = Field(default=1e3, gt=0)
    full_histogram: bool = False
    sample_size: int = Field(default=65536, ge=1024, le=1 << 22)
    every_n_batches: int = Field(default=1, ge=1, le=10000)
    # false: per batch a fixed few kernels, std mean and shares from the element sample (stated bounds);
    # true: every element of every batch (exact, a growing number of kernels; for tests and audits)
    exact: bool = False

    @field_validator("percentiles")
    @classmethod
    def _percentiles_in_range(cls, value: list[int]) -> list[int]:
        for p in value:
            if not 0 <= p <= 100:
                raise ValueError(f"percentile {p} is outside [0, 100]")
        if len(set(value)) != len(value):
            raise ValueError(f"percentiles {value} contain duplicates")
        return sorted(value)

    @field_validator("layers")
    @classmethod
    def _layers_nonempty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError('layers is empty; expected "all" or a list of module names')
        return value


class LossLandscapeConfig(BaseModel):
    """Sharpness: loss increase under filter-normalised random weight perturbations."""

    model_config = _STRICT

    enabled: bool = False
    perturbation_samples: int = Field(default=5, ge=1, le=20)
    perturbation_scale: float = Field(default=0.01, gt=0, lt=1)
    # (samples + 1) forwards of this batch per step: 128 (one training batch) keeps diagnostic cheap
    probe_batch_size: int = Field(default=128, ge=1, le=65536)
    # measure on every k-th decision step and repeat the last measurement between: on a host whose
    # epoch is a few batches, the probe's forwards are a large share of the step (see BENCHMARKS.md)
    every_n_steps: int = Field(default=1, ge=1, le=1000)


class PerClassConfig(BaseModel):
    """Per-class validation metrics, computed vectorised from the validation pass."""

    model_config = _STRICT

    enabled: bool = False
    track_accuracy: bool = True
    track_loss: bool = False
    track_confusion: bool = False


class LifecycleConfig(BaseModel):
    """The lifecycle group (probes/lifecycle.py): on in every profile, so every policy sees what the
    heuristic sees; `blueprints` names the one-hot columns, in order."""

    model_config = _STRICT

    enabled: bool = True
    blueprints: list[str] = Field(default_factory=lambda: ["conv", "attention", "norm", "depthwise"])

    @field_validator("blueprints")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        bad = [b for b in value if not b.isidentifier() or not b.islower()]
        if bad or len(set(value)) != len(value):
            raise ValueError(f"blueprints must be distinct lower-case identifiers, got {value}")
        return value


class TelemetryConfig(BaseModel):
    """Everything that decides which features a pack holds; stored whole in the manifest."""

    model_config = _STRICT

    profile_name: str = "standard"
    history_length: int = Field(default=10, ge=5, le=100)
    gradients: GradientConfig = Field(default_factory=GradientConfig)
    loss_landscape: LossLandscapeConfig = Field(default_factory=LossLandscapeConfig)
    per_class: PerClassConfig = Field(default_factory=PerClassConfig)
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)
    track_weight_norms: bool = False
    track_activation_stats: bool = False


class _DuplicateKey(yaml.MarkedYAMLError):
    """A mapping names a key twice: configs are strict, so the second is not allowed to win silently."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-7` as a float (YAML 1.1 insists on `1.0e-7`) and refuses a key
    given twice in one mapping (merge keys `<<` still override as YAML defines)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class names it
                break
            if first is not key_node:
                raise _DuplicateKey(None, None, f"duplicate key {key!r} (first given on line "
                                    f"{first.start_mark.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML safely; a syntax error names the source, line and column.

    The text is bounded in size, and its values (aliases expanded) in depth and number, before any
    value is built (telemetry/bounded.py): a deep or self-repeating document is one line, never a
    RecursionError or an exhausted memory.
    """
    check_size(len(text.encode("utf-8", "surrogatepass")), MAX_YAML_BYTES, source, ConfigError)
    try:
        check_yaml_events(yaml.parse(text, Loader=_Loader), source, ConfigError)
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _DuplicateKey as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: {exc.problem}; a config gives each key once") from None
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: unsupported YAML tag (only plain YAML values are accepted): "
                          f"{_tag(exc.problem)}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise ConfigError(f"{source}: {str(exc).split(':')[0]}; expected a number of a sensible size") from None


def _tag(problem: str | None) -> str:
    """The offending tag from PyYAML's 'could not determine a constructor for the tag X'."""
    match = re.search(r"tag '?([^' ]+)'?", problem or "")
    return match.group(1).replace("tag:yaml.org,2002:", "!!") if match else "unknown tag"


def _profiles() -> dict[str, dict[str, Any]]:
    text = resources.files("telemetry.schemas").joinpath("telemetry_profiles.yaml").read_text()
    return parse_yaml(text, "telemetry_profiles.yaml")["profiles"]


def profile_names() -> list[str]:
    return list(_profiles())


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_override_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = read_text(path, MAX_YAML_BYTES, ConfigError)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.__class__.__name__})") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def parse_assignment(assignment: str) -> dict[str, Any]:
    """Turn `a.b=value` into `{"a": {"b": value}}`, the value parsed as YAML (`[1,50,99]`, `true`)."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE with a dotted key, e.g. history_length=30")
    value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _closest_key(model: type[BaseModel], path: tuple[str | int, ...]) -> str | None:
    """The nearest valid key for an unknown one at `path`, walking nested models by field name."""
    for part in path[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    matches = difflib.get_close_matches(str(path[-1]), list(model.model_fields), n=1, cutoff=0.5)
    return matches[0] if matches else None


def _bound(ctx: dict[str, Any]) -> str:
    names = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(f"{names[k]} {v}" for k, v in ctx.items() if k in names)


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """Reduce pydantic's report to one line about the first problem."""
    err = exc.errors()[0]
    path = tuple(err["loc"])
    dotted = ".".join(str(p) for p in path) or "(top level)"
    dotted = dotted if len(dotted) <= 80 else dotted[:77] + "..."
    kind = err["type"]
    if kind == "extra_forbidden":
        hint = _closest_key(TelemetryConfig, path)
        suffix = f"; did you mean {'.'.join([*map(str, path[:-1]), hint])!r}?" if hint else ""
        return f"{source}: unknown key {dotted!r}{suffix}"
    value = _short(err.get("input"))
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        return f"{source}: {dotted} = {value!r} is out of range; expected {_bound(err.get('ctx', {}))}"
    if kind == "value_error":
        return f"{source}: {dotted}: {err['ctx']['error']}"
    return f"{source}: {dotted} = {value!r}: {err['msg'].lower()}"


class _Shown:
    """A value as an error line shows it: its repr, cut to a readable length (it may be huge)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _short(value: Any, limit: int = 80) -> Any:
    try:
        text = repr(value)
    except RecursionError:  # a value that contains itself
        text = "<a value that contains itself>"
    return _Shown(text if len(text) <= limit else text[: limit - 3] + "...")


def load_config(
    profile: str = "standard",
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> TelemetryConfig:
    """Resolve a profile, then an override file, then `--set` assignments, in that order."""
    profiles = _profiles()
    if profile not in profiles:
        raise ConfigError(f"unknown profile {profile!r}; available: {', '.join(profiles)}")
    data = _deep_merge({"profile_name": profile}, profiles[profile])
    source = f"profile {profile!r}"
    if config_file is not None:
        data = _deep_merge(data, _not_renaming(_read_override_file(config_file), str(config_file)))
        source = str(config_file)
    for assignment in overrides:
        data = _deep_merge(data, _not_renaming(parse_assignment(assignment), "--set"))
        source = "--set"
    return validate_config(data, source)


def _not_renaming(override: dict[str, Any], source: str) -> dict[str, Any]:
    """`profile_name` records which profile the features came from; an override that changed it would
    label a pack of one profile's features as another's, so it is not an override."""
    if "profile_name" in override:
        raise ConfigError(f"{source}: profile_name cannot be overridden (it names the profile the config "
                          "starts from); choose the profile itself (--profile, or the profile argument)")
    return override


def validate_config(data: Any, source: str = "config") -> TelemetryConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
    try:
        return TelemetryConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None
