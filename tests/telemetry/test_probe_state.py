"""Probes declare their state: generic reset, state dicts that branch a run exactly, user probes."""

from __future__ import annotations

import copy
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from support.models import ReferenceCNN, TinyNet

from telemetry import DiagnosticTracker, FeatureSpec, PackWriter, Probe, ProbeContext, load_config, open_pack
from telemetry.errors import SchemaError
from telemetry.probes.registry import GROUP_ORDER

CLASSES = 5


def batches(n: int, seed: int, side: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, side, side, generator=g), torch.randint(0, CLASSES, (8,), generator=g))
            for _ in range(n)]


def step(model: torch.nn.Module, tracker: DiagnosticTracker, opt: torch.optim.Optimizer,
         data: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """One decision step: every batch but the last trains, the last validates."""
    for x, y in data[:-1]:
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        tracker.train_batch(loss, logits, y)
        opt.step()
    with torch.no_grad(), tracker.validating():
        x, y = data[-1]
        tracker.val_batch(model(x), y, inputs=x)
    return tracker.end_step()


def same_rows(a: list[dict], b: list[dict]) -> bool:
    """Equal, NaN equal to NaN (a diverging statistic must diverge the same way)."""
    def eq(u, v):
        return u == v or (isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v))
    return all(ra.keys() == rb.keys() and all(eq(ra[k], rb[k]) for k in ra) for ra, rb in zip(a, b, strict=True))


