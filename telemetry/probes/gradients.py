"""Per-layer gradient health, accumulated over every batch of the decision step, on the device.

Per batch the tracked gradients are concatenated once and reduced per layer with `segment_reduce`
(sum, sum of squares, vanishing / exploding / non-finite counts): a fixed number of kernels whatever
the layer count, and no host synchronisation. Each statistic is averaged over the step's batches and
the norm's maximum kept, so a row never describes the last batch only. Percentiles and histograms
of |g| come from a pooled sample with a stated error bound (gradient_reservoir.py, gradient_histogram.py).

A layer counts as vanishing when more than VANISHING_LAYER_SHARE of its gradient elements are under
the vanishing threshold, and as exploding when more than EXPLODING_LAYER_SHARE are over the exploding
threshold (REFERENCE.md's rules); `grad_health` is the share of layers that are neither (nor
non-finite). These two constants are the project's one definition of both.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from telemetry.feature_schema import FeatureSpec
from telemetry.layers import feature_key
from telemetry.probes import gradient_histogram, gradient_reservoir
from telemetry.probes.probe import Probe, ProbeContext, StepInfo, Value, none_if

VANISHING_LAYER_SHARE = 0.5  # a layer vanishes when > 50% of its elements are under the threshold
EXPLODING_LAYER_SHARE = 0.01  # ... explodes when > 1% are over the threshold
_PER_BATCH = 4  # norm, std, vanishing fraction, exploding fraction


class GradientProbe(Probe):
    group = "gradients"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        cfg = ctx.config.gradients
        self.cfg = cfg
        recurse = cfg.layers != "all"
        self.params = [list(m.parameters(recurse=recurse)) for _, m in ctx.layers]
        self.keys = [feature_key(name) for name, _ in ctx.layers]
        self.sampling = bool(cfg.percentiles) or cfg.full_histogram
        self.block = gradient_reservoir.block_size(cfg.sample_size)
        self._cache: dict[tuple[int, ...], tuple[torch.Tensor, ...]] = {}  # derived, not state
        n = len(self.keys)
        # per step, on the device: summed per-batch [norm, std, vanishing, exploding] per layer, the
        # largest norm, non-finite gradient elements and losses; on the host: batches seen per layer
        self.add_state("sums", torch.zeros(n, _PER_BATCH))
        self.add_state("max_norm", torch.full((n,), -math.inf))
        self.add_state("nonfinite", torch.zeros(()))
        self.add_state("loss_nonfinite", torch.zeros((), dtype=torch.long))
        self.add_state("batches", [0] * n)
        # the pooled sample of |g| (allocated at the first sampled batch), sampled batches, layer sizes
        self.add_state("pool", None)
        self.add_state("sampled", 0)
        self.add_state("lengths", [])
        # the sampler's random streams, for the whole run
        self.add_state("rng", np.random.default_rng(ctx.rng_seed), per_step=False)
        self.add_state("gen", None, per_step=False)

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
                out.extend(s(f"grad_hist_{key}_{i:02d}",
                             f"share of {key}'s sampled |g| in {gradient_histogram.bin_label(i)}", "fraction")
                           for i in range(gradient_histogram.BINS))
        return out

    # ---- hot path ----------------------------------------------------------------------------
    def train_batch(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                    batch: int) -> None:
        self.loss_nonfinite = self.loss_nonfinite + (~torch.isfinite(loss.detach())).sum()
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
        self.sums += torch.stack([norm, std, seg[:, 2] / n, seg[:, 3] / n], dim=1) * valid[:, None]
        self.max_norm = torch.maximum(self.max_norm, torch.where(valid, norm, -math.inf))
        self.nonfinite = self.nonfinite + seg[:, 4].sum()
        for i, length in enumerate(lengths):
            self.batches[i] += length > 0
        if self.sampling:
            self.lengths = lengths
            self.sampled += 1
            if self.gen is None or self.gen.device != a.device:
                self.gen = torch.Generator(device=a.device)
                self.gen.manual_seed(self.ctx.rng_seed)
            self.pool = gradient_reservoir.sample_into(self.pool, self.sampled, a, offsets, numel, valid,
                                                       self.block, self.rng, self.gen)

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

    # ---- end of step -------------------------------------------------------------------------
    @property
    def _sample_width(self) -> int:
        return len(self.cfg.percentiles) + (gradient_histogram.BINS if self.cfg.full_histogram else 0)

    def payload(self, probe_batch: object) -> list[torch.Tensor]:
        """[sums L*4 | max norm L | non-finite grads | non-finite losses | sampled stats L*width]."""
        sampled = (self._sample_stats() if self.pool is not None
                   else torch.full((len(self.keys) * self._sample_width,), math.nan))
        return [self.sums.flatten(), self.max_norm, self.nonfinite.reshape(1), self.loss_nonfinite.reshape(1),
                sampled]

    def _sample_stats(self) -> torch.Tensor:
        blocks = min(self.sampled, gradient_reservoir.RESERVOIR_BATCHES)
        pool = self.pool[:, : blocks * self.block]  # [layers, pooled]
        per_layer = []
        if self.cfg.percentiles:
            per_layer.append(gradient_reservoir.percentiles(pool, self.lengths, blocks, self.block,
                                                            self.cfg.percentiles))
        if self.cfg.full_histogram:
            per_layer.append(gradient_histogram.histogram(pool))
        return torch.cat(per_layer, dim=1).flatten()

    def finish(self, host: np.ndarray, info: StepInfo) -> dict[str, Value]:
        n_layers, cfg = len(self.keys), self.cfg
        measured = np.array(self.batches) > 0
        means = host[: n_layers * _PER_BATCH].reshape(n_layers, _PER_BATCH) / np.maximum(self.batches, 1)[:, None]
        maxes = host[n_layers * _PER_BATCH: n_layers * 5]
        sampled = host[n_layers * 5 + 2:].reshape(n_layers, self._sample_width)
        row: dict[str, Value] = {
            "grad_health": self._health(means, measured),
            "grad_nonfinite_count": none_if(not measured.any(), host[n_layers * 5]),
            "loss_nonfinite_batches": int(host[n_layers * 5 + 1]),
        }
        for i, key in enumerate(self.keys):
            missing = not measured[i]
            if cfg.track_norm:
                row[f"grad_norm_{key}"] = none_if(missing, means[i, 0])
                row[f"grad_norm_max_{key}"] = none_if(missing, maxes[i])
            if cfg.track_std:
                row[f"grad_std_{key}"] = none_if(missing, means[i, 1])
            for q, v in zip(cfg.percentiles, sampled[i, : len(cfg.percentiles)], strict=True):
                row[f"grad_p{q}_{key}"] = none_if(missing, v)
            if cfg.detect_vanishing:
                row[f"grad_vanishing_frac_{key}"] = none_if(missing, means[i, 2])
            if cfg.detect_exploding:
                row[f"grad_exploding_frac_{key}"] = none_if(missing, means[i, 3])
            if cfg.full_histogram:
                for b, v in enumerate(sampled[i, len(cfg.percentiles):]):
                    row[f"grad_hist_{key}_{b:02d}"] = none_if(missing, v)
        return row

    def _health(self, means: np.ndarray, measured: np.ndarray) -> float | None:
        if not measured.any():
            return None
        m = means[measured]
        bad = (m[:, 2] > VANISHING_LAYER_SHARE) | (m[:, 3] > EXPLODING_LAYER_SHARE) | ~np.isfinite(m).all(1)
        return float(1.0 - bad.mean())
