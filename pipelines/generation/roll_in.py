"""Fresh episodes like a pack's, driven by a saved policy: DAgger's roll-ins.

    spec = roll_in_spec(pack, "runs/policy", sha256, rng_seed=7)
    roll_in(pack, Path("runs/policy"), sha256, 7, episodes=20, out=Path("runs/dagger/round-1"))

The episodes reproduce the pack's settings (telemetry config, dataset, epochs, scenario mix,
environment options) under a new run seed, so none repeats an episode of the pack. Exploration and
counterfactual branching are off: the policy alone chooses, greedily, and every step still records
what the privileged expert would do (`expert_action`), which is what DAgger learns from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.environment.morphogenetic_env import EnvOptions
from pipelines.generation.episode import GenerationSpec
from pipelines.generation.generate import GenerationError, generate
from telemetry.packs import MANIFEST_NAME, Pack, read_manifest


def pack_generation(pack: Pack) -> dict[str, Any]:
    """The settings `esper generate` recorded in the pack's manifest; refused if it recorded none."""
    generation = (pack.manifest.provenance.model_extra or {}).get("generation")
    if not isinstance(generation, dict):
        raise GenerationError(f"{pack.path}: not written by `esper generate`, so fresh episodes cannot reproduce its "
                              "settings; expected a generated pack")
    return generation


def roll_in_spec(pack: Pack, policy: str, policy_sha256: str | None, rng_seed: int) -> GenerationSpec:
    """Episodes like the pack's under run seed `rng_seed`, driven greedily by `policy`, no rollouts."""
    generation = pack_generation(pack)
    return GenerationSpec(
        config=pack.manifest.telemetry_config, dataset=generation["dataset"], data_dir=generation.get("data_dir"),
        rng_seed=rng_seed, epochs=int(generation["epochs"]), device=generation.get("device", "cpu"),
        policy=policy, policy_sha256=policy_sha256, epsilon=0.0, counterfactual_fraction=0.0,
        scenarios=tuple(generation["scenarios"]), options=EnvOptions(**generation["options"]))


def roll_in(pack: Pack, policy: Path, policy_sha256: str, rng_seed: int, episodes: int, out: Path,
            workers: int = 1) -> Path:
    """Generate (or complete, after an interruption) the roll-in pack at `out`. A pack already there
    that another policy drove is refused: its states are not this policy's."""
    if (out / MANIFEST_NAME).exists():
        recorded = (read_manifest(out).provenance.model_extra or {}).get("generation") or {}
        if recorded.get("policy_sha256") != policy_sha256:
            raise GenerationError(f"{out}: its episodes were driven by the policy with weights sha256 "
                                  f"{str(recorded.get('policy_sha256'))[:12]}..., not this round's learner "
                                  f"({policy_sha256[:12]}...); remove {out} to roll in again")
    generate(roll_in_spec(pack, str(policy), policy_sha256, rng_seed), out, episodes, workers=workers,
             resume=(out / MANIFEST_NAME).exists(), show_progress=False)
    return out
