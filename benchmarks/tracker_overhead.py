"""Tracker overhead per profile and host: tracked epoch time over untracked epoch time, interleaved.

Hosts (benchmarks/hosts.py): the reference CNN of REFERENCE.md (3x32x32, batch 128, SGD with
momentum), a CIFAR ResNet-18 (11.2M parameters) and a small GPT (6 blocks, width 384, sequence
256). Each repetition times one epoch of every variant (untracked, then each profile) in a rotating
order, so drift in machine load hits all of them alike; a variant's ratio is the median over
repetitions of its epoch time over the untracked epoch of the same repetition. An epoch is
`--batches` training batches plus `--val-batches` validation batches and the step's end. A second
untracked model is timed the same way (`untracked_control`): its ratio shows the benchmark's own
bias and noise, an A/A comparison the profiles' ratios should be read against.

Memory (benchmarks/memory.py), one extra epoch per variant, untimed: `peak_extra_mb` is the epoch's
peak allocation above the untracked epoch's; `tracker_peak_mb` the largest transient of a single
tracker call (on a GPU: torch.cuda.max_memory_allocated; on a CPU: the profiler's allocation events).
The tracker's own time per training batch and per step (validation calls and end_step) is printed
too: with few batches per epoch the per-step work (sharpness forwards) dominates the epoch ratio,
while in a real epoch of hundreds of batches the per-batch cost does.

    python benchmarks/tracker_overhead.py                    # every host, prints tables
    python benchmarks/tracker_overhead.py --quick            # a few minutes on 2 CPU cores
    python benchmarks/tracker_overhead.py --host reference --device cuda --json
"""

from __future__ import annotations

import json
import platform
import statistics
import time

import memory
import torch
import torch.nn.functional as F
from hosts import HOSTS, Host, parse_run, run_parser

from telemetry import DiagnosticTracker, load_config, profile_names

# A second untracked model, timed like the others: its ratio is the benchmark's own bias and noise
# floor (an A/A comparison); a profile's overhead is only meaningful well above it.
CONTROL = "untracked_control"
UNTRACKED = "untracked"
PRESETS = {  # (batches, val batches, repetitions) per device and host
    "quick": {"reference": (4, 1, 3), "resnet18": (2, 1, 2), "gpt": (2, 1, 2)},
    "cpu": {"reference": (40, 8, 7), "resnet18": (12, 2, 5), "gpt": (8, 2, 5)},
    "cuda": {"reference": (200, 40, 9), "resnet18": (100, 20, 9), "gpt": (100, 20, 9)},
}


