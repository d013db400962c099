"""The schema is derived from (config, model, classes): base block first, names stable across profiles."""

from __future__ import annotations

import itertools
import re

import pyarrow as pa
import pytest
from support.models import BASE_27, LIFECYCLE, MINIMAL, ReferenceCNN
from torch import nn

from telemetry.config import load_config, profile_names
from telemetry.errors import SchemaError
from telemetry.feature_schema import FeatureSchema, build_feature_schema
from telemetry.probes.registry import GROUP_ORDER

# REFERENCE.md's v1 observation, in order; the lags name "the last five, oldest first".
SQL_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def schema(profile: str, *overrides: str, model: nn.Module | None = None) -> FeatureSchema:
    return build_feature_schema(load_config(profile, overrides=list(overrides)), model or ReferenceCNN(), 10)


@pytest.mark.parametrize("profile", profile_names())
def test_base_block_is_the_27_reference_features_first(profile):
    s = schema(profile)
    assert s.names[:27] == BASE_27
    assert all(spec.group == "base" for spec in s.specs[:27])
    assert all(spec.group != "base" for spec in s.specs[27:])


def test_minimal_is_the_base_block_then_the_lifecycle_group():
    s = schema("minimal")
    assert s.names == MINIMAL and s.groups()["lifecycle"] == LIFECYCLE


@pytest.mark.parametrize("profile", profile_names())
def test_every_profile_has_the_lifecycle_group_right_after_the_base_block(profile):
    assert schema(profile).names[27:27 + len(LIFECYCLE)] == LIFECYCLE
    assert "lifecycle" not in schema(profile, "lifecycle.enabled=false").groups()


@pytest.mark.parametrize("profile", profile_names())
def test_names_are_sql_safe_and_groups_ordered(profile):
    s = schema(profile)
    assert all(SQL_IDENTIFIER.match(n) for n in s.names)
    order = [GROUP_ORDER.index(spec.group) for spec in s.specs]
    assert order == sorted(order)
    assert s.index == {n: i for i, n in enumerate(s.names)}
    assert all(spec.description and "\n" not in spec.description for spec in s.specs)


@pytest.mark.parametrize("small, large", list(itertools.combinations(profile_names(), 2)))
def test_larger_profile_contains_every_smaller_feature_with_the_same_meaning(small, large):
    """Profiles nest, so a larger pack slices by name into any smaller profile's features."""
    a, b = schema(small), schema(large)
    specs_b = {spec.name: spec for spec in b.specs}
    assert set(a.names) <= set(specs_b)
    for spec in a.specs:
        assert specs_b[spec.name] == spec
    sliced = b.select(a.names)
    assert sliced.names == a.names  # slicing by name restores the smaller profile's order too


def test_history_extension_by_lag():
    s = schema("standard", "history_length=8")
    assert s.groups()["history"] == [
        "val_loss_lag7", "val_loss_lag6", "val_loss_lag5",
        "val_accuracy_lag7", "val_accuracy_lag6", "val_accuracy_lag5",
    ]


def test_group_counts_for_the_reference_host():
    g = {k: len(v) for k, v in schema("diagnostic").groups().items()}
    layers = 7  # conv1, bn1, conv2, bn2, conv3, bn3, fc
    assert g["history"] == 2 * (20 - 5)
    assert g["gradients"] == 3 + layers * (2 + 1 + 5 + 1 + 1)
    assert g["per_class"] == 10 + 1 + 10
    assert g["loss_landscape"] == 3
    assert g["seed"] == 1


def test_standard_layers_resolve_to_real_modules():
    names = schema("standard").names
    for layer in ("conv1", "conv2", "fc"):
        assert f"grad_norm_{layer}" in names
    assert not any(n.endswith("_bn1") for n in names)


def test_all_means_modules_owning_parameters_directly_without_seeds():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.Tanh()), nn.Linear(8, 3))
    s = build_feature_schema(load_config("standard", overrides=["gradients.layers=all"]), model, 3)
    layers = [n.removeprefix("grad_norm_") for n in s.names if n.startswith("grad_norm_") and "max" not in n]
    assert layers == ["m_0", "m_2_0", "m_3"]
    host = ReferenceCNN()
    host.slot1.seed = nn.Conv2d(64, 64, 3)  # even a present seed is not a host layer
    assert not any("slot1" in n for n in schema("diagnostic", model=host).groups()["gradients"])


def test_unknown_layer_lists_the_nearest_real_names():
    with pytest.raises(SchemaError, match=r"'conv4' is not a module with parameters in ReferenceCNN; nearest: conv"):
        schema("standard", "gradients.layers=[conv1,conv4]")


def test_arrow_fields_follow_the_schema():
    s = schema("diagnostic")
    arrow = pa.schema(s.arrow_fields())
    assert arrow.names == s.names
    assert arrow.field("epoch").type == pa.int32()
    assert arrow.field("global_step").type == pa.int64()
    assert arrow.field("val_loss").type == pa.float32()


def test_manifest_form_round_trips():
    s = schema("research")
    d = s.to_dict()
    assert d["_index"]["epoch"] == 0 and d["_index"][s.names[-1]] == len(s) - 1
    assert FeatureSchema.from_dict(d) == s


def test_select_unknown_feature_is_an_error():
    with pytest.raises(SchemaError, match="not in this schema: nope"):
        schema("minimal").select(["epoch", "nope"])


def test_a_bare_module_is_its_own_layer():
    s = build_feature_schema(load_config("standard", overrides=["gradients.layers=all"]), nn.Linear(3, 2), 2)
    assert "grad_norm_root" in s.names