@pytest.mark.parametrize("profile", ["minimal", "diagnostic", "research"])
def test_a_branch_restored_from_state_dicts_replays_the_run_exactly(profile: str):
    torch.manual_seed(0)
    model = TinyNet(CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tracker = DiagnosticTracker(model, load_config(profile), num_classes=CLASSES, rng_seed=7)
    # 20 batches per step: the gradient sample's replacement phase (batch > 16) draws from both generators
    data = [batches(21, seed=s) for s in range(5)]
    for d in data[:2]:
        step(model, tracker, opt, d)
    saved = (tracker.state_dict(), copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    first = [step(model, tracker, opt, d) for d in data[2:]]

    for d in data[:2]:  # wander off: other data, more steps
        step(model, tracker, opt, d)
    tracker.load_state_dict(saved[0])
    model.load_state_dict(saved[1])
    opt.load_state_dict(saved[2])
    replay = [step(model, tracker, opt, d) for d in data[2:]]
    assert same_rows(first, replay)
    tracker.load_state_dict(saved[0])  # a state can be loaded again: it was copied, not adopted
    assert tracker.state_dict()["epoch"] == 2


def test_state_dicts_are_value_copies_and_reset_keeps_the_run_history():
    model = TinyNet(CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = DiagnosticTracker(model, load_config("diagnostic"), num_classes=CLASSES)
    step(model, tracker, opt, batches(3, seed=1))
    base = next(p for p in tracker.probes if p.group == "base")
    grads = next(p for p in tracker.probes if p.group == "gradients")
    saved = base.state_dict()
    assert saved["val_losses"] and saved["sums"].abs().sum() == 0  # history kept, accumulators reset
    base.val_losses.append(123.0)
    assert saved["val_losses"][-1] != 123.0
    grads.sums += 1.0
    grads.reset()
    assert torch.equal(grads.sums, torch.zeros_like(grads.sums)) and grads.batches == [0] * len(grads.keys)
    with pytest.raises(ValueError, match="missing"):
        base.load_state_dict({"sums": saved["sums"]})


def test_to_moves_every_declared_tensor():
    tracker = DiagnosticTracker(TinyNet(CLASSES), load_config("research"), num_classes=CLASSES)
    for probe in tracker.probes:
        probe.to("meta")
        tensors = [v for v in probe.state_dict().values() if isinstance(v, torch.Tensor)]
        assert all(t.device.type == "meta" for t in tensors)
        probe.reset()  # defaults moved too
        assert all(t.device.type == "meta" for t in probe.state_dict().values() if isinstance(t, torch.Tensor))


class LossScale(Probe):
    """The documented user-probe example: the largest training loss of the step."""

    group = "loss_scale"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self.add_state("peak", torch.full((), -math.inf, dtype=torch.float64))

    def features(self) -> list[FeatureSpec]:
        return [self.spec("loss_peak", "largest training loss of the step", "nats")]

    def train_batch(self, loss, logits, targets, batch):
        self.peak = torch.maximum(self.peak, loss.detach().double())

    def payload(self, probe_batch):
        return [self.peak]

    def finish(self, host, info):
        return {"loss_peak": float(host[0])}


def test_a_user_probe_joins_the_schema_the_rows_and_a_pack(tmp_path):
    torch.manual_seed(1)
    model = ReferenceCNN(num_classes=CLASSES, width=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    config = load_config("standard")
    tracker = DiagnosticTracker(model, config, num_classes=CLASSES, probes=[LossScale])
    assert tracker.schema.names[-1] == "loss_peak" and tracker.schema.specs[-1].group == "loss_scale"
    assert tracker.schema.names[:-1] == DiagnosticTracker(ReferenceCNN(num_classes=CLASSES, width=0.25), config,
                                                          num_classes=CLASSES).schema.names
    rows, peaks = [], []
    for s in range(3):
        data = batches(4, seed=s, side=8)
        losses = []
        for x, y in data[:-1]:
            opt.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            losses.append(float(loss.detach()))
            tracker.train_batch(loss, logits, y)
            opt.step()
        rows.append(tracker.end_step())
        peaks.append(max(losses))
    assert [r["loss_peak"] for r in rows] == pytest.approx(peaks, rel=1e-12)
    with PackWriter.create(tmp_path / "pack", config, tracker.schema, splits={"train": 1.0}) as writer:
        writer.add_episode({"episode_id": "ep-0"}, rows)
    pack = open_pack(tmp_path / "pack")
    assert pack.feature_names("loss_scale") == ["loss_peak"]
    stored = pq.read_table(pack.files("steps")[0], columns=["loss_peak"]).column(0).to_numpy()
    assert np.allclose(stored, np.float32(peaks))


def test_a_probe_whose_finish_disagrees_with_its_features_is_refused():
    class Misnamed(LossScale):
        group = "misnamed"

        def finish(self, host, info):
            return {"loss_max": float(host[0])}

    tracker = DiagnosticTracker(TinyNet(CLASSES), load_config("minimal"), num_classes=CLASSES, probes=[Misnamed])
    with pytest.raises(SchemaError, match="loss_max"):
        tracker.end_step()


def test_values_land_by_name_whatever_order_finish_returns_them():
    class Two(Probe):
        group = "two"

        def features(self):
            return [self.spec("first_value", "one"), self.spec("second_value", "two")]

        def finish(self, host, info):
            return {"second_value": 2.0, "first_value": 1.0}

    row = DiagnosticTracker(TinyNet(CLASSES), load_config("minimal"), num_classes=CLASSES,
                            probes=[Two]).end_step()
    assert list(row)[-2:] == ["first_value", "second_value"]
    assert (row["first_value"], row["second_value"]) == (1.0, 2.0)


@pytest.mark.parametrize("group", ["gradients", "base"])
def test_a_user_probe_cannot_take_a_built_in_group(group: str):
    class Clash(LossScale):
        pass

    Clash.group = group
    with pytest.raises(SchemaError, match="already taken"):
        DiagnosticTracker(TinyNet(CLASSES), load_config("minimal"), num_classes=CLASSES, probes=[Clash])


def test_the_registry_is_the_one_group_order():
    schema = DiagnosticTracker(ReferenceCNN(), load_config("research"), num_classes=10).schema
    seen = list(dict.fromkeys(spec.group for spec in schema.specs))
    assert seen == [g for g in GROUP_ORDER if g in seen] and len(seen) == len(GROUP_ORDER)
