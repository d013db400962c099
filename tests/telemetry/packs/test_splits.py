"""Splits: by episode, from a stable hash of the id, so they never change and never leak."""

from __future__ import annotations

import hashlib

import pytest

from telemetry.errors import PackError
from telemetry.packs.splits import DEFAULT_SPLITS, check_splits, hash_unit, split_of


def test_assignment_is_pinned():
    """These must never change: a pack appended to by a later version must keep its episodes' splits."""
    ids = [f"ep-{i:04d}" for i in range(24)]
    assert [split_of(e) for e in ids] == [split_of_reference(e) for e in ids]
    others = [(e, split_of(e)) for e in ids if split_of(e) != "train"]
    assert others == [("ep-0009", "val"), ("ep-0020", "test")]


def split_of_reference(episode_id: str) -> str:
    """The documented rule, written out independently: sha256, first 8 bytes big-endian / 2**64."""
    u = int(hashlib.sha256(episode_id.encode()).hexdigest()[:16], 16) / 2**64
    return "train" if u < 0.8 else "val" if u < 0.9 else "test"


def test_fractions_are_respected_over_many_episodes():
    counts = {s: 0 for s in DEFAULT_SPLITS}
    n = 20000
    for i in range(n):
        counts[split_of(f"run7-episode-{i}")] += 1
    for name, fraction in DEFAULT_SPLITS.items():
        sd = (n * fraction * (1 - fraction)) ** 0.5
        assert abs(counts[name] - n * fraction) < 5 * sd, counts


def test_hash_unit_is_in_range_and_deterministic():
    values = [hash_unit(str(i)) for i in range(1000)]
    assert all(0 <= v < 1 for v in values) and values == [hash_unit(str(i)) for i in range(1000)]


def test_custom_splits_and_bad_ones():
    assert split_of("anything", {"all": 1.0}) == "all"
    assert check_splits({"a": 0.5, "b": 0.5}) == {"a": 0.5, "b": 0.5}
    for bad, message in [({}, "no split given"), ({"a": 0.0, "b": 1.0}, "expected a number in"),
                         ({"a": 0.5}, "sum to 0.5"), ({"a/b": 1.0}, "not a lower-case identifier")]:
        with pytest.raises(PackError, match=message):
            check_splits(bad)
