"""The Arrow schemas of a pack's two tables, derived from the feature schema.

The steps table is wide: identity columns, then one column per feature in schema order (so a
column's position never depends on which profile wrote it), then the decision columns that the
generation pipeline fills. Decision columns are nullable because a pack may hold telemetry before
any policy has annotated it. The episodes table has one row per episode. Both schemas are computed
here once, stored in the manifest, and from then on read from the manifest, never recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from telemetry.errors import PackError

if TYPE_CHECKING:
    from telemetry.feature_schema import FeatureSchema

DEFAULT_ACTIONS: tuple[str, ...] = (
    "WAIT",
    "GERMINATE_CONV",
    "GERMINATE_ATTENTION",
    "GERMINATE_NORM",
    "GERMINATE_DEPTHWISE",
    "ADVANCE",
    "FOSSILIZE",
    "CULL",
)

SPLIT_COLUMN = "split"

STEP_IDENTITY: tuple[pa.Field, ...] = (
    pa.field("episode_id", pa.string(), nullable=False),
    pa.field("step", pa.int32(), nullable=False),
)

_ALTERNATIVE = pa.struct([("action", pa.string()), ("reason", pa.string())])
_COUNTERFACTUAL = pa.struct([("action", pa.string()), ("value", pa.float32()), ("accuracy", pa.float32()),
                             ("cost", pa.float32())])

DECISION_FIELDS: tuple[pa.Field, ...] = (
    pa.field("action", pa.string()),
    pa.field("behaviour_prob", pa.float32()),
    pa.field("action_mask", pa.list_(pa.bool_())),
    pa.field("reward", pa.float32()),
    pa.field("reward_accuracy", pa.float32()),
    pa.field("reward_cost", pa.float32()),
    pa.field("narrative", pa.string()),
    pa.field("red_flags", pa.list_(pa.string())),
    pa.field("opportunities", pa.list_(pa.string())),
    pa.field("why_this_action", pa.string()),
    pa.field("why_not_alternatives", pa.list_(_ALTERNATIVE)),
    pa.field("hindsight_accuracy", pa.float32()),
    pa.field("hindsight_epochs", pa.int32()),
    pa.field("was_good_decision", pa.bool_()),
    pa.field("counterfactual", pa.list_(_COUNTERFACTUAL)),
    pa.field("counterfactual_epochs", pa.int32()),
    pa.field("best_action", pa.string()),
    pa.field("best_actions", pa.list_(pa.string())),
    pa.field("counterfactual_stratum", pa.string()),
    pa.field("expert_action", pa.string()),
)

_KEY_MOMENT = pa.struct([("epoch", pa.int32()), ("event", pa.string()), ("detail", pa.string())])
_SEED_OUTCOME = pa.struct([
    ("slot", pa.string()),
    ("blueprint", pa.string()),
    ("outcome", pa.string()),
    ("germinated_epoch", pa.int32()),
    ("ended_epoch", pa.int32()),
    ("improvement", pa.float32()),
])

EPISODE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("episode_id", pa.string(), nullable=False),
    pa.field("episode_index", pa.int64()),
    pa.field("seed", pa.int64()),
    pa.field("scenario", pa.string()),
    pa.field("scenario_params", pa.string()),
    pa.field("epochs", pa.int32()),
    pa.field("final_accuracy", pa.float32()),
    pa.field("best_accuracy", pa.float32()),
    pa.field("outcome", pa.string()),
    pa.field("trajectory", pa.string()),
    pa.field("key_moments", pa.list_(_KEY_MOMENT)),
    pa.field("seed_outcomes", pa.list_(_SEED_OUTCOME)),
    pa.field("params_added", pa.int64()),
    pa.field("diverged", pa.bool_()),
)

RESERVED_COLUMNS = frozenset(
    [f.name for f in STEP_IDENTITY] + [f.name for f in DECISION_FIELDS] + [SPLIT_COLUMN]
)


def steps_schema(features: FeatureSchema) -> pa.Schema:
    """Identity, features in schema order, decisions; a feature named like a fixed column is refused."""
    clashes = [n for n in features.names if n in RESERVED_COLUMNS]
    if clashes:
        raise PackError(f"feature schema: feature {clashes[0]!r} clashes with a fixed column "
                        "of the steps table")
    return pa.schema([*STEP_IDENTITY, *features.arrow_fields(), *DECISION_FIELDS])


def episodes_schema() -> pa.Schema:
    return pa.schema(EPISODE_FIELDS)


def check_actions(actions: Sequence[str]) -> list[str]:
    """The action vocabulary: the order fixes label indices and `action_mask` positions."""
    names = list(actions)
    if not names or any(not isinstance(a, str) or not a for a in names):
        raise PackError(f"actions: expected a non-empty list of non-empty names, got {names!r}")
    if len(set(names)) != len(names):
        raise PackError(f"actions: {names!r} contains duplicates")
    return names
