"""This project's tracker against its peers, in one run, on the same host and data.

Variants: untracked (the baseline) and a second untracked model (`untracked_control`, the A/A
noise floor); esper standard / diagnostic / research; Cockpit (`cockpit-for-pytorch`) with its
`economy` and `business` configurations; `wandb.watch(model, log="all", log_freq=1)` in offline
mode; `torch-surgeon`'s Surgeon with its default rules. Each repetition times one epoch of every
variant in a rotating order; a variant's ratio is the median of its epoch time over the untracked
epoch of the same repetition. Each variant also reports how many values it records, and how often
(every optimizer step, or once per epoch), so "faster" is read against "records as much".

A peer that is not installed, or fails on this host, is reported under `unavailable` with the
reason, never left out silently. Peers are the optional extra `peers`; install them with
`scripts/install_peers.sh`, which never replaces the installed torch.

    python benchmarks/peers.py --quick           # a few minutes on 2 CPU cores
    python benchmarks/peers.py --json            # {"ratios": {"esper_standard": r, ...}, ...}
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable

import torch
from hosts import HOSTS, Host, parse_run, run_parser
from peer_variants import PEERS, Variant
from tracker_overhead import device_name

PRESETS = {"quick": (4, 1, 3), "cpu": (20, 4, 5), "cuda": (200, 40, 7)}  # batches, val batches, reps


def epoch_time(variant: Variant, train: list, val: list, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    variant.model.train()
    for x, y in train:
        variant.train_step(x, y)
    variant.model.eval()
    with torch.no_grad():
        variant.validate(val)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def build(host: Host, device: torch.device, factories: dict[str, Callable[[], Variant]],
          train: list, val: list) -> tuple[dict[str, Variant], dict[str, str]]:
    """Every variant that builds and survives a warm-up epoch; the others with the reason."""
    variants, unavailable = {}, {}
    for name, factory in factories.items():
        try:
            torch.manual_seed(0)
            variant = factory()
            epoch_time(variant, train[:2], val[:1], device)
        except Exception as exc:  # a peer that cannot run here is reported, with its own message and place
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
            message = str(exc).splitlines()[0] if str(exc) else ""
            unavailable[name] = f"{type(exc).__name__}: {message} (at {where})"[:400]
            continue
        variants[name] = variant
    return variants, unavailable


def measure(host: Host, batches: int, val_batches: int, reps: int, device: torch.device,
            workdir: str) -> dict[str, object]:
    train, val = host.batches(batches, device, 0), host.batches(val_batches, device, 1)
    factories = {name: (lambda make=make: make(host, device, workdir)) for name, make in PEERS.items()}
    variants, unavailable = build(host, device, factories, train, val)
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            times[name].append(epoch_time(variants[name], train, val, device))
    base = times["untracked"]
    measured = [n for n in names if n != "untracked"]
    result = {
        "device": device_name(device), "torch": torch.__version__, "host": host.name,
        "ratios": {n: statistics.median(t / b for t, b in zip(times[n], base, strict=True)) for n in measured},
        "untracked_epoch_s": statistics.median(base),
        "epoch_s": {n: statistics.median(times[n]) for n in measured},
        "statistics": {n: variants[n].recorded(batches) for n in measured},
        "unavailable": unavailable,
        "batch": host.batch[device.type], "batches": batches, "val_batches": val_batches, "reps": reps,
    }
    for variant in variants.values():
        variant.close()
    return result


def main() -> None:
    args, device = parse_run(run_parser(__doc__.splitlines()[0], tuple(HOSTS), "reference"))
    b, v, r = PRESETS["quick" if args.quick else args.device]
    os.environ["WANDB_MODE"] = "offline"  # wandb never reaches the network; its files go to a temp dir
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as workdir:
        result = measure(HOSTS[args.host], args.batches or b, args.val_batches or v, args.reps or r, device,
                         workdir)
    if args.json:
        print(json.dumps(result))
        return
    print(f"device: {result['device']}; host {result['host']}; untracked epoch {result['untracked_epoch_s']:.3f} s "
          f"({result['batches']} train + {result['val_batches']} val batches of {result['batch']}; "
          f"{result['reps']} reps)")
    print(f"{'variant':<20} {'epoch s':>9} {'ratio':>7}  values recorded")
    for name, ratio in result["ratios"].items():
        stats = result["statistics"][name]
        print(f"{name:<20} {result['epoch_s'][name]:>9.3f} {ratio:>7.3f}  {stats['values']:,} every {stats['every']}")
    for name, reason in result["unavailable"].items():
        print(f"{name:<20} unavailable: {reason}")


if __name__ == "__main__":
    main()
