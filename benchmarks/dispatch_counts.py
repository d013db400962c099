"""Operators the tracker dispatches per tracked training batch, per profile, on MLPs of 4 and 25 layers.

On a GPU every operator is a kernel launch (views: a dispatch without one), so this count, not a
CPU timing, is what the tracker costs per batch on a small host. Counted with a TorchDispatchMode
around `train_batch`, over the second step of 20 batches (the first builds cached layouts), the
largest count of any batch (batches after the 16th also update the gradient pool). The same
measurement is asserted, with its budget, by tests/telemetry/test_tracker_dispatch.py.

    python benchmarks/dispatch_counts.py              # sampled (default) gradient path
    python benchmarks/dispatch_counts.py --exact      # gradients.exact = true
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from telemetry import DiagnosticTracker, load_config, profile_names

BATCHES = 20


class Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def mlp(depth: int, width: int = 32) -> nn.Sequential:
    sizes = [48] + [width] * (depth - 1) + [10]
    layers: dict[str, nn.Module] = {}
    for i in range(depth):
        layers[f"fc{i}"] = nn.Linear(sizes[i], sizes[i + 1])
        if i < depth - 1:
            layers[f"relu{i}"] = nn.ReLU()
    return nn.Sequential(OrderedDict(layers))


def ops_per_batch(profile: str, depth: int, exact: bool) -> int:
    torch.manual_seed(0)
    model = mlp(depth)
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    overrides = ["gradients.exact=true"] if exact else []
    if profile == "standard":  # it names the reference host's layers; here the first two and the last
        overrides.append(f"gradients.layers=[{linear[0]},{linear[1]},{linear[-1]}]")
    tracker = DiagnosticTracker(model, load_config(profile, overrides=overrides), num_classes=10)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 48, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(BATCHES)]
    counts = []
    for step in range(2):
        for x, y in data:
            model.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            mode = Count()
            with mode:
                tracker.train_batch(loss, logits, y)
            counts.append(mode.n) if step else None
        tracker.end_step()
    return max(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exact", action="store_true", help="gradients.exact = true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {p: {depth: ops_per_batch(p, depth, args.exact) for depth in (4, 25)} for p in profile_names()}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'profile':<12} {'4 layers':>9} {'25 layers':>10}   ({'exact' if args.exact else 'sampled'} gradient path)")
    for profile, counts in result.items():
        print(f"{profile:<12} {counts[4]:>9} {counts[25]:>10}")


if __name__ == "__main__":
    main()
