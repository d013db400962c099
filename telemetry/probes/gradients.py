"""Per-layer gradient health, accumulated over every batch of the decision step, on the device.

Per batch the tracked gradients are concatenated once and reduced per layer with `segment_reduce`
(sum, sum of squares, vanishing / exploding / non-finite counts): a fixed number of kernels whatever
the layer count, and no host synchronisation. Each statistic is averaged over the step's batches and
the norm's maximum kept, so a row never describes the last batch only.

Percentiles and histograms of |g| come from a pool of `sample_size` positions per layer, 16 blocks of
`sample_size / 16`. Each of the step's first 16 batches fills one block (every element of a layer no
larger than a block, else uniform draws); from batch b > 16 on, every position is replaced
independently with probability 1/b by a fresh draw from batch b. Each position thus comes from a
uniformly chosen batch of the step, independently of the others: no batch is kept or dropped whole
(which, when batches differ, is far outside the bound below), and every batch weighs the same.
With n pooled elements the reported q-th percentile lies between the true (q - e)-th and (q + e)-th
percentiles of the step's pooled |g| with probability at least 1 - d, where
e = 100 * sqrt(ln(2 / d) / (2 n)) (Dvoretzky-Kiefer-Wolfowitz); for n = 65,536 and d = 1e-6,
e = 1.05 percentile points. Layers no larger than a block are measured exactly while the step has at
most 16 batches (beyond that, block position o still holds element o, from a uniformly chosen batch).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from telemetry.feature_schema import FeatureSpec
from telemetry.layers import feature_key
from telemetry.probes.probe import Probe, ProbeContext, StepInfo, Value, none_if

RESERVOIR_BATCHES = 16
HIST_EDGES = [10.0**k for k in range(-10, 4)]  # |g| bins: [0,1e-10), ..., [1e2,1e3), [1e3,inf)
VANISHING_LAYER_SHARE = 0.5  # REFERENCE.md: a layer vanishes when > 50% of elements are under threshold
EXPLODING_LAYER_SHARE = 0.01  # ... explodes when > 1% are over threshold
_PER_BATCH = 4  # norm, std, vanishing fraction, exploding fraction


def percentile_error_bound(n: int, delta: float = 1e-6) -> float:
    """DKW bound, in percentile points, on the sampled percentile's rank error (see module docstring)."""
    return 100.0 * math.sqrt(math.log(2.0 / delta) / (2.0 * n))


def _hist_label(i: int) -> str:
    lo = "0" if i == 0 else f"{HIST_EDGES[i - 1]:.0e}"
    hi = "inf" if i == len(HIST_EDGES) else f"{HIST_EDGES[i]:.0e}"
    return f"[{lo}, {hi})"


