"""Tracker overhead per profile: tracked epoch time over untracked epoch time, interleaved.

The reference host of REFERENCE.md (three conv blocks, 3x32x32 inputs, batch 128, SGD with
momentum) trains on synthetic data. Each repetition times one epoch of every variant (untracked,
then each profile) in a rotating order, so drift in machine load hits all of them alike; a variant's
ratio is the median over repetitions of its epoch time over the untracked epoch of the same
repetition. An epoch is `--batches` training batches plus a validation pass of `--val-batches`.
A second untracked model is timed the same way (`untracked_control`): its ratio shows the
benchmark's own bias and noise, an A/A comparison the profiles' ratios should be read against.

    python benchmarks/tracker_overhead.py            # full run, prints a table
    python benchmarks/tracker_overhead.py --quick    # under a minute on 2 CPU cores
    python benchmarks/tracker_overhead.py --json     # {"minimal": r, ..., "device": "..."}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from pipelines.environment.host import HostCNN
from telemetry import DiagnosticTracker, load_config, profile_names

BATCH = 128
# A second untracked model, timed like the others: its ratio is the benchmark's own bias and noise
# floor (an A/A comparison); a profile's overhead is only meaningful well above it.
CONTROL = "untracked_control"


class Variant:
    """One model trained under one telemetry setting (None = untracked)."""

    def __init__(self, profile: str | None, device: torch.device, seed: int) -> None:
        torch.manual_seed(seed)
        self.profile = profile
        self.model = HostCNN().to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.tracker = DiagnosticTracker(self.model, load_config(profile), 10) if profile else None

    def epoch(self, train: list, val: list, device: torch.device) -> float:
        model, opt, tracker = self.model, self.opt, self.tracker
        _sync(device)
        start = time.perf_counter()
        model.train()
        for x, y in train:
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            if tracker:
                tracker.train_batch(loss, logits, y)
            opt.step()
        model.eval()
        with torch.no_grad():
            if tracker:
                with tracker.validating():
                    for x, y in val:
                        tracker.val_batch(model(x), y, inputs=x)
                tracker.end_step()
            else:
                for x, y in val:
                    F.cross_entropy(model(x), y)
        _sync(device)
        return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(n: int, device: torch.device, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 3, 32, 32, generator=g).to(device), torch.randint(0, 10, (BATCH,), generator=g)
             .to(device)) for _ in range(n)]


def measure(batches: int, val_batches: int, reps: int, device: torch.device) -> dict[str, object]:
    train, val = _batches(batches, device, 0), _batches(val_batches, device, 1)
    names = [None, CONTROL, *profile_names()]
    variants = {name: Variant(None if name == CONTROL else name, device, seed=0) for name in names}
    for v in variants.values():  # warm-up: allocator, kernels, lazy state
        v.epoch(train[:2], val[:1], device)
    times: dict[str | None, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            times[name].append(variants[name].epoch(train, val, device))
    base = times[None]
    ratios = {name: statistics.median(t / b for t, b in zip(times[name], base, strict=True))
              for name in [CONTROL, *profile_names()]}
    return {
        **ratios,
        "device": _device_name(device),
        "untracked_epoch_s": statistics.median(base),
        "epoch_s": {name: statistics.median(times[name]) for name in [CONTROL, *profile_names()]},
        "batches": batches, "val_batches": val_batches, "reps": reps, "threads": torch.get_num_threads(),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute on 2 CPU cores")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, help="training batches per epoch")
    parser.add_argument("--val-batches", type=int, help="validation batches per epoch")
    parser.add_argument("--reps", type=int, help="repetitions (epochs per variant)")
    args = parser.parse_args()
    device = torch.device(args.device)
    quick = {"batches": 6, "val_batches": 2, "reps": 3}
    full = {"batches": 40, "val_batches": 8, "reps": 7} if device.type == "cpu" else \
        {"batches": 200, "val_batches": 40, "reps": 9}
    preset = quick if args.quick else full
    result = measure(args.batches or preset["batches"], args.val_batches or preset["val_batches"],
                     args.reps or preset["reps"], device)
    if args.json:
        print(json.dumps(result))
        return
    print(f"device: {result['device']}; untracked epoch {result['untracked_epoch_s']:.3f} s "
          f"({result['batches']} train + {result['val_batches']} val batches of {BATCH}; {result['reps']} reps)")
    print(f"{'profile':<18} {'epoch s':>9} {'ratio':>7}")
    for name in [CONTROL, *profile_names()]:
        print(f"{name:<18} {result['epoch_s'][name]:>9.3f} {result[name]:>7.3f}")


if __name__ == "__main__":
    main()