class Variant:
    """One model trained under one telemetry setting (None = untracked)."""

    def __init__(self, host: Host, profile: str | None, device: torch.device, seed: int) -> None:
        torch.manual_seed(seed)
        self.device = device
        self.model = host.build().to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.in_batches = 0.0  # seconds inside train_batch, and inside validation and end_step (CPU:
        self.in_steps = 0.0  # the tracker's own time; on a GPU only the launch side)
        self.tracker = (DiagnosticTracker(self.model, load_config(profile, overrides=host.overrides.get(profile, [])),
                                          host.num_classes) if profile else None)

    def epoch(self, train: list, val: list, reading: memory.MemoryReading | None = None) -> float:
        model, opt, tracker, device = self.model, self.opt, self.tracker, self.device
        _sync(device)
        start = time.perf_counter()
        model.train()
        for x, y in train:
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            if tracker:
                t0 = time.perf_counter()
                with memory.tracker_call(reading, device):
                    tracker.train_batch(loss, logits, y)
                self.in_batches += time.perf_counter() - t0
            opt.step()
        model.eval()
        with torch.no_grad():
            if tracker:
                t0 = time.perf_counter()
                with tracker.validating():
                    for x, y in val:
                        logits = model(x)
                        with memory.tracker_call(reading, device):
                            tracker.val_batch(logits, y, inputs=x)
                with memory.tracker_call(reading, device):
                    tracker.end_step()
                self.in_steps += time.perf_counter() - t0
            else:
                for x, y in val:
                    F.cross_entropy(model(x), y)
        _sync(device)
        return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(host: Host, batches: int, val_batches: int, reps: int, device: torch.device) -> dict[str, object]:
    train, val = host.batches(batches, device, 0), host.batches(val_batches, device, 1)
    names = [UNTRACKED, CONTROL, *profile_names()]
    variants = {name: Variant(host, None if name in (UNTRACKED, CONTROL) else name, device, seed=0)
                for name in names}
    for v in variants.values():  # warm-up: allocator, kernels, lazy state
        v.epoch(train[:2], val[:1])
    times: dict[str, list[float]] = {name: [] for name in names}
    for v in variants.values():
        v.in_batches = v.in_steps = 0.0
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            times[name].append(variants[name].epoch(train, val))
    base = times[UNTRACKED]
    tracked = [CONTROL, *profile_names()]
    inside = {n: (variants[n].in_batches, variants[n].in_steps) for n in names}  # before the memory epochs
    readings = {name: memory.measure(lambda r, v=variants[name]: v.epoch(train, val, r), device) for name in names}
    mb = 1 << 20
    return {
        "ratios": {name: statistics.median(t / b for t, b in zip(times[name], base, strict=True)) for name in tracked},
        "untracked_epoch_s": statistics.median(base),
        "epoch_s": {name: statistics.median(times[name]) for name in tracked},
        "peak_extra_mb": {name: (readings[name].epoch_peak - readings[UNTRACKED].epoch_peak) / mb for name in tracked},
        "tracker_peak_mb": {name: readings[name].tracker_peak / mb for name in profile_names()},
        # the tracker's own time: per training batch, and per step (validation calls and end_step)
        "tracker_ms_per_batch": {n: 1e3 * inside[n][0] / (reps * batches) for n in profile_names()},
        "tracker_ms_per_step": {n: 1e3 * inside[n][1] / reps for n in profile_names()},
        "untracked_ms_per_batch": 1e3 * statistics.median(base) / batches,
        "parameters": sum(p.numel() for p in variants[UNTRACKED].model.parameters()),
        "batch": host.batch[device.type], "batches": batches, "val_batches": val_batches, "reps": reps,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main() -> None:
    args, device = parse_run(run_parser(__doc__.splitlines()[0], (*HOSTS, "all"), "all"))
    preset = PRESETS["quick" if args.quick else args.device]
    hosts = list(HOSTS) if args.host == "all" else [args.host]
    result: dict[str, object] = {"device": device_name(device), "torch": torch.__version__, "hosts": {}}
    for name in hosts:
        b, v, r = preset[name]
        result["hosts"][name] = measure(HOSTS[name], args.batches or b, args.val_batches or v, args.reps or r, device)
    if args.json:
        print(json.dumps(result))
        return
    print(f"device: {result['device']}")
    for name, res in result["hosts"].items():
        print(f"\n{name}: {res['parameters']:,} parameters; untracked epoch {res['untracked_epoch_s']:.3f} s "
              f"({res['batches']} train + {res['val_batches']} val batches of {res['batch']}; {res['reps']} reps)")
        print(f"{'variant':<18} {'epoch s':>9} {'ratio':>7} {'extra MB':>9} {'call MB':>8} {'ms/batch':>9} "
              f"{'ms/step':>8}")
        for variant in [CONTROL, *profile_names()]:
            tracked = variant in res["tracker_peak_mb"]
            extra = (f" {res['tracker_peak_mb'][variant]:8.1f} {res['tracker_ms_per_batch'][variant]:9.2f} "
                     f"{res['tracker_ms_per_step'][variant]:8.1f}") if tracked else ""
            print(f"{variant:<18} {res['epoch_s'][variant]:>9.3f} {res['ratios'][variant]:>7.3f} "
                  f"{res['peak_extra_mb'][variant]:>9.1f}{extra}")


if __name__ == "__main__":
    main()
