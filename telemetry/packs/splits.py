"""Train/val/test splits assigned per episode from a stable hash of its id.

Splitting by row put one episode's decisions on both sides of the train/validation line and made the
first comparison of feature sets meaningless. Here an episode's split depends on its id alone, so
appending episodes never moves an existing one and every process agrees without coordination.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping

from telemetry.errors import PackError

DEFAULT_SPLITS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}

_SPLIT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def check_splits(fractions: Mapping[str, float]) -> dict[str, float]:
    """Split names become `split=NAME` folders and SQL values, so they are restricted to identifiers."""
    splits = dict(fractions)
    if not splits:
        raise PackError("splits: no split given; expected e.g. {'train': 0.8, 'val': 0.1, 'test': 0.1}")
    for name, fraction in splits.items():
        if not isinstance(name, str) or not _SPLIT_NAME.match(name):
            raise PackError(f"splits: name {name!r} is not a lower-case identifier such as 'train'")
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise PackError(f"splits: fraction of {name!r} is {fraction!r}; expected a number in (0, 1]")
    total = sum(splits.values())
    if abs(total - 1.0) > 1e-9:
        raise PackError(f"splits: fractions sum to {total:.6g}; expected 1")
    return {name: float(f) for name, f in splits.items()}


def hash_unit(episode_id: str) -> float:
    """A number in [0, 1) fixed by the id: the first 8 bytes of its UTF-8 sha256, as a fraction of 2^64."""
    digest = hashlib.sha256(episode_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(episode_id: str, fractions: Mapping[str, float] = DEFAULT_SPLITS) -> str:
    """The split whose cumulative fraction first exceeds the id's hash; the last split takes the rest."""
    u = hash_unit(episode_id)
    names = list(fractions)
    cumulative = 0.0
    for name in names[:-1]:
        cumulative += fractions[name]
        if u < cumulative:
            return name
    return names[-1]


def assign_splits(episode_ids: Iterable[str], fractions: Mapping[str, float] = DEFAULT_SPLITS) -> list[str]:
    return [split_of(e, fractions) for e in episode_ids]
