"""A policy learned from a pack: an MLP over named features, saved with everything needed to reuse it.

    policy = LearnedPolicy.load("runs/policy")
    policy.check_features(pack.feature_names())   # refuses data that lacks any trained feature
    decision = policy.act(row, mask, rng)          # drives the environment like the heuristic

A saved policy is a directory: `weights.pt` (the state dict, loaded with `weights_only=True`) and
`policy.json` (format, the exact ordered feature names, per-feature centre and scale, the action
vocabulary, the network's shape, the weights' sha256, provenance and evaluation). Features are
looked up by name, never by position, and a missing feature is an error: the first system silently
fed zeros for telemetry it did not have, which made its comparison of feature sets meaningless.

Inputs are standardised with the training pack's train-split statistics, a null lands on the mean
(0 after standardising), and non-finite values and outliers are clipped to +-CLIP, so one diverged
episode's Inf cannot saturate the network. The same `prepare` runs in training and in acting.
"""

from __future__ import annotations

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
from torch import nn

from pipelines.environment.actions import ACTION_NAMES, Action
from pipelines.policies.heuristic import Decision
from telemetry import EsperError, read_json
from telemetry.packs import file_sha256

FORMAT = "esper-policy/1"
MAX_POLICY_BYTES = 64 << 20  # names, centre and scale of a few thousand features, and the training report
MAX_PARAMETERS = 50_000_000  # 200 MB of float32 weights, 800 MB with AdamW's moments and the gradients
MAX_LAYERS = 64
POLICY_FILE, WEIGHTS_FILE = "policy.json", "weights.pt"
CLIP = 10.0


class PolicyError(EsperError):
    """A saved policy that cannot be loaded, or data it cannot be applied to."""


class PolicyNet(nn.Module):
    """`layers` hidden ReLU layers of width `hidden`, one logit per action."""

    def __init__(self, inputs: int, actions: int, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        sizes = [inputs] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:], strict=False):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*blocks, nn.Linear(sizes[-1], actions))
        self.shape = {"inputs": inputs, "actions": actions, "hidden": hidden, "layers": layers}

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; invalid actions (mask False) get -inf so they are never chosen nor trained toward."""
        logits = self.body(x)
        return logits if mask is None else logits.masked_fill(~mask, float("-inf"))


def network_parameters(inputs: int, actions: int, hidden: int, layers: int) -> int:
    """Weights and biases of `PolicyNet(inputs, actions, hidden, layers)`, counted before it is built."""
    sizes = [inputs] + [hidden] * layers + [actions]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))


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
        net: the network (`PolicyNet`), logits over `actions`.
        feature_names: input features, in the network's input order.
        centre, scale: per-feature standardisation.
        actions: the action vocabulary of the logits.
        meta: training target, selection, provenance and evaluation (saved in policy.json).

    Example:

        policy = LearnedPolicy.load("models/minimal-oracle")
        policy.check_features(tracker.schema.names, "this run")
        decision = policy.act(row, mask, random.Random(0))    # greedy, mu = 1
    """

    net: PolicyNet
    feature_names: list[str]
    centre: np.ndarray
    scale: np.ndarray
    actions: list[str] = field(default_factory=lambda: list(ACTION_NAMES))
    meta: dict[str, Any] = field(default_factory=dict)  # target, selection, provenance, evaluation
    name: str = "learned"
    weights_sha256: str | None = None  # of weights.pt as saved; None until saved or loaded

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

    def logits(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`features`: already standardised rows in the policy's feature order."""
        self.net.eval()
        with torch.no_grad():
            return self.net(prepare(features), mask)

    def predict(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(features, mask).argmax(dim=1)

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

    def act(self, row: Mapping[str, Any], mask: Sequence[bool], rng: random.Random) -> Decision:
        """The most probable valid action. Deterministic, so mu(a|s) = 1 for the action taken."""
        valid = torch.tensor([bool(v) for v in mask]).unsqueeze(0)
        probs = torch.softmax(self.logits(self.vector(row), valid), dim=1)[0]
        choice = int(probs.argmax())
        action = Action(choice)
        return Decision(
            action=action, prob=1.0, greedy=action,
            rule=f"{self.name} chose {action.name} (p={float(probs[choice]):.2f})",
            why_not={Action(i).name: f"{self.name} gave it p={float(probs[i]):.2f}"
                     for i in range(len(probs)) if bool(valid[0, i]) and i != choice},
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
        net = PolicyNet(**shape)
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
    network = document["network"]
    if set(network) != _NETWORK_KEYS or not all(type(v) is int and v > 0 for v in network.values()):
        raise PolicyError(f"{path}: 'network' must give positive integers {sorted(_NETWORK_KEYS)}, got {network}")
    if network["layers"] > MAX_LAYERS or network_parameters(**network) > MAX_PARAMETERS:
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
