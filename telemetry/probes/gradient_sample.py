"""The per-batch element sample: `per_batch` draws of every tracked layer's gradient, in a fixed number of kernels.

Gradients live in separate tensors, and no stock PyTorch operator gathers random elements from a
list of tensors. So the gradients are packed into chunks of whole layers with one `torch._chunk_cat`
each (it flattens tensors of any shape in one kernel), and every chunk is read with one
`torch.take`; the positions of all layers come from one random draw. A chunk holds at most
PACK_ELEMENTS elements (16 MiB in float32): the copy is bounded whatever the model size, and every
model below that size is one chunk, so a batch costs the same few kernels for 4 layers or 400. A
layer larger than a chunk is a chunk of its own, read in place when it has one parameter.

A layer with at most `per_batch` elements is read whole, element o at column o (an *exact* layer,
measured element by element); a larger one gets `per_batch` independent uniform draws, with
replacement. Columns past an exact layer's size, and every column of a layer without gradients in
this batch, read a zero pad and are flagged in `Layout.pad`.

The sample's mean estimates the layer's gradient mean for `grad_std` (the mean square is exact,
from `torch._foreach_powsum`). With s draws, mean square m2 and largest |g| M, Bernstein's inequality
puts the sampled mean within `mean_error_bound(m2, M, s)` of the true mean with probability
1 - DELTA (each draw's variance is at most m2 and its distance from the mean at most 2M).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MARK = -1.0  # no |g| is negative: marks pool positions that hold no element
PACK_ELEMENTS = 1 << 22  # elements per packed chunk: bounds the per-batch copy (16 MiB in float32)
DELTA = 1e-6  # failure probability of every stated sampling bound


def sums_of_squares(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[len(tensors)] float64 sums of squares, in one multi-tensor kernel (float64: no overflow)."""
    if hasattr(torch, "_foreach_powsum"):
        return torch.stack(torch._foreach_powsum(tensors, 2, dtype=torch.float64))
    return torch.stack(torch._foreach_norm(tensors)).double().square()  # torch before _foreach_powsum


def mean_error_bound(mean_square: float, max_abs: float, draws: int, delta: float = DELTA) -> float:
    """Bernstein bound on |sampled mean - mean| for `draws` uniform draws (see module docstring)."""
    log_term = math.log(2.0 / delta)
    return math.sqrt(2.0 * mean_square * log_term / draws) + 4.0 * max_abs * log_term / (3.0 * draws)


@dataclass(frozen=True)
class Chunk:
    """Layers `rows` (a slice of the layer axis), read from one buffer: the packed gradients of
    `params` followed by a zero pad, or (`in_place`) the one parameter's gradient itself."""

    rows: slice
    params: tuple[int, ...]
    in_place: bool


@dataclass(frozen=True)
class Layout:
    """Where each layer's draws read, for one pattern of present gradients; built once, cached."""

    base: torch.Tensor  # [layers, per_batch] float64: first position (exact: the element itself)
    span: torch.Tensor  # [layers, per_batch] float64: 0 for exact columns, else the layer's size
    pad: torch.Tensor  # [layers, per_batch] bool: column reads the zero pad, not a gradient
    exact: torch.Tensor  # [layers, 1] bool: the layer is read whole
    mark: torch.Tensor  # 0-d float32: the pool's mark for a column that holds no element
    numel: tuple[int, ...]  # gradient elements per layer in this pattern
    chunks: tuple[Chunk, ...]
    fixed: torch.Tensor | None  # [layers, per_batch] long: every layer read whole, so nothing is drawn


def build_layout(layer_params: list[list[int]], sizes: list[int], per_batch: int,
                 device: torch.device) -> Layout:
    """`layer_params[l]`: indices of layer l's parameters that have a gradient; `sizes[i]`: numel."""
    numel = [sum(sizes[i] for i in ps) for ps in layer_params]
    chunks, starts = _pack(layer_params, numel, sizes)
    n = len(layer_params)
    base = torch.zeros(n, per_batch, dtype=torch.float64)
    span = torch.zeros(n, per_batch, dtype=torch.float64)
    pad = torch.zeros(n, per_batch, dtype=torch.bool)
    cols = torch.arange(per_batch, dtype=torch.float64)
    for chunk in chunks:
        pad_at = sum(sizes[i] for i in chunk.params)  # the zero pad follows the packed gradients
        for row in range(chunk.rows.start, chunk.rows.stop):
            size = numel[row]
            if size == 0:
                base[row], pad[row] = pad_at, True
            elif size <= per_batch:
                base[row] = torch.where(cols < size, starts[row] + cols, float(pad_at))
                pad[row] = cols >= size
            else:
                base[row], span[row] = starts[row], size
    exact = torch.tensor([[0 < s <= per_batch] for s in numel])
    mark = torch.tensor(MARK)
    fixed = base.long().to(device) if all(size <= per_batch for size in numel) else None
    return Layout(base.to(device), span.to(device), pad.to(device), exact.to(device), mark.to(device),
                  tuple(numel), tuple(chunks), fixed)


def _pack(layer_params: list[list[int]], numel: list[int],
          sizes: list[int]) -> tuple[list[Chunk], list[int]]:
    """Consecutive whole layers into chunks of at most PACK_ELEMENTS; each layer's start in its chunk."""
    chunks: list[Chunk] = []
    starts = [0] * len(layer_params)
    first, params, filled = 0, [], 0
    for row, ps in enumerate(layer_params):
        if params and filled + numel[row] > PACK_ELEMENTS:
            chunks.append(Chunk(slice(first, row), tuple(params), False))
            first, params, filled = row, [], 0
        starts[row] = filled
        params.extend(ps)
        filled += numel[row]
    if first < len(layer_params):
        chunks.append(Chunk(slice(first, len(layer_params)), tuple(params), False))
    # a chunk that is one large parameter is read in place: no copy at all
    chunks = [Chunk(c.rows, c.params, len(c.params) == 1 and c.rows.stop - c.rows.start == 1
                    and sizes[c.params[0]] > PACK_ELEMENTS) for c in chunks]
    return chunks, starts


def draw(grads: list[torch.Tensor], layout: Layout, gen: torch.Generator, pad: torch.Tensor) -> torch.Tensor:
    """[layers, per_batch] float32 sample of this batch's gradients (pad columns read 0).

    `grads` are the present gradients, indexed like the parameter indices of the layout; `pad` is a
    one-element zero tensor on their device. Kernels: a draw, a multiply-add, a cast, then a pack and
    a take per chunk (one chunk below PACK_ELEMENTS). A model whose every layer is read whole (no
    larger than `per_batch`) draws nothing: only the pack and the take.
    """
    if layout.fixed is not None:
        index = layout.fixed
    else:
        u = torch.rand(layout.base.shape, generator=gen, device=layout.base.device, dtype=torch.float64)
        index = torch.addcmul(layout.base, u, layout.span).long()
    parts = []
    for chunk in layout.chunks:
        members = [grads[i] for i in chunk.params]
        if chunk.in_place:
            buffer = members[0]
        elif members and all(g.dtype == pad.dtype for g in members):
            buffer = torch._chunk_cat([*members, pad], 0, 1)
        else:  # mixed precision: flatten and cast (one kernel per tensor; rare)
            buffer = torch.cat([g.reshape(-1).to(pad.dtype) for g in members] + [pad])
        rows = index if len(layout.chunks) == 1 else index[chunk.rows]
        parts.append(torch.take(buffer, rows))
    sample = parts[0] if len(parts) == 1 else torch.cat(parts)
    return sample if sample.dtype == torch.float32 else sample.float()
