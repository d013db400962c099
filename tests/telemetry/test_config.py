"""Profiles, overrides and the one-line errors a user sees for bad configuration."""

from __future__ import annotations

import pydantic
import pytest

from telemetry.config import TelemetryConfig, load_config, parse_assignment, profile_names
from telemetry.errors import ConfigError


def test_four_profiles_in_order():
    assert profile_names() == ["minimal", "standard", "diagnostic", "research"]


def test_profile_values_come_from_yaml():
    cfg = load_config("diagnostic")
    assert cfg.profile_name == "diagnostic"
    assert cfg.history_length == 20
    assert cfg.gradients.layers == "all"
    assert cfg.gradients.percentiles == [1, 25, 50, 75, 99]
    assert cfg.gradients.vanishing_threshold == pytest.approx(1e-7)
    assert cfg.loss_landscape.perturbation_samples == 5
    assert load_config("standard").gradients.layers == ["conv1", "conv2", "fc"]
    research = load_config("research")
    assert research.track_weight_norms and research.track_activation_stats
    assert research.per_class.track_confusion and research.gradients.full_histogram


def test_set_overrides_parse_yaml_values():
    cfg = load_config("standard", overrides=["gradients.percentiles=[99,1,50]", "history_length=30",
                                             "per_class.enabled=true"])
    assert cfg.gradients.percentiles == [1, 50, 99]  # sorted: a percentile's position is canonical
    assert cfg.history_length == 30
    assert cfg.per_class.enabled is True
    assert cfg.gradients.layers == ["conv1", "conv2", "fc"]  # untouched keys keep the profile's value


def test_override_file_then_set(tmp_path):
    f = tmp_path / "o.yaml"
    f.write_text("history_length: 40\ngradients:\n  vanishing_threshold: 1e-6\n")
    cfg = load_config("standard", f, ["history_length=12"])
    assert cfg.history_length == 12
    assert cfg.gradients.vanishing_threshold == pytest.approx(1e-6)  # 1e-6 without a dot is a float


def test_parse_assignment_nests():
    assert parse_assignment("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}


@pytest.mark.parametrize(
    ("profile", "overrides", "expected"),
    [
        ("nope", [], "unknown profile 'nope'; available: minimal, standard, diagnostic, research"),
        ("standard", ["gradients.percentles=[1]"], "unknown key 'gradients.percentles'; did you mean "
                                                   "'gradients.percentiles'?"),
        ("standard", ["histroy_length=10"], "unknown key 'histroy_length'; did you mean 'history_length'?"),
        ("standard", ["history_length=3"], "history_length = 3 is out of range; expected >= 5"),
        ("standard", ["history_length=101"], "history_length = 101 is out of range; expected <= 100"),
        ("standard", ["loss_landscape.perturbation_samples=0"], "loss_landscape.perturbation_samples = 0 is out "
                                                                "of range; expected >= 1"),
        ("standard", ["loss_landscape.perturbation_scale=1.5"], "perturbation_scale = 1.5 is out of range; "
                                                                "expected < 1"),
        ("standard", ["history_length=ten"], "history_length = 'ten'"),
        ("standard", ["gradients.enabled=3"], "gradients.enabled = 3"),
        ("standard", ["gradients.layers=conv1"], "gradients.layers"),
        ("standard", ["gradients.layers=[]"], "layers is empty"),
        ("standard", ["gradients.percentiles=[1,101]"], "percentile 101 is outside [0, 100]"),
        ("standard", ["gradients.percentiles=[5,5]"], "duplicates"),
        ("standard", ["=3"], "expected KEY=VALUE"),
        ("standard", ["history_length"], "expected KEY=VALUE"),
        ("standard", ["gradients=3"], "gradients = 3"),
    ],
)
def test_bad_config_is_one_clear_line(profile, overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(profile, overrides=overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("history_length: 10\ngradients:\n  layers: [conv1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:4:1: YAML syntax error"):
        load_config("standard", f)


def test_unsafe_yaml_tag_is_refused(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text('history_length: !!python/object/apply:os.system ["echo hacked"]\n')
    with pytest.raises(ConfigError, match=r"evil\.yaml:1:17: unsupported YAML tag .*python/object/apply"):
        load_config("standard", f)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "42\n"])
def test_override_file_must_be_a_mapping(tmp_path, text):
    f = tmp_path / "list.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config("standard", f)


def test_missing_override_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("standard", tmp_path / "absent.yaml")


def test_configs_are_immutable_and_round_trip():
    cfg = load_config("research")
    assert TelemetryConfig.model_validate(cfg.model_dump()) == cfg
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.history_length = 7  # type: ignore[misc]


def test_profile_name_is_not_an_override(tmp_path) -> None:
    """It labels which profile the features came from: overriding it would relabel a pack."""
    with pytest.raises(ConfigError, match="--set: profile_name cannot be overridden"):
        load_config("diagnostic", overrides=["profile_name=minimal"])
    (tmp_path / "c.yaml").write_text("profile_name: minimal\n")
    with pytest.raises(ConfigError, match="c.yaml: profile_name cannot be overridden"):
        load_config("diagnostic", config_file=tmp_path / "c.yaml")
    assert load_config("diagnostic").profile_name == "diagnostic"
