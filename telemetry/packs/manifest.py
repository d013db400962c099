"""The pack manifest: the one file that says what a pack is and which data files belong to it.

A pack's data files are only data; `manifest.json` is the commit record. It holds the resolved
telemetry config, the feature schema, the canonical Arrow schemas every reader is handed, the list
of committed files with row counts, sizes and sha256 checksums, quick stats and provenance. Each
commit's manifest is written into that commit's version folder, which one atomic rename publishes
(see commit.py), so a reader sees either the previous commit or the next one.

`schemas/manifest.schema.json` is generated from these models (`python -m telemetry.packs.manifest`);
a test fails when the committed file is stale.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from telemetry.bounded import read_json
from telemetry.config import TelemetryConfig
from telemetry.errors import PackError
from telemetry.packs.quick_stats import QuickStats, merge_all
from telemetry.packs.tables import SPLIT_COLUMN

if TYPE_CHECKING:  # the feature schema module imports torch; reading a manifest should not need it
    from telemetry.feature_schema import FeatureSchema

FORMAT_VERSION = "1.1"  # 1.1: `columns`, and a dataset card (README.md) beside the manifest
MANIFEST_NAME = "manifest.json"
SCHEMA_FILE = "manifest.schema.json"
TABLES = ("steps", "episodes")

Table = Literal["steps", "episodes"]

# Unknown fields are kept, so a reader of an older minor version neither fails nor drops them.
_OPEN = ConfigDict(extra="allow")


class FileEntry(BaseModel):
    """A committed data file; readers open exactly these and check size and checksum first."""

    model_config = _OPEN

    path: str = Field(description="path relative to the pack, '/'-separated")
    table: Table
    split: str
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _inside_pack(cls, path: str) -> str:
        """A hand-edited '../x' or absolute path would make readers open a file outside the pack."""
        parts = path.split("/")
        if any(p in ("", ".", "..") for p in parts) or "\\" in path or "\0" in path or ":" in parts[0]:
            raise ValueError(f"{path!r} is not a plain relative path inside the pack "
                             "(no absolute path, '..', '.', empty part or backslash)")
        return path


class FeatureSpecEntry(BaseModel):
    model_config = _OPEN

    name: str
    group: str
    dtype: Literal["float32", "float64", "int32", "int64"]
    unit: str
    description: str


class FeatureSchemaEntry(BaseModel):
    """Groups, ordered specs and `_index` (feature name -> position in the feature block)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    groups: dict[str, list[str]]
    features: list[FeatureSpecEntry]
    index: dict[str, int] = Field(alias="_index")

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSchemaEntry:
        names = [f.name for f in self.features]
        if self.index != {n: i for i, n in enumerate(names)}:
            raise ValueError("_index does not match the order of features")
        grouped: dict[str, list[str]] = {}
        for f in self.features:
            grouped.setdefault(f.group, []).append(f.name)
        if self.groups != grouped:
            raise ValueError("groups do not match the features' groups")
        return self

    @classmethod
    def of(cls, schema: FeatureSchema) -> FeatureSchemaEntry:
        return cls.model_validate(schema.to_dict())

    def to_schema(self) -> FeatureSchema:
        from telemetry.feature_schema import FeatureSchema, FeatureSpec

        return FeatureSchema(tuple(FeatureSpec(**f.model_dump(include=set(FeatureSpec.__dataclass_fields__)))
                                   for f in self.features))


class ColumnEntry(BaseModel):
    """One column of a table described for readers without this project's source (see columns.py)."""

    model_config = _OPEN

    name: str
    table: Table
    dtype: str = Field(description="Arrow type, e.g. float32, string, list<bool>, list<struct<action: string, ...>>")
    unit: str = Field(description="unit of the values; '-' for names, text and identifiers")
    description: str
    group: str | None = Field(default=None, description="the feature group, for feature columns")
    codes: dict[str, str] | None = Field(
        default=None, description="for coded columns: stored value (or list position) -> meaning")


class Provenance(BaseModel):
    """Where the data came from; callers add their own keys (dataset, seeds, host model, ...)."""

    model_config = _OPEN

    esper_version: str | None = None
    python_version: str | None = None
    torch_version: str | None = None
    pyarrow_version: str | None = None
    platform: str | None = None
    hostname: str | None = None
    command_line: list[str] = []
    host_model: dict[str, Any] | None = None
    dataset: str | None = None
    seeds: list[int] | None = None


