"""What every column of a pack means: name, table, type, unit, description and, where values are
codes, the code table.

The feature columns describe themselves (FeatureSpec); this module describes the others, the fixed
columns of tables.py, so that a pack read without this project's source (the manifest's `columns`,
the dataset card's column table) still says what `action_mask` position 3 or `seed_stage` 2 means.
A fixed column without a description here is an error when a pack is created, so a column added
to tables.py cannot go undocumented.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa

from telemetry.errors import PackError
from telemetry.packs.tables import SPLIT_COLUMN
from telemetry.seed_status import SeedStage

if TYPE_CHECKING:
    from telemetry.packs.manifest import ColumnEntry, Manifest


class Described(Protocol):
    """What a feature says about itself (FeatureSpec, or its manifest form)."""

    name: str
    group: str
    unit: str
    description: str

# column -> (unit, description); the unit "-" means a name, text or identifier
STEP_COLUMNS: dict[str, tuple[str, str]] = {
    "episode_id": ("-", "id of the episode this decision belongs to (joins the episodes table)"),
    "step": ("step", "position of the decision in its episode, from 0 (one decision per epoch)"),
    "action": ("-", "action the behaviour policy took after this row's epoch; null where no policy "
                    "annotated the step. Its position in the action vocabulary is the label index"),
    "behaviour_prob": ("probability", "mu(a|s): probability the behaviour policy gave the action it took "
                                      "(1 for a greedy policy); for off-policy corrections"),
    "action_mask": ("bool per action", "which actions were valid, one boolean per action in the order of "
                                       "the action vocabulary (codes: position -> action); null where not recorded"),
    "reward": ("points", "reward of the epoch that followed the decision: reward_accuracy + reward_cost"),
    "reward_accuracy": ("points", "change of validation accuracy over the epoch that followed the decision"),
    "reward_cost": ("points", "cost of the parameters seeds add to the host over that epoch (zero or negative)"),
    "narrative": ("-", "one readable line written before the decision: accuracy, plateau, gradient health, "
                       "red flags, the live seed"),
    "red_flags": ("-", "names of the warning signs this row's features raised (e.g. sustained_plateau, "
                       "vanishing_gradients, overfitting); empty when none"),
    "opportunities": ("-", "names of favourable conditions (e.g. slot_available, early_stage_flexibility)"),
    "why_this_action": ("-", "the behaviour policy's reason for its action"),
    "why_not_alternatives": ("-", "one (action, reason) per valid action not taken"),
    "hindsight_accuracy": ("%", "validation accuracy hindsight_epochs epochs after the decision"),
    "hindsight_epochs": ("epochs", "how many epochs after the decision hindsight_accuracy was measured "
                                   "(fewer near the end of an episode)"),
    "was_good_decision": ("bool", "the decision judged in hindsight: with counterfactual rollouts, whether its "
                                  "action's rollout came close to the best one; null where it cannot be judged"),
    "counterfactual": ("points", "on branched steps, every valid action with its value: the validation accuracy "
                                 "its rollout reached (to the episode end unless the manifest's "
                                 "counterfactual_horizon says otherwise) minus cost, the parameter-epochs it held "
                                 "times the primary score's cost; continuation in the manifest; null where the "
                                 "step was not branched"),
    "counterfactual_epochs": ("epochs", "epochs rolled out after the decision; null where not branched"),
    "best_action": ("-", "the unique action with the highest counterfactual value (the oracle label); null where "
                         "the step was not branched or several actions tie (see best_actions)"),
    "best_actions": ("-", "every action with the highest counterfactual value (an exact tie set, never broken "
                          "towards WAIT); null where the step was not branched"),
    "counterfactual_stratum": ("-", "the seed lifecycle stratum of a branched step (dormant, training, blending, "
                                    "ramp_complete); branch points are drawn per stratum"),
    "expert_action": ("-", "what the privileged expert, which knows the episode's cause, would do in this state "
                           "(policies/experts.expert_action with the cause's remedy, germinating from epoch 1): "
                           "the label of --target expert and of DAgger; recorded on every step, whatever "
                           "the behaviour policy did; null in packs written before it existed"),
}

EPISODE_COLUMNS: dict[str, tuple[str, str]] = {
    "episode_id": ("-", "id of the episode (joins the steps table)"),
    "episode_index": ("-", "position of the episode in its pack's generation order"),
    "seed": ("-", "random seed of the episode's environment"),
    "scenario": ("-", "the hidden cause the episode was trained under (e.g. healthy, lr_too_low, "
                      "vanishing_gradients); never among the features"),
    "scenario_params": ("JSON", "the scenario's parameters as a JSON object"),
    "epochs": ("epochs", "epochs the host network was trained for"),
    "final_accuracy": ("%", "validation accuracy at the end of the episode"),
    "best_accuracy": ("%", "best validation accuracy during the episode"),
    "outcome": ("-", "how the episode ended (e.g. fossilized, culled, seed_live_at_end, no_intervention, "
                     "diverged)"),
    "trajectory": ("-", "the key moments' events joined by ' -> ' (e.g. plateau -> germinate -> train)"),
    "key_moments": ("-", "(epoch, event, detail) of each moment that shaped the episode"),
    "seed_outcomes": ("-", "per seed: slot, blueprint, outcome, germinated_epoch, ended_epoch and improvement "
                           "(validation accuracy points since germination)"),
    "params_added": ("parameters", "parameters the episode's seed module adds to the host"),
    "diverged": ("bool", "whether training produced a non-finite loss or gradient"),
}

SPLIT_DESCRIPTION = ("split of the episode (folder split=NAME; readers add it as a column): assigned from a "
                     "stable hash of episode_id, so no episode is in two splits")

# coded feature columns: feature name -> {stored value: meaning}
FEATURE_CODES: dict[str, dict[str, str]] = {
    "seed_stage": {str(int(stage)): stage.name for stage in SeedStage},
    "has_active_seed": {"0": "no live seed", "1": "a seed is live in a slot"},
}


def type_name(type_: pa.DataType) -> str:
    """A short, readable Arrow type: list<struct<action: string, reason: string>>."""
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return f"list<{type_name(type_.value_type)}>"
    if pa.types.is_struct(type_):
        fields = (type_.field(i) for i in range(type_.num_fields))
        return "struct<" + ", ".join(f"{f.name}: {type_name(f.type)}" for f in fields) + ">"
    return {"float": "float32", "double": "float64"}.get(str(type_), str(type_))


def column_entries(schemas: Mapping[str, pa.Schema], features: Iterable[Described], actions: Sequence[str],
                   splits: Mapping[str, float]) -> list[ColumnEntry]:
    """Every column of both tables (`schemas`: table -> Arrow schema), in table order, each table's
    list closed by `split`, which readers add."""
    from telemetry.packs.manifest import ColumnEntry

    vocabulary = {name: f"label index {i}" for i, name in enumerate(actions)}
    positions = {str(i): name for i, name in enumerate(actions)}
    codes = {"action": vocabulary, "best_action": vocabulary, "expert_action": vocabulary, "action_mask": positions}
    split_codes = {name: f"{fraction:.0%} of episodes" for name, fraction in splits.items()}
    specs = {spec.name: spec for spec in features}
    out: list[ColumnEntry] = []
    for table, fixed in (("steps", STEP_COLUMNS), ("episodes", EPISODE_COLUMNS)):
        for field in schemas[table]:
            if table == "steps" and field.name in specs:
                spec = specs[field.name]
                out.append(ColumnEntry(name=spec.name, table=table, dtype=type_name(field.type), unit=spec.unit,
                                       description=spec.description, group=spec.group,
                                       codes=FEATURE_CODES.get(spec.name)))
                continue
            if field.name not in fixed:
                raise PackError(f"column {field.name!r} of the {table} table has no description "
                                "(telemetry/packs/columns.py)")
            unit, description = fixed[field.name]
            out.append(ColumnEntry(name=field.name, table=table, dtype=type_name(field.type), unit=unit,
                                   description=description, codes=codes.get(field.name)))
        out.append(ColumnEntry(name=SPLIT_COLUMN, table=table, dtype="string", unit="-",
                               description=SPLIT_DESCRIPTION, codes=split_codes))
    return out


def described_columns(manifest: Manifest) -> list[ColumnEntry]:
    """The manifest's column descriptions; for a pack written before they were recorded, derived now."""
    if manifest.columns:
        return list(manifest.columns)
    schemas = {table: manifest.arrow_schema(table) for table in ("steps", "episodes")}
    return column_entries(schemas, manifest.feature_schema.features, manifest.actions, manifest.splits)
