"""A policy learned from a pack: a network over named features, saved with everything needed to reuse it.

    policy = LearnedPolicy.load("runs/policy").for_episode()
    policy.check_features(pack.feature_names())   # refuses data that lacks any trained feature
    decision = policy.act(row, mask, rng)          # drives the environment like the heuristic

A saved policy is a directory: `weights.pt` (the state dict, loaded with `weights_only=True`) and
`policy.json` (format, the exact ordered feature names, per-feature centre and scale, the action
vocabulary, the network's shape (with `model` for the GRU; none means the MLP), the target (which
says how the outputs are read: logits, or advantages over WAIT), the weights' sha256, provenance
and evaluation). Features are
looked up by name, never by position, and a missing feature is an error: the first system silently
fed zeros for telemetry it did not have, which made its comparison of feature sets meaningless.

Inputs are standardised with the training pack's train-split statistics, a null lands on the mean
(0 after standardising), and non-finite values and outliers are clipped to +-CLIP, so one diverged
episode's Inf cannot saturate the network. The same `prepare` runs in training and in acting.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipelines.environment.actions import ACTION_NAMES, Action
from pipelines.policies.heuristic import Decision
from pipelines.policies.networks import MODELS, PolicyNet, SequenceNet, build_network, network_parameters
from telemetry import EsperError, read_json
from telemetry.packs import file_sha256

FORMAT = "esper-policy/1"
MAX_POLICY_BYTES = 64 << 20  # names, centre and scale of a few thousand features, and the training report
MAX_PARAMETERS = 50_000_000  # 200 MB of float32 weights, 800 MB with AdamW's moments and the gradients
MAX_LAYERS = 64
POLICY_FILE, WEIGHTS_FILE = "policy.json", "weights.pt"
CLIP = 10.0
# What a policy's outputs mean, by the target it was trained on: logits of the action to take
# (heuristic, oracle, expert), or each action's advantage over WAIT (advantage; WAIT's is 0 by definition).
TARGETS = ("heuristic", "oracle", "advantage", "expert")
ADVANTAGE = "advantage"
WAIT = "WAIT"

__all__ = ["MODELS", "TARGETS", "LearnedPolicy", "PolicyError", "PolicyNet", "SequenceNet", "network_parameters",
           "outputs", "prepare"]


class PolicyError(EsperError):
    """A saved policy that cannot be loaded, or data it cannot be applied to."""


def outputs(net: PolicyNet | SequenceNet, features: torch.Tensor, mask: torch.Tensor | None,
            wait_index: int | None) -> torch.Tensor:
    """The network's outputs as a policy reads them: WAIT's pinned at 0 when they are advantages over
    WAIT (`wait_index`), invalid actions -inf. Training and acting both go through here."""
    raw = _pinned(net(features), wait_index)
    return raw if mask is None else raw.masked_fill(~mask, float("-inf"))


def _pinned(raw: torch.Tensor, wait_index: int | None) -> torch.Tensor:
    return raw if wait_index is None else raw.index_fill(-1, torch.tensor([wait_index]), 0.0)


def prepare(features: torch.Tensor) -> torch.Tensor:
    """Standardised features made safe for the network: NaN -> 0, everything clipped to +-CLIP."""
    return torch.nan_to_num(features, nan=0.0).clamp_(-CLIP, CLIP)  # nan_to_num copies: the input is kept


@dataclass
class LearnedPolicy:
    """A trained policy network with everything needed to apply it to live feature rows.

    It keeps the exact ordered feature names it was trained on and their centre and scale (the
    train split's quick stats), so a row is standardised exactly as its training data was; data
    that lacks one of its features is refused, never filled with zeros.

    Args:
        net: the network (`PolicyNet` or `SequenceNet`), one output per action of `actions`: logits,
            or advantages over WAIT when meta's target is "advantage".
        feature_names: input features, in the network's input order.
        centre, scale: per-feature standardisation.
        actions: the action vocabulary of the logits.
        meta: training target, selection, provenance and evaluation (saved in policy.json).

    Example:

        policy = LearnedPolicy.load("models/minimal-oracle")
        policy.check_features(tracker.schema.names, "this run")
        decision = policy.act(row, mask, random.Random(0))    # greedy, mu = 1
    """

    net: PolicyNet | SequenceNet
    feature_names: list[str]
    centre: np.ndarray
    scale: np.ndarray
    actions: list[str] = field(default_factory=lambda: list(ACTION_NAMES))
    meta: dict[str, Any] = field(default_factory=dict)  # target, selection, provenance, evaluation
    name: str = "learned"
    weights_sha256: str | None = None  # of weights.pt as saved; None until saved or loaded
    _hidden: torch.Tensor | None = field(default=None, repr=False, compare=False)  # the GRU's, within an episode

    # ---- applying --------------------------------------------------------------------------------
    def check_features(self, available: Sequence[str], where: str) -> None:
        """Refuse data that lacks any feature the policy was trained on (never substitute zeros)."""
        have = set(available)
        missing = [n for n in self.feature_names if n not in have]
        if missing:
            raise PolicyError(
                f"{where} lacks {len(missing)} of the policy's {len(self.feature_names)} features "
                f"(e.g. {missing[0]!r}); the policy was trained on {self._trained_on()}: use data recorded "
                "with a profile that includes them")

    def check_actions(self, actions: Sequence[str], where: str) -> None:
        if list(actions) != self.actions:
            raise PolicyError(f"{where} has actions {list(actions)}; the policy was trained on {self.actions}")

    def _trained_on(self) -> str:
        selection = self.meta.get("features", "its features")
        profile = self.meta.get("provenance", {}).get("pack_profile")
        return f"{selection!r} of a {profile!r} pack" if profile else repr(selection)

    @property
    def model(self) -> str:
        return "gru" if isinstance(self.net, SequenceNet) else "mlp"

    @property
    def wait_index(self) -> int | None:
        """The output pinned at 0 (WAIT's) when the outputs are advantages over WAIT; else None."""
        return self.actions.index(WAIT) if self.meta.get("target") == ADVANTAGE else None

    def logits(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`features`: already standardised rows in the policy's feature order ([rows, features] for
        the MLP; [episodes, steps, features] or one episode's [steps, features] for the GRU)."""
        self.net.eval()
        with torch.no_grad():
            return outputs(self.net, prepare(features), mask, self.wait_index)

    def predict(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The chosen action index of every row (or step): the argmax of the valid outputs."""
        return self.logits(features, mask).argmax(dim=-1)

    def choose(self, table: pa.Table, where: str) -> list[int]:
        """The action the policy takes at every row of a pack's steps table, in the table's order. The
        GRU reads each episode's rows in step order (the table needs episode_id and step), as it does
        when it drives an episode; the MLP reads each row alone."""
        x = self.standardize(table, where)
        mask = torch.tensor(table.column("action_mask").to_pylist(), dtype=torch.bool).reshape(-1, len(self.actions))
        if self.model == "mlp":
            return self.predict(x, mask).tolist()
        chosen = [0] * table.num_rows
        episodes: dict[str, list[int]] = {}
        for i, episode in enumerate(table.column("episode_id").to_pylist()):
            episodes.setdefault(episode, []).append(i)
        steps = table.column("step").to_pylist()
        for rows in episodes.values():
            rows.sort(key=steps.__getitem__)
            for i, action in zip(rows, self.predict(x[rows], mask[rows]).tolist(), strict=True):
                chosen[i] = action
        return chosen

    def vector(self, row: Mapping[str, Any]) -> torch.Tensor:
        """One live feature row (name -> value) standardised as the training data was."""
        raw = np.array([_number(row.get(n)) for n in self.feature_names], dtype=np.float64)
        return self._standardized(raw[None, :])

    def standardize(self, table: pa.Table, where: str) -> torch.Tensor:
        """The policy's features from an Arrow table (a pack's steps), standardised with the policy's
        own statistics, whatever pack the rows come from; refused if any feature is missing."""
        self.check_features(table.column_names, where)
        raw = np.empty((table.num_rows, len(self.feature_names)), dtype=np.float64)
        for j, name in enumerate(self.feature_names):
            column = pc.cast(table.column(name), pa.float64())
            raw[:, j] = pc.fill_null(column, float("nan")).to_numpy(zero_copy_only=False)
        return self._standardized(raw)

    def _standardized(self, raw: np.ndarray) -> torch.Tensor:
        """Rows of raw values (NaN for null) standardised; a null lands on the mean, 0, as the pack
        reader's normalization puts it."""
        z = (raw - self.centre) / self.scale
        z[np.isnan(raw)] = 0.0
        return torch.from_numpy(z.astype(np.float32))

    def for_episode(self) -> LearnedPolicy:
        """This policy at the start of a fresh episode: the GRU's hidden state empty. Call it once per
        episode; `act` then carries the state from one decision to the next."""
        fresh = copy.copy(self)
        fresh._hidden = None
        return fresh

    def act(self, row: Mapping[str, Any], mask: Sequence[bool], rng: random.Random) -> Decision:
        """The valid action with the highest output. Deterministic, so mu(a|s) = 1 for the action taken."""
        valid = torch.tensor([bool(v) for v in mask]).unsqueeze(0)
        x = prepare(self.vector(row))
        self.net.eval()
        with torch.no_grad():
            if isinstance(self.net, SequenceNet):
                raw, self._hidden = self.net.step(x, self._hidden)
            else:
                raw = self.net(x)
            scores = _pinned(raw, self.wait_index).masked_fill(~valid, float("-inf"))[0]
        choice = int(scores.argmax())
        action = Action(choice)
        if self.wait_index is None:
            scores, what = torch.softmax(scores, dim=0), "p"
        else:
            what = "advantage"
        return Decision(
            action=action, prob=1.0, greedy=action,
            rule=f"{self.name} chose {action.name} ({what}={float(scores[choice]):.2f})",
            why_not={Action(i).name: f"{self.name} gave it {what}={float(scores[i]):.2f}"
                     for i in range(len(scores)) if bool(valid[0, i]) and i != choice},
        )

    # ---- saving ----------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write to a fresh sibling folder and rename it into place, so no half-written policy exists."""
        out = Path(directory)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise PolicyError(f"{out}: exists and is not empty; choose another --out")
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            torch.save(self.net.state_dict(), staging / WEIGHTS_FILE)
            document = {
                "format": FORMAT, "feature_names": self.feature_names,
                "centre": [float(v) for v in self.centre], "scale": [float(v) for v in self.scale],
                "actions": self.actions, "network": self.net.shape,
                "weights_sha256": file_sha256(staging / WEIGHTS_FILE), **self.meta,
            }
            (staging / POLICY_FILE).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
            self.weights_sha256 = document["weights_sha256"]
            if out.exists():
                out.rmdir()
            staging.rename(out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LearnedPolicy:
        root = Path(directory)
        document = _read_document(root)
        weights = root / WEIGHTS_FILE
        if not weights.is_file():
            raise PolicyError(f"{root}: {WEIGHTS_FILE} is missing; expected a directory written by `esper train`")
        if file_sha256(weights) != document["weights_sha256"]:
            raise PolicyError(f"{weights}: checksum differs from policy.json's weights_sha256; the file is damaged")
        shape = document["network"]
        net = build_network(shape.get("model", "mlp"), shape["inputs"], shape["actions"], shape["hidden"],
                            shape["layers"])
        try:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - any unpickling or shape error means the same thing
            raise PolicyError(f"{weights}: not the weights of a {shape} network ({str(exc).splitlines()[0]})") from None
        known = {"format", "feature_names", "centre", "scale", "actions", "network", "weights_sha256"}
        return cls(net=net, feature_names=list(document["feature_names"]),
                   centre=np.array(document["centre"], dtype=np.float64),
                   scale=np.array(document["scale"], dtype=np.float64),
                   actions=list(document["actions"]),
                   meta={k: v for k, v in document.items() if k not in known}, name=root.name,
                   weights_sha256=document["weights_sha256"])


def _read_document(root: Path) -> dict[str, Any]:
    path = root / POLICY_FILE
    if not path.is_file():
        raise PolicyError(f"{root}: not a saved policy (no {POLICY_FILE}); expected a directory written by "
                          "`esper train`")
    document = read_json(path, PolicyError, limit=MAX_POLICY_BYTES)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise PolicyError(f"{path}: format is {found!r}; expected {FORMAT!r}")
    for key, kind in (("feature_names", list), ("centre", list), ("scale", list), ("actions", list),
                      ("network", dict), ("weights_sha256", str)):
        if not isinstance(document.get(key), kind):
            raise PolicyError(f"{path}: {key!r} is missing or not a {kind.__name__}")
    n = len(document["feature_names"])
    if len(document["centre"]) != n or len(document["scale"]) != n or document["network"].get("inputs") != n:
        raise PolicyError(f"{path}: feature_names, centre, scale and network inputs disagree in length")
    for key in ("feature_names", "actions"):
        names = document[key]
        if not all(isinstance(v, str) for v in names) or len(set(names)) != len(names):
            raise PolicyError(f"{path}: {key!r} must be distinct names (strings)")
    for key in ("centre", "scale"):  # a null, string or non-finite value would silently misplace every input
        values = document[key]
        if not all(_finite(v) for v in values) or (key == "scale" and not all(v > 0 for v in values)):
            raise PolicyError(f"{path}: {key!r} must hold finite numbers{' > 0' if key == 'scale' else ''}")
    network = dict(document["network"])
    model = network.pop("model", "mlp")  # policies saved before the GRU existed name no model: an MLP
    if model not in MODELS:
        raise PolicyError(f"{path}: 'network' has model {model!r}; expected one of: {', '.join(MODELS)}")
    if set(network) != _NETWORK_KEYS or not all(type(v) is int and v > 0 for v in network.values()):
        raise PolicyError(f"{path}: 'network' must give positive integers {sorted(_NETWORK_KEYS)}, got {network}")
    target = document.get("target")
    if target is not None and target not in TARGETS:  # the outputs' meaning: read wrongly, every choice is wrong
        raise PolicyError(f"{path}: 'target' is {target!r}; expected one of: {', '.join(TARGETS)}")
    if target == ADVANTAGE and WAIT not in document["actions"]:
        raise PolicyError(f"{path}: an advantage policy's actions must include {WAIT}, whose advantage is 0")
    if network["layers"] > MAX_LAYERS or network_parameters(**network, model=model) > MAX_PARAMETERS:
        raise PolicyError(f"{path}: 'network' {network} has more than {MAX_LAYERS} layers or "
                          f"{MAX_PARAMETERS:,} parameters; expected a network written by `esper train`")
    if network["actions"] != len(document["actions"]):
        raise PolicyError(f"{path}: the network has {network['actions']} outputs for {len(document['actions'])} "
                          "actions")
    return document


_NETWORK_KEYS = {"inputs", "actions", "hidden", "layers"}


def _finite(value: Any) -> bool:
    try:
        return isinstance(value, int | float) and not isinstance(value, bool) and bool(np.isfinite(float(value)))
    except OverflowError:  # an integer beyond any float
        return False


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)
