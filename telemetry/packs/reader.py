"""Reading a pack as Arrow tables, a polars LazyFrame, DuckDB views or torch tensors.

Every reader takes its file list from the manifest and is handed the manifest's canonical Arrow
schema, so files written by different commits read as one table and a file no commit lists is never
read. Files are read from the opened manifest's own version folder (`.versions/<commit>`, see
commit.py), not through `current`, so a commit (a compaction that drops files included) never
changes what an open Pack reads; the writer keeps that folder one commit longer. A file whose real
path lies outside the pack (a planted link) is refused. Before a file is first read its size is
compared with the manifest, and once per Pack its footer's row count, its columns (a file of another
profile would read as nulls) and, with `verify=True` (the default), its sha256 too; a mismatch
is a PackError naming it. The row counts of each split's files must add up to its quick stats.
`verify=False` therefore still catches missing, truncated, extended or foreign files and edited row
counts, but not a same-size change to a file's bytes (a flipped bit): only the sha256 pass sees that.
Every surface adds a `split` column, as hive partitioning would, so SQL written against a plain
`read_parquet('PACK/steps/**/*.parquet', hive_partitioning=true)` runs unchanged.

    pack = open_pack("runs/pack")
    x, y, mask, names = pack.tensors(features="standard", split="train", normalize=True)
    pack.duckdb().sql("SELECT action, count(*) FROM decisions GROUP BY ALL").show()
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from telemetry.errors import PackError
from telemetry.packs.commit import inside, is_versioned, version_dir
from telemetry.packs.file_schema import schema_difference
from telemetry.packs.manifest import MANIFEST_NAME, TABLES, FileEntry, Manifest, Table, file_sha256, read_manifest
from telemetry.packs.quick_stats import ColumnStats
from telemetry.packs.tables import SPLIT_COLUMN

if TYPE_CHECKING:
    import duckdb
    import polars as pl
    import torch

LABEL_COLUMNS = ("action", "best_action", "expert_action")  # steps columns of action names a label may come from
NO_ACTION = -100  # torch's default ignore_index: unlabelled steps drop out of cross_entropy


class PackTensors(NamedTuple):
    features: torch.Tensor  # float32 [rows, features], C-contiguous
    actions: torch.Tensor  # int64 [rows]: index into manifest.actions, NO_ACTION where unlabelled
    action_mask: torch.Tensor  # bool [rows, actions]: valid actions (all True where not recorded)
    names: list[str]  # the feature name of each column


def open_pack(path: str | os.PathLike[str], verify: bool = True) -> Pack:
    """Open a committed pack; `verify=False` skips the sha256 pass (sizes and row counts are still checked)."""
    root = Path(path)
    return Pack(root, read_manifest(root), verify)


class Pack:
    """One committed pack, read through its manifest: Arrow tables, polars, DuckDB views, tensors.

    Open it with `open_pack`; a `Pack` keeps reading the commit it opened (its manifest) even while
    a writer commits more. Every file is checked before it is first read (size always; row count
    and, with `verify`, sha256 once per Pack).

    Args:
        root: the pack folder.
        manifest: the commit to read (`read_manifest(root)`).
        verify: check each file's sha256 before its first read.

    Example:

        pack = open_pack("runs/demo")
        train = pack.steps(split="train", columns=["episode_id", "step", "val_loss", "action"])
        x, y, mask, names = pack.tensors(features="minimal", split="train", normalize=True)
        pack.duckdb().sql("SELECT action, count(*) FROM steps GROUP BY ALL").show()
    """

    def __init__(self, root: Path, manifest: Manifest, verify: bool = True) -> None:
        self.path = root
        self.manifest = manifest
        self.verify = verify
        self._schemas = {t: manifest.arrow_schema(t) for t in TABLES}
        self._verified: set[str] = set()
        # where this manifest's files stay while newer commits happen (None: an older layout, or a copy
        # that followed the links, whose real table folders are the pack)
        version = version_dir(root, manifest.commit)
        self._version = version if is_versioned(root) and (version / MANIFEST_NAME).is_file() else None

    def __repr__(self) -> str:
        s = self.manifest.quick_stats
        commit = self.manifest.commit
        return f"Pack({str(self.path)!r}, episodes={s.episodes}, steps={s.steps}, commit={commit})"

    # ---- files ---------------------------------------------------------------------------------
    def schema(self, table: Table = "steps") -> pa.Schema:
        """The canonical Arrow schema of a table (without the `split` column readers add)."""
        return self._schemas[_table(table)]

    def files(self, table: Table = "steps", split: str | Sequence[str] | None = None) -> list[Path]:
        """Checked paths of the committed files of a table, in commit order."""
        table, splits = _table(table), self._splits(split)
        entries = self.manifest.files_of(table, splits)
        if self.verify and sum(e.path not in self._verified for e in entries) > 1:
            # hashing releases the GIL: files are checked side by side; map raises the first damaged
            # file in commit order, whichever finishes first
            with ThreadPoolExecutor(max_workers=min(len(entries), os.cpu_count() or 1)) as pool:
                paths = list(pool.map(self._checked, entries))
        else:
            paths = [self._checked(e) for e in entries]
        for name in splits:
            self._check_counts(table, name)
        return paths

    def _checked(self, entry: FileEntry) -> Path:
        """Size on every call; once per Pack, the footer's row count and (with verify) the sha256.

        Returns the path to open; messages name the file as the manifest does (`PACK/<entry.path>`).
        """
        named, path = self.path / entry.path, (self._version or self.path) / entry.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise PackError(f"{named}: listed in manifest.json but missing") from None
        except OSError as exc:
            raise PackError(f"{named}: cannot read ({exc.strerror or exc})") from None
        if size != entry.bytes:
            raise PackError(f"{named}: {size} bytes but manifest.json says {entry.bytes} "
                            "(damaged or replaced)")
        if entry.path not in self._verified:
            if not inside(self.path, path):
                raise PackError(f"{named}: leads outside the pack (through a symbolic link); "
                                f"run `esper validate {self.path}`")
            if self.verify and _sha256_of(path, named) != entry.sha256:
                raise PackError(f"{named}: sha256 does not match manifest.json (damaged)")
            try:
                meta = pq.read_metadata(path)
                found = meta.schema.to_arrow_schema()
            except (OSError, pa.ArrowException, ValueError) as exc:  # a damaged footer can fail to decode
                raise PackError(f"{named}: not readable as Parquet ({str(exc).splitlines()[0]})") from None
            if meta.num_rows != entry.rows:
                raise PackError(f"{named}: {meta.num_rows} rows but manifest.json says {entry.rows} "
                                "(damaged or edited)")
            difference = schema_difference(found, self._schemas[entry.table])
            if difference:
                raise PackError(f"{named}: {difference} in the pack's {entry.table} schema (a file of another "
                                f"pack or profile?); run `esper validate {self.path}`")
            self._verified.add(entry.path)
        return path

    def _check_counts(self, table: Table, split: str) -> None:
        """The files' row counts must add up to the split's quick stats (a removed entry does not)."""
        stats = self.manifest.split_stats.get(split)
        listed = sum(e.rows for e in self.manifest.files_of(table, [split]))
        counted = None if stats is None else stats.steps if table == "steps" else stats.episodes
        if counted is not None and listed != counted:
            raise PackError(f"{self.path / MANIFEST_NAME}: the {table} files of split {split!r} list {listed} "
                            f"rows but its quick stats count {counted} (a file entry edited or removed?); "
                            f"run `esper validate {self.path}`")

    def _splits(self, split: str | Sequence[str] | None) -> list[str]:
        names = list(self.manifest.splits)
        if split is None:
            return names
        wanted = [split] if isinstance(split, str) else list(split)
        unknown = [s for s in wanted if s not in names]
        if unknown:
            raise PackError(f"{self.path}: no split {unknown[0]!r}; the pack's splits are {', '.join(names)}")
        return wanted

    # ---- Arrow ---------------------------------------------------------------------------------
    def steps(self, split: str | Sequence[str] | None = None, episodes: str | Iterable[str] | None = None,
              columns: Sequence[str] | None = None) -> pa.Table:
        """Decision steps (identity, features, decisions, split), optionally filtered and projected."""
        return self._read("steps", split, episodes, columns)

    def episodes(self, split: str | Sequence[str] | None = None, episodes: str | Iterable[str] | None = None,
                 columns: Sequence[str] | None = None) -> pa.Table:
        """One row per episode (summary, outcome, seeds, split)."""
        return self._read("episodes", split, episodes, columns)

    def _read(self, table: Table, split: str | Sequence[str] | None, episodes: str | Iterable[str] | None,
              columns: Sequence[str] | None) -> pa.Table:
        columns = self._columns(table, columns)
        stored = [c for c in columns if c != SPLIT_COLUMN]
        parts = []
        for name in self._splits(split):
            for batch_table in self._scan(table, name, stored, episodes, as_table=True):
                if SPLIT_COLUMN in columns:
                    batch_table = batch_table.append_column(SPLIT_COLUMN,
                                                            pa.repeat(pa.scalar(name), batch_table.num_rows))
                parts.append(batch_table.select(columns))
        if not parts:
            return self._output_schema(table, columns).empty_table()
        return pa.concat_tables(parts)

    def _output_schema(self, table: Table, columns: list[str]) -> pa.Schema:
        full = self._schemas[table].append(pa.field(SPLIT_COLUMN, pa.string()))
        return pa.schema([full.field(c) for c in columns])

    def _columns(self, table: Table, columns: Sequence[str] | None) -> list[str]:
        available = [*self._schemas[table].names, SPLIT_COLUMN]
        if columns is None:
            return available
        if isinstance(columns, str):
            raise PackError(f"{table}: columns must be a list of names, got the string {columns!r}")
        unknown = [c for c in columns if c not in available]
        if unknown:
            raise PackError(f"{self.path}: the {table} table has no column {unknown[0]!r}")
        return list(columns)

    def _scan(self, table: Table, split: str, columns: list[str], episodes: str | Iterable[str] | None,
              as_table: bool) -> Iterator[Any]:
        """The split's rows through a pyarrow dataset over exactly the manifest's files."""
        paths = [str(p) for p in self.files(table, split)]
        if not paths:
            return
        expression = None
        if episodes is not None:
            ids = [episodes] if isinstance(episodes, str) else list(episodes)
            expression = ds.field("episode_id").isin(pa.array(ids, pa.string()))
        try:  # a file can vanish between the checks and the scan (a writer compacting meanwhile)
            dataset = ds.dataset(paths, schema=self._schemas[table], format="parquet")
            if as_table:
                yield dataset.to_table(columns=columns, filter=expression)
            else:
                yield from dataset.to_batches(columns=columns, filter=expression)
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise self._unreadable(exc, f"{table} file of split {split!r}", f"{table} files of split {split!r}",
                                   str(exc).splitlines()[0]) from None

    def _unreadable(self, exc: Exception, file: str, files: str, detail: str) -> PackError:
        """A failed scan, told apart: a file a compaction removed after this Pack opened, or damage."""
        text = " ".join(str(exc).split())
        if isinstance(exc, FileNotFoundError) or "No such file" in text:
            return PackError(f"{self.path}: a {file} is missing ({text}); a writer compacted the pack after it "
                             "was opened: open it again")
        return PackError(f"{self.path}: cannot read the {files}: {detail}")

    # ---- polars --------------------------------------------------------------------------------
    def lazy(self, table: Table = "steps", split: str | Sequence[str] | None = None) -> pl.LazyFrame:
        """A polars LazyFrame over the committed files (projection and predicates push down)."""
        import polars as pl

        table = _table(table)
        schema = dict(pl.from_arrow(self._schemas[table].empty_table()).schema)
        frames = []
        for name in self._splits(split):
            paths = [str(p) for p in self.files(table, name)]
            if paths:
                scan = pl.scan_parquet(paths, schema=schema, glob=False, hive_partitioning=False,
                                       missing_columns="insert")
                frames.append(scan.with_columns(pl.lit(name, dtype=pl.String).alias(SPLIT_COLUMN)))
        if not frames:
            return pl.LazyFrame(schema={**schema, SPLIT_COLUMN: pl.String})
        return pl.concat(frames, how="vertical")

    # ---- DuckDB --------------------------------------------------------------------------------
    def duckdb(self, connection: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
        """A connection (new in-memory, or the one given) with views steps, episodes and decisions."""
        import duckdb

        con = connection or duckdb.connect()
        for table in TABLES:
            con.execute(f"CREATE OR REPLACE VIEW {table} AS {self.view_sql(table)}")
        con.execute("CREATE OR REPLACE VIEW decisions AS SELECT * FROM steps WHERE action <> 'WAIT'")
        return con

    def view_sql(self, table: Table) -> str:
        """The SELECT behind a DuckDB view: the manifest's files, cast to the canonical schema.

        One read_parquet over the whole list (DuckDB parallelises and prunes `split=` folders);
        the split comes from the `split=NAME` folder, or from the file name where a folder above
        the pack also looks like a hive partition and would confuse DuckDB's partition parsing.
        """
        table = _table(table)
        schema = self._schemas[table]
        paths = [os.path.abspath(p) for p in self.files(table)]
        if not paths:
            cols = ", ".join(f"CAST(NULL AS {_duck_type(f.type)}) AS {_ident(f.name)}" for f in schema)
            return f"SELECT {cols}, CAST(NULL AS VARCHAR) AS {SPLIT_COLUMN} WHERE false"
        cols = ", ".join(f"CAST({_ident(f.name)} AS {_duck_type(f.type)}) AS {_ident(f.name)}"
                         for f in schema)
        listed = ", ".join(_sql_string(p) for p in paths)
        if "=" in os.path.abspath(self.path):
            split = "regexp_extract(filename, '/split=([^/]+)/[^/]*$', 1)"
            return f"SELECT {cols}, {split} AS {SPLIT_COLUMN} FROM read_parquet([{listed}], filename = true)"
        return (f"SELECT {cols}, {SPLIT_COLUMN} FROM read_parquet([{listed}], hive_partitioning = true, "
                f"hive_types = {{'{SPLIT_COLUMN}': VARCHAR}})")

    # ---- torch ---------------------------------------------------------------------------------
    def feature_names(self, features: str | Sequence[str] = "all") -> list[str]:
        """Resolve a selection: "all", a profile name, a group name, feature names, or a list of these.

        A profile gives exactly its recorded names in its own order; a group its features in schema
        order; explicit names keep the order given. Duplicates are dropped, first occurrence kept.
        """
        items = [features] if isinstance(features, str) else list(features)
        if not items:
            raise PackError("features: empty selection; expected 'all', a profile, a group or feature names")
        schema = self.manifest.feature_schema
        index = schema.index
        out: list[str] = []
        for item in items:
            out += self._expand(item, schema.groups, index)
        return list(dict.fromkeys(out))

    def _expand(self, item: str, groups: dict[str, list[str]], index: dict[str, int]) -> list[str]:
        profiles = self.manifest.profiles
        if item == "all":
            return list(index)
        if item in profiles:
            missing = [n for n in profiles[item] if n not in index]
            if missing:
                raise PackError(f"features: profile {item!r} needs {len(missing)} features this pack lacks "
                                f"(e.g. {missing[0]!r})")
            return list(profiles[item])
        if item in groups:
            return list(groups[item])
        if item in index:
            return [item]
        raise PackError(f"features: {item!r} is not a profile ({', '.join(profiles) or 'none recorded'}), "
                        f"a group ({', '.join(groups)}) or a feature of this pack")

    def tensors(self, features: str | Sequence[str] = "all", split: str | Sequence[str] | None = None,
                episodes: str | Iterable[str] | None = None,
                normalize: bool | str | tuple[np.ndarray, np.ndarray] = False,
                labels: str = "action") -> PackTensors:
        """Features as one float32 matrix, with action labels and valid-action masks.

        `labels` names the steps column of action names the labels come from: "action" (what the
        behaviour policy did), "best_action" (the counterfactual oracle's choice, null where the
        step was not branched) or "expert_action" (the privileged expert's, every step). A null
        label is NO_ACTION, which torch's cross-entropy ignores.

        Nulls become 0.0. With `normalize`, each feature is standardised with quick-stat mean and
        std (population, finite values) before nulls are filled, so a null lands on the mean:
        True uses the train split's stats (no leakage from validation data), a split name that
        split's, "all" the whole pack's; a (centre, scale) pair, one value per feature, another
        pack's (rows of several packs standardised alike). NaN and Inf values pass through
        unchanged. Integer features become float32 (exact up to 2**24, which covers epochs,
        stages and slot counts).

        The arrays live in memory from Arrow's default pool, like `read_table`'s: once freed, it
        is kept for the next load rather than returned to the system
        (`pyarrow.default_memory_pool().release_unused()` returns it).
        """
        names = self.feature_names(features)
        centre, scale = self.normalization(names, normalize)
        if labels not in LABEL_COLUMNS:
            raise PackError(f"labels: {labels!r}; expected one of {', '.join(map(repr, LABEL_COLUMNS))}")
        return self._matrix(names, split, episodes, centre, scale, labels)

    def _matrix(self, names: list[str], split: str | Sequence[str] | None, episodes: str | Iterable[str] | None,
                centre: np.ndarray | None, scale: np.ndarray | None, labels: str) -> PackTensors:
        """Row groups read in parallel straight into the matrix, each into its own rows (matrix.py)."""
        import torch

        from telemetry.packs.matrix import read_matrix

        splits = self._splits(split)
        paths = [p for name in splits for p in self.files("steps", name)]
        rows = sum(e.rows for e in self.manifest.files_of("steps", splits))
        wanted = None if episodes is None else [episodes] if isinstance(episodes, str) else list(episodes)
        try:  # a file can vanish between the checks and the reads (a writer compacting meanwhile)
            out = read_matrix(paths, rows, names, labels, self.manifest.actions, centre, scale, NO_ACTION, wanted)
        except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
            detail = f"{' '.join(str(exc).split())}; run `esper validate {self.path}`"
            raise self._unreadable(exc, "steps file", "steps files", detail) from None
        return PackTensors(torch.from_numpy(out.features), torch.from_numpy(out.labels),
                           torch.from_numpy(out.masks), names)

    def normalization(self, names: list[str], normalize: bool | str | tuple[np.ndarray, np.ndarray] = True
                      ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(centre, scale) per feature as `tensors(normalize=...)` applies them; (None, None) for False.

        A saved policy keeps these so it standardises live rows exactly as its training data was."""
        if normalize is False:
            return None, None
        if isinstance(normalize, tuple):
            return _given_normalization(names, normalize)
        if normalize is True or normalize == "train":
            if "train" not in self.manifest.split_stats:
                raise PackError("normalize=True uses the train split's stats, "
                                "but this pack has no 'train' split")
            stats = self.manifest.split_stats["train"]
        elif normalize == "all":
            stats = self.manifest.quick_stats
        elif isinstance(normalize, str) and normalize in self.manifest.split_stats:
            stats = self.manifest.split_stats[normalize]
        else:
            raise PackError(f"normalize: {normalize!r}; expected False, True, 'all' or a split name")
        empty = ColumnStats()
        means = [stats.columns.get(n, empty).mean for n in names]
        stds = [stats.columns.get(n, empty).std for n in names]
        centre = np.array([m if m is not None else 0.0 for m in means], dtype=np.float32)
        scale = np.array([s if s else 1.0 for s in stds], dtype=np.float32)
        return centre, scale


def _given_normalization(names: list[str], given: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    centre, scale = (np.asarray(v, dtype=np.float32) for v in given)
    if centre.shape != (len(names),) or scale.shape != (len(names),):
        raise PackError(f"normalize: a (centre, scale) pair of {centre.shape} and {scale.shape} values; expected "
                        f"one per feature ({len(names)})")
    if not (np.isfinite(centre).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise PackError("normalize: centre and scale must be finite, and scale > 0")
    return centre, scale


def _sha256_of(path: Path, named: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise PackError(f"{named}: cannot read ({exc.strerror or exc})") from None


def _table(table: str) -> Table:
    if table not in TABLES:
        raise PackError(f"no table {table!r}; a pack has tables {', '.join(TABLES)}")
    return table  # type: ignore[return-value]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_DUCK_SCALARS = {
    pa.string(): "VARCHAR", pa.large_string(): "VARCHAR", pa.bool_(): "BOOLEAN",
    pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
    pa.float32(): "FLOAT", pa.float64(): "DOUBLE",
}


def _duck_type(type_: pa.DataType) -> str:
    """The DuckDB spelling of an Arrow type of the pack schemas."""
    if type_ in _DUCK_SCALARS:
        return _DUCK_SCALARS[type_]
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return f"{_duck_type(type_.value_type)}[]"
    if pa.types.is_struct(type_):
        fields = (type_.field(i) for i in range(type_.num_fields))
        return "STRUCT(" + ", ".join(f"{_ident(f.name)} {_duck_type(f.type)}" for f in fields) + ")"
    raise PackError(f"Arrow type {type_} has no DuckDB mapping in this reader")
