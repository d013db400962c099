"""Every statistic in a tracker row against an independent float64 reference.

The references are computed here, from gradients captured after each backward, from outputs captured
by hooks written here, or from logits built here, with numpy in float64 and plain Python loops; the
tracker's own arithmetic is never reused.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.models import LIFECYCLE, TinyNet
from torch import nn

from telemetry.config import load_config
from telemetry.probes import activations
from telemetry.probes.gradient_reservoir import percentile_error_bound
from telemetry.seed_status import SeedStage, SeedStatus
from telemetry.tracker import DiagnosticTracker

CLASSES = 5
LAYERS = ("conv", "bn", "fc1", "fc2")  # registration order: what gradients.layers = "all" resolves to
HIST_EDGES = [10.0**k for k in range(-10, 4)]


def make_batches(n: int, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 4, 4, generator=g), torch.randint(0, CLASSES, (size,), generator=g))
            for _ in range(n)]


def layer_grads(model: nn.Module) -> dict[str, np.ndarray]:
    """Every gradient element a layer owns directly, as float64."""
    return {name: np.concatenate([p.grad.detach().double().numpy().ravel()
                                  for p in getattr(model, name).parameters(recurse=False)])
            for name in LAYERS}


def train_step(model: nn.Module, tracker: DiagnosticTracker, batches, opt) -> list[dict[str, np.ndarray]]:
    """One decision step of training; returns the gradients as they were when the tracker saw them."""
    model.train()
    captured = []
    for x, y in batches:
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        captured.append(layer_grads(model))
        tracker.train_batch(loss, logits, y)
        opt.step()
    return captured


def close(actual, expected, rel=1e-5, abs_=1e-9) -> bool:
    return actual is not None and math.isclose(actual, expected, rel_tol=rel, abs_tol=abs_)


# ---- gradients ---------------------------------------------------------------------------------

@pytest.mark.parametrize("exact", ["false", "true"])
@pytest.mark.parametrize("every_n", [1, 3])
def test_gradient_norm_std_fractions_are_step_means_of_float64_references(every_n, exact):
    """Both paths: the exact one, and the sampled default, which reads TinyNet's layers (at most 4,096
    elements each) whole in a step of at most 16 batches, so it must match exactly too."""
    torch.manual_seed(0)
    model = TinyNet()
    vanish, explode = 1e-3, 2e-2
    cfg = load_config("diagnostic", overrides=[f"gradients.vanishing_threshold={vanish}",
                                                f"gradients.exploding_threshold={explode}",
                                                f"gradients.every_n_batches={every_n}", f"gradients.exact={exact}"])
    tracker = DiagnosticTracker(model, cfg, num_classes=CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = make_batches(13)
    for batches in (data[:7], data[7:]):  # two steps of unequal length: accumulators must reset
        captured = train_step(model, tracker, batches, opt)[::every_n]
        row = tracker.end_step()
        health_bad = 0
        for name in LAYERS:
            gs = [c[name] for c in captured]
            norms = [math.sqrt(float(np.sum(g * g))) for g in gs]
            stds = [float(np.std(g)) for g in gs]
            van = [float(np.mean(np.abs(g) < vanish)) for g in gs]
            exp = [float(np.mean(np.abs(g) > explode)) for g in gs]
            assert close(row[f"grad_norm_{name}"], np.mean(norms)), name
            assert close(row[f"grad_norm_max_{name}"], max(norms)), name
            assert close(row[f"grad_std_{name}"], np.mean(stds), rel=1e-4), name
            assert close(row[f"grad_vanishing_frac_{name}"], np.mean(van), rel=1e-6, abs_=1e-7), name
            assert close(row[f"grad_exploding_frac_{name}"], np.mean(exp), rel=1e-6, abs_=1e-7), name
            health_bad += np.mean(van) > 0.5 or np.mean(exp) > 0.01
            # the step mean is not the last batch's value: the test tells "mean" from "last batch only"
            assert abs(np.mean(norms) - norms[-1]) > 1e-6 * norms[-1]
        assert row["grad_health"] == pytest.approx(1 - health_bad / len(LAYERS))
        assert row["grad_nonfinite_count"] == 0 and row["loss_nonfinite_batches"] == 0
    # the thresholds were chosen so the fractions are informative, not all 0 or all 1
    assert 0 < row["grad_vanishing_frac_fc1"] < 1 and 0 < row["grad_exploding_frac_fc1"] < 1


def test_percentiles_and_histogram_are_exact_for_layers_within_the_per_batch_sample():
    """Default sample (65,536 -> 4,096 per batch): every TinyNet layer is measured element by element."""
    torch.manual_seed(1)
    model = TinyNet()
    cfg = load_config("research")
    tracker = DiagnosticTracker(model, cfg, num_classes=CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    captured = train_step(model, tracker, make_batches(6, seed=1), opt)
    row = tracker.end_step()
    for name in LAYERS:
        pooled = np.abs(np.concatenate([c[name] for c in captured]))
        for q in cfg.gradients.percentiles:
            assert close(row[f"grad_p{q}_{name}"], float(np.quantile(pooled, q / 100)), rel=1e-4), (name, q)
        bins = np.searchsorted(HIST_EDGES, pooled, side="right")  # bin i holds [edge[i-1], edge[i])
        shares = np.bincount(bins, minlength=len(HIST_EDGES) + 1) / pooled.size
        got = [row[f"grad_hist_{name}_{i:02d}"] for i in range(len(HIST_EDGES) + 1)]
        np.testing.assert_allclose(got, shares, atol=1e-6, err_msg=name)
        assert sum(got) == pytest.approx(1.0)
    # the histogram is not degenerate: several bins are populated somewhere
    assert sum(row[f"grad_hist_fc1_{i:02d}"] > 0 for i in range(len(HIST_EDGES) + 1)) >= 3


def test_percentile_error_bound_is_the_stated_dkw_bound():
    assert percentile_error_bound(65536) == pytest.approx(100 * math.sqrt(math.log(2e6) / (2 * 65536)))
    assert percentile_error_bound(65536) == pytest.approx(1.05, abs=0.01)
    assert percentile_error_bound(1024) > percentile_error_bound(4096)


def scaled_train_step(model, tracker, batches, opt, scales):
    """Like train_step, with batch b's loss multiplied by scales[b] before backward."""
    captured = []
    for (x, y), scale in zip(batches, scales, strict=True):
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        (loss * scale).backward()
        captured.append(layer_grads(model))
        tracker.train_batch(loss, logits, y)
        opt.step()
    return captured


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_batches", [12, 40])
def test_sampled_percentiles_lie_within_the_dkw_bound_of_the_true_percentiles(n_batches, seed):
    """sample_size 1,024 -> 64 elements per batch: conv, fc1 and fc2 are larger and so sampled.

    The step's pooled |g| is made hard to sample: fc1's rows differ in scale by four orders of
    magnitude (a sampler that favours some positions is caught) and so do the batches (a sampler that
    keeps whole batches, or favours early or late ones, is caught). The estimate must lie between the
    true (q - e)-th and (q + e)-th percentiles with e = percentile_error_bound(n), n the pooled sample.
    """
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():
        model.fc2.weight.mul_(torch.logspace(-2, 2, 40))
    cfg = load_config("research", overrides=["gradients.sample_size=1024"])
    tracker = DiagnosticTracker(model, cfg, num_classes=CLASSES, rng_seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # fixed weights: the batches alone set the scales
    scales = np.logspace(0, 4, n_batches)[np.random.default_rng(seed).permutation(n_batches)]
    captured = scaled_train_step(model, tracker, make_batches(n_batches, seed=seed), opt, scales)
    row = tracker.end_step()
    per_batch = cfg.gradients.sample_size // 16
    e = percentile_error_bound(min(n_batches, 16) * per_batch)
    sampled = [n for n in LAYERS if captured[0][n].size > per_batch]
    assert sampled == ["conv", "fc1", "fc2"]
    for name in sampled:
        pooled = np.abs(np.concatenate([c[name] for c in captured]))
        for q in cfg.gradients.percentiles:
            lo = np.quantile(pooled, max(q - e, 0) / 100)
            hi = np.quantile(pooled, min(q + e, 100) / 100)
            est = row[f"grad_p{q}_{name}"]
            assert lo * (1 - 1e-6) <= est <= hi * (1 + 1e-6), (name, q, lo, est, hi)
    if n_batches <= 16:  # bn (8 elements) fits a block: exact even beside sampled layers
        pooled = np.abs(np.concatenate([c["bn"] for c in captured]))
        for q in cfg.gradients.percentiles:
            assert close(row[f"grad_p{q}_bn"], float(np.quantile(pooled, q / 100)), rel=1e-4), q


# ---- per-class -------------------------------------------------------------------------------

def plain_per_class(batches):
    """Per-sample Python loop: counts, correct, loss sums and the confusion matrix, in float64."""
    n = [0] * CLASSES
    correct = [0] * CLASSES
    loss = [0.0] * CLASSES
    conf = [[0] * CLASSES for _ in range(CLASSES)]
    for logits, targets in batches:
        for row, t in zip(logits.double().tolist(), targets.tolist(), strict=True):
            pred = max(range(CLASSES), key=lambda k: row[k])
            m = max(row)
            lse = m + math.log(sum(math.exp(v - m) for v in row))
            n[t] += 1
            correct[t] += pred == t
            loss[t] += lse - row[t]
            conf[t][pred] += 1
    return n, correct, loss, conf


def test_per_class_accuracy_loss_and_confusion_match_a_per_sample_reference():
    model = TinyNet()
    tracker = DiagnosticTracker(model, load_config("research"), num_classes=CLASSES)
    g = torch.Generator().manual_seed(4)
    for step in range(2):
        # class 4 never occurs as a target (but may be predicted); batch sizes differ
        batches = [(torch.randn(b, CLASSES, generator=g) * 2, torch.randint(0, 4, (b,), generator=g))
                   for b in (7, 5, 11 + step)]
        with torch.no_grad(), tracker.validating():
            for logits, y in batches:
                tracker.val_batch(logits, y)
        row = tracker.end_step()
        n, correct, loss, conf = plain_per_class(batches)
        accs = []
        for k in range(CLASSES):
            if n[k] == 0:
                assert row[f"val_acc_class_{k}"] is None and row[f"val_loss_class_{k}"] is None
                assert all(row[f"confusion_{k}_{p}"] is None for p in range(CLASSES))
                continue
            accs.append(100.0 * correct[k] / n[k])
            assert close(row[f"val_acc_class_{k}"], accs[-1], rel=1e-12)
            assert close(row[f"val_loss_class_{k}"], loss[k] / n[k], rel=1e-6)
            for p in range(CLASSES):
                assert close(row[f"confusion_{k}_{p}"], conf[k][p] / n[k], rel=1e-12), (k, p)
        assert close(row["val_acc_class_std"], float(np.std(accs)), rel=1e-9)
        total = sum(n)
        assert close(row["val_accuracy"], 100.0 * sum(correct) / total, rel=1e-12)
        assert close(row["val_loss"], sum(loss) / total, rel=1e-6)
        assert sum(conf[k][4] for k in range(CLASSES)) > 0  # class 4 predicted: the column is exercised


def test_per_class_ignores_targets_outside_the_classes():
    """`ignore_index` targets (-100) have zero loss in cross-entropy and belong to no class."""
    tracker = DiagnosticTracker(TinyNet(), load_config("research"), num_classes=CLASSES)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(12, CLASSES, generator=g)
    y = torch.randint(0, CLASSES, (12,), generator=g)
    y[::3] = -100
    with torch.no_grad(), tracker.validating():
        tracker.val_batch(logits, y)
    row = tracker.end_step()
    kept = y != -100
    n, correct, loss, conf = plain_per_class([(logits[kept], y[kept])])
    for k in range(CLASSES):
        if n[k]:
            assert close(row[f"val_acc_class_{k}"], 100.0 * correct[k] / n[k], rel=1e-12)
            assert close(row[f"val_loss_class_{k}"], loss[k] / n[k], rel=1e-6)
            assert all(close(row[f"confusion_{k}_{p}"], conf[k][p] / n[k], rel=1e-12) for p in range(CLASSES))


# ---- weight norms and activations --------------------------------------------------------------

def test_weight_norms_match_float64_norms_at_the_end_of_the_step():
    torch.manual_seed(5)
    model = TinyNet()
    tracker = DiagnosticTracker(model, load_config("research"), num_classes=CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for batches in (make_batches(3, seed=5), make_batches(2, seed=6)):
        train_step(model, tracker, batches, opt)
        row = tracker.end_step()
        for name in LAYERS:
            w = np.concatenate([p.detach().double().numpy().ravel()
                                for p in getattr(model, name).parameters(recurse=False)])
            assert close(row[f"weight_norm_{name}"], float(np.sqrt(np.sum(w * w))), rel=1e-6), name


@pytest.mark.parametrize("exact_below", [1 << 24, 7, 1])  # default; batch halves; one sample, integer sum
def test_activation_statistics_match_own_hooks_on_the_validation_pass_only(monkeypatch, exact_below):
    """Counts are float32 sums, exact below 2**24 per channel: lowering that limit forces the
    halving of the batch and the integer fallback, which must count exactly the same."""
    monkeypatch.setattr(activations, "_EXACT_FLOAT32", exact_below)
    torch.manual_seed(6)
    model = TinyNet()
    with torch.no_grad():  # dead units by construction: 2 of 4 conv channels, 10 of 40 fc1 units
        model.conv.bias[:2] = -100.0
        model.fc1.bias[:10] = -50.0
    tracker = DiagnosticTracker(model, load_config("research"), num_classes=CLASSES)
    recorded: dict[str, list[np.ndarray]] = {name: [] for name in LAYERS}
    recording = False

    def hook(name):
        def fn(module, inputs, output):
            if recording:
                recorded[name].append(output.detach().double().numpy())
        return fn

    handles = [getattr(model, name).register_forward_hook(hook(name)) for name in LAYERS]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train_step(model, tracker, make_batches(3, seed=7), opt)  # training outputs must not be counted
    model.eval()
    recording = True
    with torch.no_grad(), tracker.validating():
        for x, y in make_batches(3, size=6, seed=8):
            tracker.val_batch(model(x), y, inputs=x)
    recording = False
    row = tracker.end_step()
    for h in handles:
        h.remove()
    for name in LAYERS:
        outs = recorded[name]
        flat = np.concatenate([o.ravel() for o in outs])
        channels = outs[0].shape[1]
        positive = sum(np.moveaxis(o, 1, 0).reshape(channels, -1).__gt__(0).sum(1) for o in outs)
        per_channel = flat.size / channels
        dead = float(np.mean(positive / per_channel < 0.01))
        assert close(row[f"act_mean_{name}"], float(flat.mean()), rel=1e-5, abs_=1e-6), name
        assert close(row[f"act_std_{name}"], float(flat.std()), rel=1e-5, abs_=1e-6), name
        assert close(row[f"act_zero_frac_{name}"], float(np.mean(flat <= 0)), rel=1e-12), name
        assert close(row[f"act_dead_unit_frac_{name}"], dead, rel=1e-12), name
    assert row["act_dead_unit_frac_conv"] == pytest.approx(0.5)
    assert row["act_dead_unit_frac_fc1"] >= 0.25


# ---- base block and history extension ------------------------------------------------------------

def synthetic_logits(targets: torch.Tensor, correct: int, scale: float, g: torch.Generator) -> torch.Tensor:
    """Logits whose argmax is the target for the first `correct` samples and wrong for the rest."""
    logits = torch.randn(len(targets), CLASSES, generator=g) * scale
    pred = targets.clone()
    pred[correct:] = (targets[correct:] + 1) % CLASSES
    logits[torch.arange(len(targets)), pred] = logits.max(1).values + 0.5
    return logits


def ce64(logits: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    z = logits.double().numpy()
    m = z.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(1))
    return lse - z[np.arange(len(z)), targets.numpy()]


def test_base_features_and_history_extension_against_plain_references():
    val_accs = [50.0, 60.0, 60.25, 60.75, 61.0, 55.0, 55.25, 90.0, 90.0]  # gains: 10 .25 .5 .25 -6 .25 ...
    scales = [1.0, 3.0, 0.5, 2.0, 0.3, 4.0, 1.5, 0.2, 2.5]  # val loss rises and falls: bests must track
    val_sizes, train_sizes = (150, 130, 120), (3, 9, 5, 1)
    model = nn.Linear(1, CLASSES)  # never run; the base block reads losses and logits only
    tracker = DiagnosticTracker(model, load_config("minimal", overrides=["history_length=8"]),
                                num_classes=CLASSES)
    g = torch.Generator().manual_seed(9)
    val_loss_hist: list[float] = []
    val_acc_hist: list[float] = []
    plateau, steps, plateaus = 0, 0, []
    seed_status = SeedStatus(has_active_seed=True, stage=SeedStage.BLENDING, epochs_in_stage=2, alpha=0.25,
                             improvement=1.5, available_slots=0)
    for epoch, (acc, scale) in enumerate(zip(val_accs, scales, strict=True)):
        train_losses, train_correct = [], 0
        for b in train_sizes:
            y = torch.randint(0, CLASSES, (b,), generator=g)
            k = int(torch.randint(0, b + 1, (1,), generator=g))
            logits = synthetic_logits(y, k, 1.0 + epoch, g)
            tracker.train_batch(F.cross_entropy(logits, y), logits, y)
            train_losses.append(ce64(logits, y))
            train_correct += k
            steps += 1
        n_val = sum(val_sizes)
        correct = round(acc / 100 * n_val)
        y = torch.randint(0, CLASSES, (n_val,), generator=g)
        logits = synthetic_logits(y, correct, scale, g)
        perm = torch.randperm(n_val, generator=g)
        logits, y = logits[perm], y[perm]
        with torch.no_grad(), tracker.validating():
            start = 0
            for b in val_sizes:
                tracker.val_batch(logits[start:start + b], y[start:start + b])
                start += b
        seed = seed_status if epoch == 4 else None
        row = tracker.end_step(epoch=epoch + 10, seed=seed)

        val_loss = float(ce64(logits, y).mean())
        val_acc = 100.0 * correct / n_val
        assert val_acc == acc
        all_train = np.concatenate(train_losses)
        assert abs(all_train.mean() - train_losses[-1].mean()) > 1e-3  # epoch mean != last batch
        if val_acc_hist:
            plateau = plateau + 1 if val_acc - val_acc_hist[-1] < 0.5 else 0
        prev_loss = val_loss_hist[-1] if val_loss_hist else None
        prev_acc = val_acc_hist[-1] if val_acc_hist else None
        val_loss_hist.append(val_loss)
        val_acc_hist.append(val_acc)

        assert row["epoch"] == epoch + 10
        assert row["global_step"] == steps
        assert close(row["train_loss"], float(all_train.mean()), rel=1e-6)
        assert close(row["train_accuracy"], 100.0 * train_correct / sum(train_sizes), rel=1e-12)
        assert close(row["val_loss"], val_loss, rel=1e-6)
        assert close(row["val_accuracy"], val_acc, rel=1e-12)
        if prev_loss is None:
            assert row["loss_delta"] is None and row["accuracy_delta"] is None
        else:
            assert close(row["loss_delta"], prev_loss - val_loss, rel=1e-5, abs_=1e-6)
            assert close(row["accuracy_delta"], val_acc - prev_acc, rel=1e-9)
        assert row["plateau_epochs"] == plateau
        plateaus.append(plateau)
        assert close(row["best_val_accuracy"], max(val_acc_hist), rel=1e-12)
        assert close(row["best_val_loss"], min(val_loss_hist), rel=1e-6)
        for lag in range(8):
            want_loss = val_loss_hist[-1 - lag] if lag < len(val_loss_hist) else None
            want_acc = val_acc_hist[-1 - lag] if lag < len(val_acc_hist) else None
            for key, want in ((f"val_loss_lag{lag}", want_loss), (f"val_accuracy_lag{lag}", want_acc)):
                assert (row[key] is None) if want is None else close(row[key], want, rel=1e-6), (epoch, key)
        expected_seed = seed or SeedStatus()
        assert row["has_active_seed"] == int(expected_seed.has_active_seed)
        assert row["seed_stage"] == int(expected_seed.stage)
        assert row["seed_epochs_in_stage"] == expected_seed.epochs_in_stage
        assert row["seed_alpha"] == expected_seed.alpha
        assert row["seed_improvement"] == expected_seed.improvement
        assert row["available_slots"] == expected_seed.available_slots
    # the sequence exercised every branch: a gain of exactly 0.5 resets, a plateau of 3, a best loss
    # that later losses did not beat
    assert plateaus == [0, 0, 1, 0, 1, 2, 3, 0, 1]
    assert any(min(val_loss_hist[: i + 1]) != v for i, v in enumerate(val_loss_hist))
    assert list(tracker.schema.names[27 + len(LIFECYCLE):]) == [f"val_loss_lag{k}" for k in (7, 6, 5)] + [
        f"val_accuracy_lag{k}" for k in (7, 6, 5)]
