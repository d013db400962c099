"""DAgger: the states the learner itself reaches, labelled by the privileged expert, added to its data.

    result = run_dagger(open_pack("runs/pack"), "minimal", DaggerSpec(rounds=3, episodes=20),
                        "runs/policy-dagger", roll_in)

Imitating the expert on the behaviour policy's states alone (`--target expert`) leaves the learner
untaught in the states its own mistakes lead to. DAgger (Ross, Gordon and Bagnell, 2011) closes
that gap: round 0 trains on the pack; round k (1..R) lets round k-1's learner drive N fresh episodes
(greedy, no counterfactual rollouts, the pack's settings) into OUT/dagger/round-k, a pack of its
own whose steps carry `expert_action`, the expert's label of each state the learner reached; then
a fresh network is trained on the pack plus every roll-in so far, each pack's rows in the split it
assigned them, features standardised with the ORIGINAL pack's train-split statistics throughout
(the saved policy keeps those, so it standardises live rows as it was trained).

Round k's run seed comes from SeedSequence([pack seed, DAGGER_TAG, k]) reduced to a non-negative
int63, redrawn in the unlikely case it equals the pack's or an earlier round's: no roll-in repeats
an episode of the pack or of another round. The final policy is saved at OUT like `esper train`'s,
its meta naming every round: its seed, its roll-in pack (path and manifest sha256), the weights
that drove it, the learner's agreement with the expert on its own roll-in steps and the roll-ins'
mean final accuracy. Round learners are kept in OUT/dagger/learner-k.

An interrupted run resumes where it stopped: a saved learner is reused when it was trained on the
same data and settings, a roll-in pack is completed (generate's resume), and a roll-in pack that
other weights drove is refused. Training never imports generation (the layering), so the roll-in
is handed in by whoever assembles the command (`pipelines/cli.py`): see `RollIn`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow.compute as pc

from pipelines.policies.learned_policy import POLICY_FILE, WEIGHTS_FILE, LearnedPolicy
from pipelines.training.train import TrainError, TrainOptions, TrainResult, train_policy
from telemetry.packs import MANIFEST_NAME, Pack, file_sha256, open_pack

DAGGER_TAG = 0xDA66E5  # keeps DAgger's seed stream apart from every other use of the pack's seed
WORK, SETTINGS_FILE = "dagger", "dagger.json"


class RollIn(Protocol):
    """Generate `episodes` fresh episodes like `pack`'s, driven by the saved policy, into `out`."""

    def __call__(self, pack: Pack, policy: Path, policy_sha256: str, rng_seed: int, episodes: int,
                 out: Path) -> Path: ...


@dataclass(frozen=True)
class DaggerSpec:
    rounds: int
    episodes: int = 20  # roll-in episodes per round

    def check(self, target: str) -> None:
        if target != "expert":
            raise TrainError(f"--dagger needs --target expert (the expert labels the learner's own states), got "
                             f"--target {target}")
        for flag, value in (("--dagger", self.rounds), ("--dagger-episodes", self.episodes)):
            if value < 1:
                raise TrainError(f"{flag} must be >= 1, got {value}")


def round_seeds(pack_seed: int, rounds: int) -> list[int]:
    """Run seeds of rounds 1..rounds: distinct, and none equal to the pack's."""
    taken, seeds = {pack_seed}, []
    for k in range(1, rounds + 1):
        attempt = 0
        while (seed := _int63([pack_seed, DAGGER_TAG, k, attempt] if attempt else [pack_seed, DAGGER_TAG, k])) in taken:
            attempt += 1
        taken.add(seed)
        seeds.append(seed)
    return seeds


def _int63(entropy: list[int]) -> int:
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def run_dagger(pack: Pack, features: str | Sequence[str], spec: DaggerSpec, out: str | Path, roll_in: RollIn,
               rng_seed: int = 0, options: TrainOptions | None = None,
               say: Callable[[str], None] = print) -> TrainResult:
    """Rounds 0..R (see the module docstring); the final policy saved at `out`, returned with its scores."""
    options = options or TrainOptions()
    spec.check("expert")
    out = Path(out)
    work = out / WORK
    settings = _settings(pack, features, spec, rng_seed, options)
    seeds = round_seeds(int(settings["pack_seed"]), spec.rounds)
    fresh = out if not out.exists() else work if not work.exists() else None
    _claim(work, settings)
    rolls: list[Pack] = []
    rounds: list[dict[str, Any]] = []
    try:
        learner = _learner(work, 0, pack, rolls, features, rng_seed, options)
    except BaseException:  # the pack cannot train a learner: leave nothing behind a new run
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
        raise
    for k in range(1, spec.rounds + 1):
        path = roll_in(pack, work / f"learner-{k - 1}", learner.weights_sha256 or "", seeds[k - 1], spec.episodes,
                       work / f"round-{k}")
        rolls.append(open_pack(path))
        rounds.append(_round_record(k, seeds[k - 1], rolls[-1], learner))
        say(f"round {k}: learner {k - 1} agreed with the expert on {rounds[-1]['expert_agreement']:.1%} of its "
            f"{rounds[-1]['steps']} roll-in steps; mean final accuracy {rounds[-1]['mean_final_accuracy']:.2f}")
        if k < spec.rounds:
            learner = _learner(work, k, pack, rolls, features, rng_seed, options)
    result = _trained(pack, rolls, features, rng_seed, options)
    result.policy.meta["dagger"] = {**settings, "rounds_detail": rounds}
    _publish(result.policy, out)
    return result