class Manifest(BaseModel):
    """Everything needed to read, slice and trust a pack, written last at every commit."""

    model_config = _OPEN

    format_version: str = Field(default=FORMAT_VERSION, pattern=r"^\d+\.\d+$")
    pack_id: str
    created_at: datetime
    committed_at: datetime
    commit: int = Field(ge=0, description="number of commits so far; 0 is the empty pack")
    telemetry_config: TelemetryConfig
    feature_schema: FeatureSchemaEntry
    profiles: dict[str, list[str]] = Field(
        default_factory=dict, description="profile name -> its feature names for this pack's model, in order")
    actions: list[str] = Field(description="action vocabulary; label indices and action_mask positions")
    splits: dict[str, float] = Field(description="split name -> fraction of episodes (by episode id hash)")
    arrow_schemas: dict[Table, str] = Field(description="canonical Arrow schema per table, base64 Arrow IPC")
    quick_stats: QuickStats = Field(description="stats of the whole pack (the merge of split_stats)")
    split_stats: dict[str, QuickStats]
    files: list[FileEntry]
    provenance: Provenance
    columns: list[ColumnEntry] = Field(
        default_factory=list, description="every column of both tables described (empty in packs before 1.1)")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("files lists a path twice")
        for f in self.files:
            if f.split not in self.splits:
                raise ValueError(f"file {f.path} is in split {f.split!r}, which splits does not define")
        missing = [t for t in TABLES if t not in self.arrow_schemas]
        if missing:
            raise ValueError(f"arrow_schemas lacks table {missing[0]!r}")
        decoded = {}
        for table, text in self.arrow_schemas.items():
            try:
                decoded[table] = decode_schema(text)
            except (ValueError, pa.ArrowException) as exc:  # binascii.Error is a ValueError
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ValueError(f"arrow_schemas.{table} is not a base64 Arrow IPC schema ({reason})") from None
        for table in TABLES if self.columns else ():
            described = [c.name for c in self.columns if c.table == table]
            if described != [*decoded[table].names, SPLIT_COLUMN]:
                raise ValueError(f"columns do not describe the {table} table's columns in order")
        return self

    def arrow_schema(self, table: Table) -> pa.Schema:
        return decode_schema(self.arrow_schemas[table])

    def features(self) -> FeatureSchema:
        return self.feature_schema.to_schema()

    def files_of(self, table: Table, splits: Iterable[str] | None = None) -> list[FileEntry]:
        wanted = None if splits is None else set(splits)
        return [f for f in self.files if f.table == table and (wanted is None or f.split in wanted)]

    def with_commit(self, files: list[FileEntry], split_stats: dict[str, QuickStats],
                    when: datetime) -> Manifest:
        """The next commit's manifest: same identity and schema, new files and stats.

        A pack written before format 1.1 gains its column descriptions here, with its next commit."""
        from telemetry.packs.columns import described_columns

        newer = max(self.format_version, FORMAT_VERSION, key=lambda v: tuple(int(p) for p in v.split(".")))
        return self.model_copy(update={
            "format_version": newer,
            "columns": described_columns(self),
            "commit": self.commit + 1,
            "committed_at": when,
            "files": files,
            "split_stats": split_stats,
            "quick_stats": merge_all(split_stats.values()),
        })

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=1) + "\n"


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def decode_schema(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def _check_format_version(value: Any, where: Path) -> None:
    major_supported = int(FORMAT_VERSION.split(".")[0])
    parts = str(value).split(".") if isinstance(value, str) else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise PackError(f"{where}: format_version is {value!r}; "
                        f"expected 'MAJOR.MINOR' such as {FORMAT_VERSION!r}")
    if int(parts[0]) > major_supported:
        raise PackError(f"{where}: format_version {value} is newer than this esper-telemetry reads "
                        f"({major_supported}.x); upgrade esper-telemetry to read this pack")


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{where}: {err['msg']}"


def read_manifest(pack: str | os.PathLike[str]) -> Manifest:
    """The pack's last commit; anything that is not a readable manifest is a one-line PackError."""
    root = Path(pack)
    if not root.exists():
        raise PackError(f"{root}: no such pack (the path does not exist)")
    path = root / MANIFEST_NAME
    if not root.is_dir() or not path.is_file() or not _inside(root, path):  # `current` can be made to lead out
        from telemetry.packs.current_link import broken_current  # current_link.py imports this module

        raise PackError(broken_current(root) if root.is_dir() and broken_current(root) else
                        f"{root}: not a pack (expected a directory holding {MANIFEST_NAME})")
    return read_manifest_file(path)


def _inside(root: Path, path: Path) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)


def read_manifest_file(path: Path) -> Manifest:
    """One manifest file (a pack's, or a version folder's), bounded in size and nesting depth."""
    data = read_json(path, PackError)
    if not isinstance(data, dict):
        raise PackError(f"{path}: expected a JSON object, got {type(data).__name__}")
    _check_format_version(data.get("format_version"), path)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise PackError(f"{path}: {_describe(exc)}") from None


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """The sha256 a manifest records for a file, read in 4 MiB blocks (the one file-hash helper)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def named_os_error(exc: OSError, path: Path) -> OSError:
    """`exc` with `path` as its filename: errors of write() and fsync() do not say which file failed."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


# fsync of a directory is unsupported on some filesystems; any other failure (ENOSPC, EIO) is real
_FSYNC_DIR_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable (no-op where directories cannot be fsynced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _FSYNC_DIR_UNSUPPORTED:
            raise named_os_error(exc, path) from exc
    finally:
        os.close(fd)


def write_manifest_file(path: Path, text: str) -> None:
    """Write a manifest into a version folder no reader sees yet and fsync it (see commit.py)."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # e.g. ENOSPC: name the file (write and fsync errors carry no name)
        path.unlink(missing_ok=True)
        raise named_os_error(exc, path) from exc


def manifest_json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "esper-telemetry/manifest.schema.json", **schema}


def render_json_schema() -> str:
    return json.dumps(manifest_json_schema(), indent=2) + "\n"


def packaged_json_schema() -> str:
    """The committed schema file, as installed with the package."""
    return resources.files("telemetry.schemas").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def write_json_schema(path: str | os.PathLike[str] | None = None) -> Path:
    """Regenerate the schema file (by default the one in the source tree's schemas/ folder)."""
    target = Path(path) if path is not None else Path(__file__).resolve().parents[2] / "schemas" / SCHEMA_FILE
    target.write_text(render_json_schema(), encoding="utf-8")
    return target


if __name__ == "__main__":
    print(write_json_schema(sys.argv[1] if len(sys.argv) > 1 else None))
