"""Pack I/O: what the pack format costs against plain Parquet and the JSON packs it replaced.

The data are synthetic but shaped like generated packs: the reference host's diagnostic feature
schema (155 features, mostly float32), episodes of 24 decision steps whose features follow per-episode
trajectories (so byte-stream-split and zstd see realistic, not constant or white-noise, columns),
a seed lifecycle that drives the actions (WAIT about 80%), masks, mu(a|s), narratives that vary per
row, red flags derived from the features, hindsight, and counterfactuals on about 25% of steps. They
are generated once, up front, from a fixed seed; generation is never timed.

Each pack path is compared with the plainest way to do the same job, so a ratio shows what the pack
machinery adds rather than what Parquet costs:

- PackWriter (create, add_episodes in chunks, close: splits, quick stats, sha256, fsync, manifest)
  against one `pq.write_table` of the same steps table with the same settings (`parquet_options`,
  ROW_GROUP_ROWS row groups). The writer also writes the episodes table; all of it counts against it.
  The bulk file is not fsynced inside its time; its fsync is reported apart.
- The same bulk write with pyarrow's default settings, to show what the tuned settings buy.
- The JSON pack of the design (one nested document, json.dump) on a subset of the rows (JSON at a
  million rows takes minutes and gigabytes), against tuned Parquet written and read on exactly that
  subset. Both start from their native in-memory form (Python objects, an Arrow table), and loading
  ends in the same float32 torch feature matrix. json.dump runs CPython's pure-Python encoder, so
  json.dumps (the C encoder) is timed too: JSON's best case, so the comparison cannot flatter Parquet.
- `open_pack(...).tensors(features="all")` against `pq.read_table` of the manifest's steps files with
  the columns tensors() needs (features, action, action_mask): the cost of building the matrix,
  labels and masks over reading the bytes. Files are in the page cache (a warm-up read comes first).
  Each timed call follows an untimed call of the same variant, so both start with Arrow's memory
  pool holding what they need; CPU time (every thread) is reported beside wall time.
- DuckDB: each library query on the pack's views, connection and views made beforehand, result
  fetched in full, after one warm-up run (its time is reported as `first_ms`).

Repetitions of compared variants are interleaved in a rotating order, so drift in machine load hits
all of them alike; a ratio is the median over repetitions of the ratio within one repetition.

    python benchmarks/pack_io.py             # 1,000,000 steps, JSON on 50,000 of them, 3 repetitions
    python benchmarks/pack_io.py --quick     # 100,000 steps, JSON on 10,000: under a minute on 2 CPU cores
    python benchmarks/pack_io.py --json      # one JSON object
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from synthetic_pack import EPISODE_STEPS, Data, make_data

from telemetry.packs import (
    ROW_GROUP_ROWS,
    PackWriter,
    open_pack,
    parquet_options,
    query_library,
)

TARGETS = {"write_ratio": 1.1, "tensors_ratio": 1.5, "action_distribution_ms": 50.0, "query_ms": 1000.0}


# ---- timing helpers -------------------------------------------------------------------------------

def _interleaved(variants: dict[str, Callable[[int], float]], reps: int) -> dict[str, list[float]]:
    """Each variant returns its own timed seconds (setup excluded); the order rotates per repetition."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(variants[name](rep))
    return times