def _settings(pack: Pack, features: str | Sequence[str], spec: DaggerSpec, rng_seed: int,
              options: TrainOptions) -> dict[str, Any]:
    generation = (pack.manifest.provenance.model_extra or {}).get("generation")
    if not isinstance(generation, dict) or not isinstance(generation.get("rng_seed"), int):
        raise TrainError(f"{pack.path}: not written by `esper generate`, so DAgger cannot roll in episodes with its "
                         "settings; expected a generated pack")
    return {"rounds": spec.rounds, "episodes_per_round": spec.episodes, "tag": DAGGER_TAG,
            "pack_seed": generation["rng_seed"], "pack_manifest_sha256": file_sha256(pack.path / MANIFEST_NAME),
            "features": features if isinstance(features, str) else list(features), "seed": rng_seed,
            "options": asdict(options)}


def _claim(work: Path, settings: dict[str, Any]) -> None:
    """Start the work folder, or resume one an interrupted run with the same settings left."""
    path = work / SETTINGS_FILE
    kept = {k: v for k, v in settings.items() if k != "rounds"}  # more or fewer rounds continue the same run
    if path.exists():
        found = {k: v for k, v in json.loads(path.read_text()).items() if k != "rounds"}
        if found != kept:
            changed = sorted(k for k in kept.keys() | found.keys() if kept.get(k) != found.get(k))
            raise TrainError(f"{work}: an interrupted DAgger run with other settings ({', '.join(changed)}) is there; "
                             "resume it with its settings, or choose another --out")
        return
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kept, indent=2) + "\n")


def _trained(pack: Pack, rolls: list[Pack], features: str | Sequence[str], rng_seed: int,
             options: TrainOptions) -> TrainResult:
    result = train_policy(pack, features, "expert", rng_seed=rng_seed, options=options, extra=rolls)
    result.policy.meta["dagger_packs"] = [_pack_ref(p) for p in rolls]
    return result


def _learner(work: Path, k: int, pack: Pack, rolls: list[Pack], features: str | Sequence[str], rng_seed: int,
             options: TrainOptions) -> LearnedPolicy:
    """Round k's learner: the one an interrupted run saved, when trained on the same packs, or a new one."""
    directory = work / f"learner-{k}"
    if (directory / POLICY_FILE).exists():
        saved = LearnedPolicy.load(directory)
        if saved.meta.get("dagger_packs") == [_pack_ref(p) for p in rolls]:
            return saved
        raise TrainError(f"{directory}: a learner trained on other roll-in packs; remove it (and the rounds after "
                         "it) to train it again")
    shutil.rmtree(directory, ignore_errors=True)  # an empty or half-written folder of an interrupted run
    policy = _trained(pack, rolls, features, rng_seed, options).policy
    policy.save(directory)
    return policy


def _pack_ref(pack: Pack) -> dict[str, str]:
    return {"path": str(pack.path.resolve()), "manifest_sha256": file_sha256(pack.path / MANIFEST_NAME)}


def _round_record(k: int, seed: int, rolled: Pack, learner: LearnedPolicy) -> dict[str, Any]:
    """What round k's roll-in says: how often the learner did what the expert would, and how it fared."""
    steps = rolled.steps(columns=["action", "expert_action"])
    agreed = pc.sum(pc.equal(steps.column("action"), steps.column("expert_action"))).as_py() or 0
    final = rolled.episodes(columns=["final_accuracy"]).column("final_accuracy").to_numpy()
    return {"round": k, "rng_seed": seed, **_pack_ref(rolled), "behaviour_policy_sha256": learner.weights_sha256,
            "steps": steps.num_rows, "episodes": len(final),
            "expert_agreement": agreed / steps.num_rows if steps.num_rows else None,
            "mean_final_accuracy": float(np.mean(final)) if len(final) else None}


def _publish(policy: LearnedPolicy, out: Path) -> None:
    """Save beside the work folder: the two files moved into `out`, policy.json last (it marks a policy)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        policy.save(staging / "policy")
        for name in (WEIGHTS_FILE, POLICY_FILE):
            (staging / "policy" / name).rename(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