class GradientProbe(Probe):
    group = "gradients"

    def __init__(self, ctx: ProbeContext, seed: int = 0) -> None:
        super().__init__(ctx)
        cfg = ctx.config.gradients
        self.cfg = cfg
        recurse = cfg.layers != "all"
        self.params = [list(m.parameters(recurse=recurse)) for _, m in ctx.layers]
        self.keys = [feature_key(name) for name, _ in ctx.layers]
        self.sampling = bool(cfg.percentiles) or cfg.full_histogram
        self.per_batch_sample = max(1, cfg.sample_size // RESERVOIR_BATCHES)
        self._rng = np.random.default_rng(seed)
        self._gen: torch.Generator | None = None
        self._seed = seed
        self._cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.reset()

    # ---- declaration -------------------------------------------------------------------------
    def features(self) -> list[FeatureSpec]:
        s, cfg = self.spec, self.cfg
        out = [
            s("grad_health", "share of tracked layers neither vanishing, exploding nor non-finite",
              "fraction"),
            s("grad_nonfinite_count", "non-finite gradient elements over the step, all tracked layers",
              "count"),
            s("loss_nonfinite_batches", "training batches whose loss was NaN or Inf", "count"),
        ]
        for key in self.keys:
            if cfg.track_norm:
                out.append(s(f"grad_norm_{key}", f"L2 norm of {key}'s gradient, mean over the step's batches",
                             "norm"))
                out.append(s(f"grad_norm_max_{key}", f"largest per-batch gradient L2 norm of {key}", "norm"))
            if cfg.track_std:
                out.append(s(f"grad_std_{key}", f"std of {key}'s gradient elements, mean over batches",
                             "grad"))
            for q in cfg.percentiles:
                out.append(s(f"grad_p{q}_{key}",
                             f"{q}th percentile of |g| in {key}, pooled sample of the step", "grad"))
            if cfg.detect_vanishing:
                out.append(s(f"grad_vanishing_frac_{key}",
                             f"share of {key}'s |g| under {cfg.vanishing_threshold:g}, mean over batches",
                             "fraction"))
            if cfg.detect_exploding:
                out.append(s(f"grad_exploding_frac_{key}",
                             f"share of {key}'s |g| over {cfg.exploding_threshold:g}, mean over batches",
                             "fraction"))
            if cfg.full_histogram:
                out.extend(s(f"grad_hist_{key}_{i:02d}", f"share of {key}'s sampled |g| in {_hist_label(i)}",
                             "fraction") for i in range(len(HIST_EDGES) + 1))
        return out

    # ---- hot path ----------------------------------------------------------------------------
    def train_batch(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                    batch: int) -> None:
        self._loss_nonfinite = self._loss_nonfinite + (~torch.isfinite(loss.detach())).sum()
        if batch % self.cfg.every_n_batches:
            return
        grads, lengths = self._gradients()
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]).float()
        lens, offsets, numel, valid = self._layout(lengths, flat.device)
        a = flat.abs()
        cfg = self.cfg
        parts = torch.stack([flat, flat * flat, (a < cfg.vanishing_threshold).float(),
                             (a > cfg.exploding_threshold).float(), (~torch.isfinite(flat)).float()], dim=1)
        # unsafe: skip the length checks, two .item() host syncs per call; lengths are ours and correct
        seg = torch.segment_reduce(parts, "sum", lengths=lens, axis=0, unsafe=True)  # [layers, 5]
        n = numel.clamp(min=1)
        mean = seg[:, 0] / n
        std = (seg[:, 1] / n - mean * mean).clamp(min=0).sqrt()
        norm = seg[:, 1].sqrt()
        stats = torch.stack([norm, std, seg[:, 2] / n, seg[:, 3] / n], dim=1) * valid[:, None]
        if self._sums is None:
            self._sums = torch.zeros_like(stats)
            self._max = torch.full_like(norm, -math.inf)
            self._nonfinite = torch.zeros((), device=flat.device)
        self._sums += stats
        self._max = torch.maximum(self._max, torch.where(valid, norm, -math.inf))
        self._nonfinite = self._nonfinite + seg[:, 4].sum()
        for i, length in enumerate(lengths):
            self._batches[i] += length > 0
        if self.sampling:
            self._lengths = lengths
            self._sample(a, offsets, numel, valid)

    def _gradients(self) -> tuple[list[torch.Tensor], list[int]]:
        grads, lengths = [], []
        for params in self.params:
            layer = [p.grad for p in params if p.grad is not None]
            grads.extend(layer)
            lengths.append(sum(g.numel() for g in layer))
        return grads, lengths

    def _layout(self, lengths: list[int], device: torch.device) -> tuple[torch.Tensor, ...]:
        """Per-layer lengths and offsets as device tensors, cached: building them each batch would sync."""
        key = (*lengths, hash(device))
        if key not in self._cache:
            lens = torch.tensor(lengths, dtype=torch.long)
            offsets = torch.cumsum(lens, 0) - lens
            self._cache[key] = tuple(t.to(device) for t in (lens, offsets, lens.float(), lens > 0))
        return self._cache[key]

    def _sample(self, a: torch.Tensor, offsets: torch.Tensor, numel: torch.Tensor,
                valid: torch.Tensor) -> None:
        """Batch b <= 16 fills block b; a later batch b replaces each position with probability 1/b.

        Which positions are replaced never depends on gradient values: how many is drawn on the host
        (binomial), which ones on the device (a random permutation), so there is no synchronisation.
        """
        self._seen += 1
        b, s = self._seen, self.per_batch_sample
        width = RESERVOIR_BATCHES * s
        if self._gen is None or self._gen.device != a.device:
            self._gen = torch.Generator(device=a.device)
            self._gen.manual_seed(self._seed)
        if self._pool is None:
            self._pool = torch.full((len(numel), width), math.nan, device=a.device)
        if b <= RESERVOIR_BATCHES:
            slots = None
            offset = torch.arange(s, device=a.device, dtype=torch.float32)
        else:
            k = int(self._rng.binomial(width, 1.0 / b))
            if k == 0:
                return
            slots = torch.randperm(width, generator=self._gen, device=a.device)[:k]
            offset = (slots % s).float()
        # small layers: position o of every block holds element o (the rest NaN, ignored)
        exact = numel[:, None] <= s
        draws = torch.rand(len(numel), offset.numel(), generator=self._gen, device=a.device)
        random_pos = draws * numel[:, None]
        pos = torch.minimum(torch.where(exact, offset, random_pos), (numel[:, None] - 1).clamp(min=0)).long()
        keep = (~exact | (offset < numel[:, None])) & valid[:, None]
        picked = torch.where(keep, a[(offsets[:, None] + pos).clamp(max=a.numel() - 1)], torch.nan)
        if slots is None:
            self._pool[:, (b - 1) * s: b * s] = picked
        else:
            self._pool[:, slots] = picked

    # ---- end of step -------------------------------------------------------------------------
    @property
    def _sample_width(self) -> int:
        return len(self.cfg.percentiles) + (len(HIST_EDGES) + 1 if self.cfg.full_histogram else 0)

    def payload(self, probe_batch: object) -> list[torch.Tensor]:
        """[sums L*4 | max norm L | non-finite grads | non-finite losses | sampled stats L*width]."""
        n_layers = len(self.keys)
        measured = self._sums is not None
        sampled = (self._sample_stats() if self._pool is not None
                   else torch.full((n_layers * self._sample_width,), math.nan))
        return [
            self._sums.flatten() if measured else torch.zeros(n_layers * _PER_BATCH),
            self._max if measured else torch.full((n_layers,), math.nan),
            self._nonfinite.reshape(1) if measured else torch.zeros(1),
            torch.as_tensor(self._loss_nonfinite).reshape(1),
            sampled,
        ]

    def _sample_stats(self) -> torch.Tensor:
        blocks = min(self._seen, RESERVOIR_BATCHES)
        pool = self._pool[:, : blocks * self.per_batch_sample]  # [layers, pooled]
        per_layer = []
        if self.cfg.percentiles:
            q = torch.tensor(self.cfg.percentiles, dtype=torch.float32, device=pool.device) / 100
            filled = [self._filled(pool[i], n, blocks) for i, n in enumerate(self._lengths)]
            per_layer.append(torch.stack([torch.nanquantile(f, q) for f in filled]))  # [layers, P]
        if self.cfg.full_histogram:
            edges = torch.tensor(HIST_EDGES, dtype=torch.float32, device=pool.device)
            present = ~torch.isnan(pool)
            bins = torch.bucketize(pool.nan_to_num(0.0), edges, right=True)
            counts = torch.zeros(pool.shape[0], len(HIST_EDGES) + 1, device=pool.device)
            counts.scatter_add_(1, bins, present.float())
            per_layer.append(counts / present.sum(1, keepdim=True).clamp(min=1))
        return torch.cat(per_layer, dim=1).flatten()

    def _filled(self, row: torch.Tensor, numel: int, blocks: int) -> torch.Tensor:
        """The pool positions a layer can fill: a layer no larger than a block fills the first
        `numel` positions of each block, the rest stay NaN. Sorting only those (not a mostly-NaN
        row of `sample_size`) is what makes percentiles of small layers cheap."""
        s = self.per_batch_sample
        if 0 < numel <= s:
            return row.view(blocks, s)[:, :numel].reshape(-1)
        return row

    def finish(self, host: np.ndarray, info: StepInfo) -> list[Value]:
        n_layers, cfg = len(self.keys), self.cfg
        measured = np.array(self._batches) > 0
        sums = host[: n_layers * _PER_BATCH].reshape(n_layers, _PER_BATCH)
        means = sums / np.maximum(self._batches, 1)[:, None]
        maxes = host[n_layers * _PER_BATCH: n_layers * 5]
        nonfinite = none_if(not measured.any(), host[n_layers * 5])
        loss_nonfinite = int(host[n_layers * 5 + 1])
        sampled = host[n_layers * 5 + 2:].reshape(n_layers, self._sample_width)
        row: list[Value] = [self._health(means, measured), nonfinite, loss_nonfinite]
        for i in range(n_layers):
            missing = not measured[i]
            if cfg.track_norm:
                row += [none_if(missing, means[i, 0]), none_if(missing, maxes[i])]
            if cfg.track_std:
                row.append(none_if(missing, means[i, 1]))
            row += [none_if(missing, v) for v in sampled[i, : len(cfg.percentiles)]]
            if cfg.detect_vanishing:
                row.append(none_if(missing, means[i, 2]))
            if cfg.detect_exploding:
                row.append(none_if(missing, means[i, 3]))
            if cfg.full_histogram:
                row += [none_if(missing, v) for v in sampled[i, len(cfg.percentiles):]]
        info.values["grad_health"] = row[0]
        return row

    def _health(self, means: np.ndarray, measured: np.ndarray) -> float | None:
        if not measured.any():
            return None
        m = means[measured]
        bad = (m[:, 2] > VANISHING_LAYER_SHARE) | (m[:, 3] > EXPLODING_LAYER_SHARE) | ~np.isfinite(m).all(1)
        return float(1.0 - bad.mean())

    def reset(self) -> None:
        self._sums: torch.Tensor | None = None
        self._max: torch.Tensor | None = None
        self._nonfinite: torch.Tensor | None = None
        self._loss_nonfinite: torch.Tensor | int = 0
        self._batches = [0] * len(self.keys)
        self._pool: torch.Tensor | None = None
        self._seen = 0
        self._lengths: list[int] = []