def _ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def _clock(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# ---- 1 and 2: writing ----------------------------------------------------------------------------

def write_pack(data: Data, path: Path, chunk_episodes: int) -> None:
    """The streaming path of a bulk conversion: Arrow chunks of whole episodes into a PackWriter."""
    writer = PackWriter.create(path, data.config, data.schema, profiles=data.profiles)
    for start in range(0, data.episodes.num_rows, chunk_episodes):
        episodes = data.episodes.slice(start, chunk_episodes)
        first, rows = start * EPISODE_STEPS, episodes.num_rows * EPISODE_STEPS
        writer.add_episodes(episodes, data.steps.slice(first, rows))
    writer.close()


def bench_write(data: Data, tmp: Path, reps: int, chunk_episodes: int) -> tuple[dict[str, Any], Path]:
    """Writer vs bulk tuned vs bulk default; returns the results and one kept pack for the readers."""
    table, options = data.steps, parquet_options(data.steps.schema)
    kept = tmp / "pack"
    sizes: dict[str, int] = {}
    fsync: list[float] = []

    def writer(rep: int) -> float:
        path = kept if rep == 0 else tmp / "pack-again"
        seconds = _clock(lambda: write_pack(data, path, chunk_episodes))
        manifest = open_pack(path, verify=False).manifest
        sizes["writer_steps"] = sum(f.bytes for f in manifest.files_of("steps"))
        sizes["writer_episodes"] = sum(f.bytes for f in manifest.files_of("episodes"))
        sizes["writer_files"] = len(manifest.files)
        if path != kept:
            _remove(path)
        return seconds

    def bulk(label: str, **kwargs: Any) -> Callable[[int], float]:
        def run(rep: int) -> float:
            path = tmp / f"{label}.parquet"
            seconds = _clock(lambda: pq.write_table(table, path, **kwargs))
            sizes[label] = _size(path)
            if label == "tuned":
                fsync.append(_clock(lambda: _fsync(path)))
            _remove(path)
            return seconds
        return run

    _warm_up_writes(data, tmp, options)
    times = _interleaved({"writer": writer, "tuned": bulk("tuned", row_group_size=ROW_GROUP_ROWS, **options),
                          "default": bulk("default")}, reps)
    return {
        "writer_s": statistics.median(times["writer"]), "bulk_s": statistics.median(times["tuned"]),
        "bulk_fsync_s": statistics.median(fsync), "ratio": _ratio(times, "writer", "tuned"),
        "target": TARGETS["write_ratio"], "writer_steps_bytes": sizes["writer_steps"],
        "writer_episodes_bytes": sizes["writer_episodes"], "writer_files": sizes["writer_files"],
        "bulk_bytes": sizes["tuned"], "writer_size_ratio": sizes["writer_steps"] / sizes["tuned"],
        "default_s": statistics.median(times["default"]), "default_bytes": sizes["default"],
        "default_time_ratio": _ratio(times, "default", "tuned"),
        "default_size_ratio": sizes["default"] / sizes["tuned"],
    }, kept


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _warm_up_writes(data: Data, tmp: Path, options: dict[str, Any]) -> None:
    """Imports, thread pools and codecs initialised before anything is timed."""
    small = Data(data.config, data.schema, data.profiles, data.steps.slice(0, 10 * EPISODE_STEPS),
                 data.episodes.slice(0, 10))
    write_pack(small, tmp / "warm-pack", 10)
    pq.write_table(small.steps, tmp / "warm.parquet", **options)
    pq.write_table(small.steps, tmp / "warm-default.parquet")
    for path in ("warm-pack", "warm.parquet", "warm-default.parquet"):
        _remove(tmp / path)


# ---- 3: the JSON pack -------------------------------------------------------------------------------

DECISION_CONTEXT = ("narrative", "red_flags", "opportunities", "why_this_action", "why_not_alternatives")
HINDSIGHT = ("hindsight_accuracy", "hindsight_epochs", "was_good_decision", "counterfactual", "best_action")
STEP_KEYS = ("action", "behaviour_prob", "action_mask", "reward", "reward_accuracy", "reward_cost")


def json_document(steps: pa.Table, episodes: pa.Table, names: list[str]) -> dict[str, Any]:
    """The design's JSON pack: episodes, each with its steps' features, decision and context nested."""
    by_episode: dict[str, list[dict[str, Any]]] = {}
    for row in steps.to_pylist():
        by_episode.setdefault(row["episode_id"], []).append({
            "step": row["step"],
            "features": {n: row[n] for n in names},
            **{k: row[k] for k in STEP_KEYS},
            "decision_context": {k: row[k] for k in DECISION_CONTEXT},
            "hindsight": {k.removeprefix("hindsight_"): row[k] for k in HINDSIGHT},
        })
    return {"episodes": [{**ep, "steps": by_episode[ep["episode_id"]]} for ep in episodes.to_pylist()
                         if ep["episode_id"] in by_episode]}


def json_matrix(path: Path, names: list[str]) -> torch.Tensor:
    """json.load, then the float32 feature matrix (nulls to 0.0, as Pack.tensors does)."""
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    get = operator.itemgetter(*names)
    matrix = np.array([get(s["features"]) for ep in document["episodes"] for s in ep["steps"]], dtype=np.float32)
    matrix[np.isnan(matrix)] = 0.0  # None became NaN; the generated data hold no NaN of their own
    return torch.from_numpy(matrix)


def parquet_matrix(path: Path, names: list[str]) -> torch.Tensor:
    """pq.read_table of the whole file (as json.load reads everything), then the same matrix."""
    table = pq.read_table(path)
    matrix = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        matrix[:, j] = pc.fill_null(table.column(name), 0).to_numpy()
    return torch.from_numpy(matrix)


def bench_json(data: Data, tmp: Path, rows: int, reps: int) -> dict[str, Any]:
    """json.dump (the design's writer, CPython's pure-Python encoder) and json.dumps (the C encoder,
    JSON's best case) against tuned Parquet, on the first `rows` rows rounded down to whole episodes."""
    episodes = max(1, min(rows, data.steps.num_rows) // EPISODE_STEPS)
    subset, subset_episodes = data.steps.slice(0, episodes * EPISODE_STEPS), data.episodes.slice(0, episodes)
    names = data.schema.names
    document = json_document(subset, subset_episodes, names)
    json_path, dumps_path, parquet_path = tmp / "pack.json", tmp / "pack-dumps.json", tmp / "subset.parquet"
    options = {"row_group_size": ROW_GROUP_ROWS, **parquet_options(subset.schema)}

    def dump() -> None:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(document, f)

    def dumps() -> None:
        with open(dumps_path, "w", encoding="utf-8") as f:
            f.write(json.dumps(document))

    writes = _interleaved({"json": lambda _: _clock(dump), "json_dumps": lambda _: _clock(dumps),
                           "parquet": lambda _: _clock(lambda: pq.write_table(subset, parquet_path, **options))},
                          reps)
    assert _size(dumps_path) == _size(json_path), "json.dump and json.dumps wrote different documents"
    expected = json_matrix(json_path, names)
    assert torch.equal(expected, parquet_matrix(parquet_path, names)), "JSON and Parquet matrices differ"
    loads = _interleaved({"json": lambda _: _clock(lambda: json_matrix(json_path, names)),
                          "parquet": lambda _: _clock(lambda: parquet_matrix(parquet_path, names))}, reps)
    result = {
        "rows": subset.num_rows, "episodes": episodes,
        "json_write_s": statistics.median(writes["json"]),
        "json_dumps_write_s": statistics.median(writes["json_dumps"]),
        "parquet_write_s": statistics.median(writes["parquet"]),
        "write_ratio": _ratio(writes, "json", "parquet"), "dumps_write_ratio": _ratio(writes, "json_dumps", "parquet"),
        "json_bytes": _size(json_path), "parquet_bytes": _size(parquet_path),
        "json_load_s": statistics.median(loads["json"]), "parquet_load_s": statistics.median(loads["parquet"]),
        "load_ratio": _ratio(loads, "json", "parquet"),
    }
    result["size_ratio"] = result["json_bytes"] / result["parquet_bytes"]
    for path in (json_path, dumps_path, parquet_path):
        _remove(path)
    return result


# ---- 4: tensors ------------------------------------------------------------------------------------

def bench_tensors(path: Path, reps: int) -> dict[str, Any]:
    pack = open_pack(path, verify=False)
    names = pack.feature_names("all")
    files = [str(f) for f in pack.files("steps")]
    columns = [*names, "action", "action_mask"]
    shape = tuple(pack.tensors().features.shape)  # warm-up: page cache, imports, thread pools
    raw = pq.read_table(files, columns=columns)
    assert raw.num_rows == shape[0], f"read_table read {raw.num_rows} rows, tensors() {shape[0]}"
    del raw
    cpu: dict[str, list[float]] = {"read_table": [], "tensors": [], "tensors_verified": []}

    def timed(name: str, fn: Callable[[], Any]) -> Callable[[int], float]:
        """The call timed right after an untimed one of its own, so that Arrow's pool holds what it
        needs: otherwise whichever variant runs second in a repetition pays the kernel for the pages
        the first one's freed memory no longer covers (0.3-0.5 s of system time, measured)."""
        def run(_: int) -> float:
            fn()
            start = time.process_time()
            seconds = _clock(fn)
            cpu[name].append(time.process_time() - start)
            return seconds
        return run

    times = _interleaved({
        "read_table": timed("read_table", lambda: pq.read_table(files, columns=columns)),
        "tensors": timed("tensors", lambda: open_pack(path, verify=False).tensors(features="all")),
        "tensors_verified": timed("tensors_verified", lambda: open_pack(path, verify=True).tensors(features="all")),
    }, reps)
    return {
        "shape": list(shape), "files": len(files),
        "read_table_s": statistics.median(times["read_table"]), "tensors_s": statistics.median(times["tensors"]),
        "tensors_verified_s": statistics.median(times["tensors_verified"]),
        "ratio": _ratio(times, "tensors", "read_table"),
        "verified_ratio": _ratio(times, "tensors_verified", "read_table"), "target": TARGETS["tensors_ratio"],
        "read_table_cpu_s": statistics.median(cpu["read_table"]), "tensors_cpu_s": statistics.median(cpu["tensors"]),
        "cpu_ratio": _ratio(cpu, "tensors", "read_table"),
    }


# ---- 5: DuckDB -------------------------------------------------------------------------------------

def bench_duckdb(path: Path, reps: int) -> dict[str, Any]:

    queries = query_library()
    con = open_pack(path).duckdb()
    threads = int(con.execute("SELECT current_setting('threads')").fetchone()[0])
    try:
        first = {name: _clock(lambda sql=sql: con.execute(sql).fetchall()) for name, sql in queries.items()}
        times: dict[str, list[float]] = {name: [] for name in queries}
        for _ in range(reps):
            for name, sql in queries.items():
                times[name].append(_clock(lambda sql=sql: con.execute(sql).fetchall()))
    finally:
        con.close()
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    return {
        "action_distribution_ms": ms["action_distribution"],
        "action_distribution_target_ms": TARGETS["action_distribution_ms"],
        "queries_ms": ms, "queries_first_ms": {n: 1000 * s for n, s in first.items()},
        "query_target_ms": TARGETS["query_ms"], "threads": threads,
    }


# ---- the run and its report -----------------------------------------------------------------------

def machine() -> dict[str, Any]:
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory = None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": cpus, "memory_gib": memory, "python": platform.python_version(), "pyarrow": pa.__version__,
            "duckdb": duckdb.__version__, "torch": torch.__version__, "numpy": np.__version__}


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    start = time.perf_counter()
    data = make_data(args.steps, args.seed)
    generated = time.perf_counter() - start
    actions = data.steps.column("action").value_counts().to_pylist()
    wait = next(c["counts"] for c in actions if c["values"] == "WAIT") / data.steps.num_rows
    result: dict[str, Any] = {
        "device": f"cpu ({info['processor']}, {info['cpus']} cores)", "machine": info,
        "settings": {"steps": data.steps.num_rows, "episodes": data.episodes.num_rows,
                     "features": len(data.schema.names), "json_rows": args.json_rows, "reps": args.reps,
                     "chunk_episodes": args.chunk_episodes, "seed": args.seed, "quick": args.quick,
                     "row_group_rows": ROW_GROUP_ROWS, "wait_share": round(wait, 3),
                     "generation_s": round(generated, 1)},
    }
    with tempfile.TemporaryDirectory(prefix="pack-io-", dir=args.dir) as tmp:
        result["write"], pack = bench_write(data, Path(tmp), args.reps, args.chunk_episodes)
        result["json"] = bench_json(data, Path(tmp), args.json_rows, args.reps)
        del data
        result["tensors"] = bench_tensors(pack, args.reps)
        result["duckdb"] = bench_duckdb(pack, args.reps)
    result["targets_met"] = {
        "write_ratio": result["write"]["ratio"] <= TARGETS["write_ratio"],
        "tensors_ratio": result["tensors"]["ratio"] <= TARGETS["tensors_ratio"],
        "action_distribution_ms": result["duckdb"]["action_distribution_ms"] <= TARGETS["action_distribution_ms"],
        "every_query_ms": max(result["duckdb"]["queries_ms"].values()) <= TARGETS["query_ms"],
    }
    return result


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _row(measure: str, measured: str, target: str = "-", mark: str = "") -> str:
    return f"{measure:<52} {measured:>12} {target:>10}  {mark}".rstrip()


def report(r: dict[str, Any]) -> None:
    s, w, j, t, d = r["settings"], r["write"], r["json"], r["tensors"], r["duckdb"]
    print(f"device: {r['device']}, {r['machine']['memory_gib']} GiB; pyarrow {r['machine']['pyarrow']}, "
          f"duckdb {r['machine']['duckdb']}")
    print(f"data: {s['steps']:,} steps in {s['episodes']:,} episodes of {EPISODE_STEPS}, {s['features']} features "
          f"(WAIT {s['wait_share']:.0%}); medians of {s['reps']} repetitions")
    print(f"\n{'measure':<52} {'measured':>12} {'target':>10}")
    print(_row("write: PackWriter / bulk write_table (same settings)", f"{w['ratio']:.3f}x",
                     f"<= {w['target']}", _mark(w["ratio"] <= w["target"])))
    print(f"  PackWriter {w['writer_s']:.2f} s, {_mb(w['writer_steps_bytes'])} steps + "
          f"{_mb(w['writer_episodes_bytes'])} episodes in {w['writer_files']} files "
          f"(steps {w['writer_size_ratio']:.3f}x the bulk file)")
    print(f"  bulk write_table {w['bulk_s']:.2f} s, {_mb(w['bulk_bytes'])} (+ fsync {w['bulk_fsync_s']:.2f} s, "
          "not in its time)")
    print(_row("write: pyarrow defaults / tuned settings, time", f"{w['default_time_ratio']:.3f}x"))
    print(_row("write: pyarrow defaults / tuned settings, size", f"{w['default_size_ratio']:.3f}x"))
    print(f"  defaults {w['default_s']:.2f} s, {_mb(w['default_bytes'])}")
    print(f"JSON pack, measured on the first {j['rows']:,} rows only ({j['episodes']:,} episodes), "
          "against tuned Parquet of the same rows:")
    print(_row("  JSON (json.dump) / Parquet write time", f"{j['write_ratio']:.1f}x"))
    print(_row("  JSON (json.dumps, C encoder) / Parquet write time", f"{j['dumps_write_ratio']:.1f}x"))
    print(_row("  JSON / Parquet size", f"{j['size_ratio']:.1f}x"))
    print(_row("  JSON / Parquet load into a float32 tensor", f"{j['load_ratio']:.1f}x"))
    print(f"  JSON {_mb(j['json_bytes'])}, write {j['json_write_s']:.2f} s (dumps {j['json_dumps_write_s']:.2f} s), "
          f"load {j['json_load_s']:.2f} s; "
          f"Parquet {_mb(j['parquet_bytes'])}, write {j['parquet_write_s']:.3f} s, load {j['parquet_load_s']:.3f} s")
    print(_row('tensors(features="all") / read_table, verify=False', f"{t['ratio']:.3f}x",
                     f"<= {t['target']}", _mark(t["ratio"] <= t["target"])))
    print(_row('tensors(features="all") / read_table, verify=True', f"{t['verified_ratio']:.3f}x",
                     f"<= {t['target']}", _mark(t["verified_ratio"] <= t["target"])))
    print(_row('tensors(features="all") / read_table, CPU time (all threads)', f"{t['cpu_ratio']:.3f}x"))
    print(f"  read_table {t['read_table_s']:.3f} s, tensors {t['tensors_s']:.3f} s, "
          f"verified {t['tensors_verified_s']:.3f} s -> {t['shape'][0]:,} x {t['shape'][1]} from {t['files']} files")
    print(_row("duckdb action_distribution", f"{d['action_distribution_ms']:.1f} ms",
                     f"<= {d['action_distribution_target_ms']:.0f} ms",
                     _mark(d["action_distribution_ms"] <= d["action_distribution_target_ms"])))
    for name, ms in d["queries_ms"].items():
        print(_row(f"  duckdb {name}", f"{ms:.1f} ms", f"<= {d['query_target_ms']:.0f} ms",
                         _mark(ms <= d["query_target_ms"]) + f" (first run {d['queries_first_ms'][name]:.0f} ms)"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="100,000 steps, JSON on 10,000, 2 repetitions")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--steps", type=int, help="decision steps (default 1,000,000)")
    p.add_argument("--json-rows", type=int, help="rows of the JSON comparison (default 50,000)")
    p.add_argument("--reps", type=int, help="repetitions per measurement (default 3)")
    p.add_argument("--chunk-episodes", type=int, default=1000, help="episodes per add_episodes call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", help="where the temporary files go (default: the system's temporary folder)")
    args = p.parse_args(argv)
    preset = {"steps": 100_000, "json_rows": 10_000, "reps": 2} if args.quick else \
        {"steps": 1_000_000, "json_rows": 50_000, "reps": 3}
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < EPISODE_STEPS or args.json_rows < EPISODE_STEPS or args.reps < 1:
        p.error(f"--steps and --json-rows must be at least {EPISODE_STEPS}, --reps at least 1")
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
