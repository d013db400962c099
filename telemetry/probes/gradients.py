"""Per-layer gradient health, accumulated over every batch of the decision step, on the device.

Per tracked batch the default (sampled) path launches a fixed, small number of kernels whatever the
layer count, copies no gradient whole and never synchronises with the host:

- one multi-tensor `torch._foreach_powsum` gives every parameter's exact sum of squares (norms, and
  the mean square behind the std);
- one element sample of every layer (gradient_sample.py: one random draw, one pack and one take per
  chunk of up to 4M elements) gives the mean behind the std, and feeds the step's pool
  (gradient_reservoir.py), from which vanishing / exploding / non-finite shares, percentiles and
  histograms come with the stated DKW bound.

Per-batch values are kept as small per-batch vectors and reduced per layer once, at the end of the
step (or every FOLD_EVERY batches): the square roots and means cost nothing per batch.
`gradients.exact: true` selects the exact path instead (gradient_exact.py: every element, every
batch, a growing number of kernels), which the sampled path is tested against.

Each statistic is averaged over the step's batches and the norm's maximum kept, so a row never
describes the last batch only. A layer counts as vanishing when more than VANISHING_LAYER_SHARE of
its gradient elements are under the vanishing threshold, and as exploding when more than
EXPLODING_LAYER_SHARE are over the exploding threshold (REFERENCE.md's rules); `grad_health` is the
share of layers that are neither (nor non-finite). These two constants are the project's one
definition of both.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from telemetry.feature_schema import FeatureSpec
from telemetry.layers import feature_key
from telemetry.probes import gradient_histogram, gradient_reservoir, gradient_sample
from telemetry.probes.gradient_exact import ExactPass
from telemetry.probes.probe import Probe, ProbeContext, StepInfo, Value, none_if

VANISHING_LAYER_SHARE = 0.5  # a layer vanishes when > 50% of its elements are under the threshold
EXPLODING_LAYER_SHARE = 0.01  # ... explodes when > 1% are over the threshold
FOLD_EVERY = 1024  # sampled path: per-batch vectors are reduced at the step's end or this often


class GradientProbe(Probe):
    group = "gradients"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        cfg = ctx.config.gradients
        self.cfg = cfg
        recurse = cfg.layers != "all"
        layer_params = [list(m.parameters(recurse=recurse)) for _, m in ctx.layers]
        self.params = [p for ps in layer_params for p in ps]
        self.param_layer = [i for i, ps in enumerate(layer_params) for _ in ps]
        self.keys = [feature_key(name) for name, _ in ctx.layers]
        self.exact = cfg.exact
        self.sampling = not cfg.exact or bool(cfg.percentiles) or cfg.full_histogram
        self.block = gradient_reservoir.block_size(cfg.sample_size)
        self._exact_pass = ExactPass(cfg) if cfg.exact else None
        self._layouts: dict[tuple, gradient_sample.Layout] = {}  # derived, not state
        self._constants: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._param_layers: dict[torch.device, torch.Tensor] = {}
        self._filled: dict[tuple, gradient_reservoir.Filled] = {}
        n = len(self.keys)
        # per step, on the device: summed per-batch [norm, std, vanishing, exploding] per layer (the
        # sampled path sums norm and std only, its shares come from the pool), the largest norm,
        # non-finite gradient elements (sampled path: batches x layers with a non-finite square sum);
        # on the host: batches and gradient elements seen per layer; every training loss (detached)
        self.add_state("sums", torch.zeros(n, 4, dtype=torch.float64))
        self.add_state("max_norm", torch.full((n,), -math.inf, dtype=torch.float64))
        self.add_state("nonfinite", torch.zeros((), dtype=torch.float64))
        self.add_state("batches", [0] * n)
        self.add_state("elements", [0] * n)
        self.add_state("losses", [])  # not yet counted
        self.add_state("loss_nonfinite", torch.zeros((), dtype=torch.long))
        # sampled path, per tracked batch until folded: per-parameter square sums, per-layer sample
        # sums, per-layer gradient elements (host)
        self.add_state("squares", [])
        self.add_state("draw_sums", [])
        self.add_state("numels", [])
        # the pooled sample of |g| (a list of blocks, then a tensor), sampled batches, layer sizes
        self.add_state("pool", None)
        self.add_state("sampled", 0)
        self.add_state("lengths", [])
        # the sampler's random streams, for the whole run
        self.add_state("rng", np.random.default_rng(ctx.rng_seed), per_step=False)
        self.add_state("gen", None, per_step=False)

    # ---- declaration -------------------------------------------------------------------------
    def features(self) -> list[FeatureSpec]:
        s, cfg = self.spec, self.cfg
        sched = f"; from one training batch in every {cfg.every_n_batches}" if cfg.every_n_batches > 1 else ""
        out = [
            s("grad_health", "share of tracked layers neither vanishing, exploding nor non-finite" + sched,
              "fraction"),
            s("grad_nonfinite_count", self._nonfinite_text() + sched, "count"),
            s("loss_nonfinite_batches", "training batches whose loss was NaN or Inf", "count"),
        ]
        for key in self.keys:
            if cfg.track_norm:
                out.append(s(f"grad_norm_{key}", f"L2 norm of {key}'s gradient, mean over the step's batches"
                             + sched, "norm"))
                out.append(s(f"grad_norm_max_{key}", f"largest per-batch gradient L2 norm of {key}" + sched,
                             "norm"))
            if cfg.track_std:
                out.append(s(f"grad_std_{key}", f"std of {key}'s gradient elements, mean over batches"
                             + self._std_bound_text() + sched, "grad"))
            for q in cfg.percentiles:
                out.append(s(f"grad_p{q}_{key}", f"{q}th percentile of |g| in {key}, pooled sample of the step"
                             + self._pool_bound_text("percentile") + sched, "grad"))
            if cfg.detect_vanishing:
                out.append(s(f"grad_vanishing_frac_{key}",
                             f"share of {key}'s |g| under {cfg.vanishing_threshold:g}, mean over batches"
                             + ("" if self.exact else self._pool_bound_text("share")) + sched, "fraction"))
            if cfg.detect_exploding:
                out.append(s(f"grad_exploding_frac_{key}",
                             f"share of {key}'s |g| over {cfg.exploding_threshold:g}, mean over batches"
                             + ("" if self.exact else self._pool_bound_text("share")) + sched, "fraction"))
            if cfg.full_histogram:
                out.extend(s(f"grad_hist_{key}_{i:02d}",
                             f"share of {key}'s sampled |g| in {gradient_histogram.bin_label(i)}"
                             + self._pool_bound_text("share") + sched, "fraction")
                           for i in range(gradient_histogram.BINS))
        return out

    def _pool_bound_text(self, kind: str) -> str:
        n = self.cfg.sample_size
        e = gradient_reservoir.percentile_error_bound(n)
        what = "rank within" if kind == "percentile" else "within"
        return (f" (exact for a layer of at most {self.block:,} elements in a step of at most 16 batches, "
                f"else {what} e = 100*sqrt(ln(2e6)/(2n)) percentage points for a pool of n elements, "
                f"{e:.2f} at n = {n:,}; probability 1-1e-6, DKW)")

    def _std_bound_text(self) -> str:
        if self.exact:
            return ""
        s = self.block
        return (f" (mean square exact; mean from {s:,} sampled elements per batch, exact for a layer of at "
                f"most {s:,}; |std^2 error| <= h(2|mean|+h), h = sqrt(2 ms L/{s}) + 4 max|g| L/(3*{s}), "
                f"ms the mean square, L = ln(2e6); probability 1-1e-6, Bernstein)")

    def _nonfinite_text(self) -> str:
        text = "non-finite gradient elements over the step, all tracked layers"
        if self.exact:
            return text
        return text + (" (0 exactly when every element is finite; otherwise the pooled sample's non-finite "
                       "share times the elements seen, at least 1)")

    # ---- hot path ----------------------------------------------------------------------------
    def train_batch(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                    batch: int) -> None:
        self.losses.append(loss)  # the tracker hands probes the detached loss
        if len(self.losses) >= FOLD_EVERY:
            self._count_losses()
        if batch % self.cfg.every_n_batches:
            return
        grads = [p.grad for p in self.params]
        present = tuple(g is not None for g in grads)
        if not any(present):
            return
        first = next(g for g in grads if g is not None)
        layout = self._layout(present, first)
        zero, pad = self._constants_for(first)
        if self.exact:
            stats, norms, nonfinite = self._exact_pass([g for g in grads if g is not None], list(layout.numel))
            self.sums += stats
            self.max_norm = torch.maximum(self.max_norm, norms)
            self.nonfinite = self.nonfinite + nonfinite
        else:
            self.squares.append(gradient_sample.sums_of_squares([zero if g is None else g for g in grads]))
        for i, size in enumerate(layout.numel):
            self.batches[i] += size > 0
            self.elements[i] += size
        if not self.sampling:
            return
        if self.gen is None or self.gen.device != first.device:
            self.gen = torch.Generator(device=first.device)
            self.gen.manual_seed(self.ctx.rng_seed)
        sample = gradient_sample.draw(grads, layout, self.gen, pad)
        if not self.exact:
            self.draw_sums.append(sample.sum(1, dtype=torch.float64))
            self.numels.append(layout.numel)
            if len(self.squares) >= FOLD_EVERY:
                self._fold()
        self.sampled += 1
        self.lengths = list(layout.numel)

        def block(drawn: torch.Tensor) -> torch.Tensor:
            return gradient_reservoir.marked(drawn, layout.pad, layout.mark)

        def fresh() -> torch.Tensor:  # more draws, when a late batch replaces more positions than it drew
            return block(gradient_sample.draw(grads, layout, self.gen, pad))

        self.pool = gradient_reservoir.add(self.pool, self.sampled, block(sample), layout.exact, self.rng, self.gen,
                                           fresh)

    def _layout(self, present: tuple[bool, ...], first: torch.Tensor) -> gradient_sample.Layout:
        """Where the sample reads, per pattern of present gradients, cached (building it would sync)."""
        key = (present, first.device, first.dtype)
        if key not in self._layouts:
            layers: list[list[int]] = [[] for _ in self.keys]
            for i, (layer, here) in enumerate(zip(self.param_layer, present, strict=True)):
                if here:
                    layers[layer].append(i)
            self._layouts[key] = gradient_sample.build_layout(layers, [p.numel() for p in self.params],
                                                              self.block, first.device)
        return self._layouts[key]

    def _constants_for(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A zero stand-in for a missing gradient, and the sample's zero pad, on `like`'s device."""
        key = (like.device, like.dtype)
        if key not in self._constants:
            self._constants[key] = (torch.zeros(1, dtype=like.dtype, device=like.device),
                                    torch.zeros(1, dtype=like.dtype, device=like.device))
        return self._constants[key]

    def _fold(self) -> None:
        """Sampled path: reduce the pending per-batch vectors into `sums`, `max_norm`, `nonfinite`."""
        if not self.squares:
            return
        squares = torch.stack(self.squares)  # [batches, params]
        device = squares.device
        if device not in self._param_layers:
            self._param_layers[device] = torch.tensor(self.param_layer, dtype=torch.long, device=device)
        param_layer = self._param_layers[device]
        layer_sq = squares.new_zeros(len(self.squares), len(self.keys)).index_add_(1, param_layer, squares)
        numel = torch.tensor(self.numels, dtype=torch.float64).to(device)
        mean = torch.stack(self.draw_sums) / numel.clamp(min=1, max=self.block)
        std = (layer_sq / numel.clamp(min=1) - mean * mean).clamp(min=0).sqrt()
        norm = layer_sq.sqrt()
        valid = numel > 0
        self.sums[:, :2] += torch.stack([torch.where(valid, norm, 0), torch.where(valid, std, 0)], 2).sum(0)
        self.max_norm = torch.maximum(self.max_norm, torch.where(valid, norm, -math.inf).amax(0))
        self.nonfinite = self.nonfinite + (~torch.isfinite(layer_sq) & valid).sum()
        self.squares, self.draw_sums, self.numels = [], [], []

    def _count_losses(self) -> None:
        if self.losses:
            self.loss_nonfinite = self.loss_nonfinite + (~torch.isfinite(torch.stack(self.losses))).sum()
            self.losses = []

    # ---- end of step -------------------------------------------------------------------------
    @property
    def _sample_width(self) -> int:
        return len(self.cfg.percentiles) + (gradient_histogram.BINS if self.cfg.full_histogram else 0)

    def payload(self, probe_batch: object) -> list[torch.Tensor]:
        """[norm, std sums L*2 | max norm L | vanishing, exploding L*2 | non-finite grads | non-finite
        losses | sampled stats L*width]; the exact path's shares are sums over batches."""
        n = len(self.keys)
        if not self.exact:
            self._fold()
        shares, sampled = self._pool_statistics()
        if self.exact:
            fractions, nonfinite = self.sums[:, 2:], self.nonfinite
        elif shares is None:
            fractions, nonfinite = torch.full((n, 2), math.nan), torch.zeros(())
        else:
            elements = torch.tensor(self.elements, dtype=torch.float64).to(shares.device)
            estimate = (shares[:, 2].double() * elements).sum()
            fractions = shares[:, :2]
            nonfinite = torch.where(self.nonfinite > 0, estimate.clamp(min=1), estimate)
        self._count_losses()
        return [self.sums[:, :2].flatten(), self.max_norm, fractions.flatten(), nonfinite.reshape(1),
                self.loss_nonfinite.reshape(1), sampled.flatten()]

    def _pool_statistics(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The pool's shares ([layers, 3]) and percentiles and histograms ([layers, width]), or
        (None, NaN) when nothing was sampled this step."""
        if self.pool is None:
            return None, torch.full((len(self.keys), self._sample_width), math.nan)
        pool = gradient_reservoir.joined(self.pool)
        blocks = min(self.sampled, gradient_reservoir.RESERVOIR_BATCHES)
        key = (tuple(self.lengths), blocks, pool.device)
        if key not in self._filled:
            self._filled[key] = gradient_reservoir.filled_positions(self.lengths, blocks, self.block, pool.device)
        return gradient_reservoir.step_statistics(pool, self._filled[key], self.cfg.vanishing_threshold,
                                                  self.cfg.exploding_threshold, self.cfg.percentiles,
                                                  self.cfg.full_histogram)

    def finish(self, host: np.ndarray, info: StepInfo) -> dict[str, Value]:
        n_layers, cfg = len(self.keys), self.cfg
        measured = np.array(self.batches) > 0
        seen = np.maximum(self.batches, 1)[:, None]
        norm_std = host[: n_layers * 2].reshape(n_layers, 2) / seen
        maxes = host[n_layers * 2: n_layers * 3]
        fractions = host[n_layers * 3: n_layers * 5].reshape(n_layers, 2)
        if self.exact:
            fractions = fractions / seen
        means = np.concatenate([norm_std, fractions], axis=1)
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
