"""The architecture, checked on the source: the library stands alone and the pipelines are layered.

Every import statement of every module is read from its syntax tree (imports inside functions
too), so a lazy import cannot slip past.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support import REPO

# pipelines layer -> the layers it may import (the package docstrings say the same)
PIPELINE_LAYERS = {
    "environment": set(),
    "policies": {"environment"},
    "generation": {"policies", "environment"},
    "training": {"policies", "environment"},
    "experiment": {"generation", "training", "policies", "environment"},
}
# what the pipelines may import of the library: its public surfaces only
LIBRARY_SURFACES = {"telemetry", "telemetry.packs", "telemetry.cli"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def offending(paths: list[Path], bad) -> list[str]:
    return [f"{p.relative_to(REPO)}:{line}: {name}" for p in paths for line, name in imports(p) if bad(p, name)]


def _is_pipelines(name: str) -> bool:
    return name == "pipelines" or name.startswith("pipelines.")


def test_the_library_never_imports_the_pipelines():
    assert len(sources("telemetry")) > 20
    assert offending(sources("telemetry"), lambda p, name: _is_pipelines(name)) == []


def test_the_library_tests_never_import_the_pipelines():
    library_tests = sources("tests/telemetry") + sources("tests/support")
    assert any(p.name.startswith("test_") for p in library_tests)
    assert offending(library_tests, lambda p, name: _is_pipelines(name)) == []


def _layer(path: Path) -> str | None:
    parts = path.relative_to(REPO / "pipelines").parts
    return parts[0] if len(parts) > 1 else None


def test_each_pipeline_layer_imports_only_the_layers_below_it():
    def bad(path: Path, name: str) -> bool:
        layer = _layer(path)
        if layer is None or not _is_pipelines(name) or name == "pipelines":
            return False
        target = name.split(".")[1]
        return target != layer and target not in PIPELINE_LAYERS[layer]

    paths = sources("pipelines")
    assert {_layer(p) for p in paths} - {None} == set(PIPELINE_LAYERS)
    assert offending(paths, bad) == []


def test_the_pipelines_use_only_the_library_public_surface():
    def bad(path: Path, name: str) -> bool:
        return name.startswith("telemetry") and name not in LIBRARY_SURFACES

    assert offending(sources("pipelines") + sources("benchmarks"), bad) == []


@pytest.mark.parametrize("layer", sorted(PIPELINE_LAYERS))
def test_each_layer_says_what_it_may_import(layer: str):
    doc = ast.get_docstring(ast.parse((REPO / "pipelines" / layer / "__init__.py").read_text())) or ""
    assert "May import:" in doc
    allowed = doc.split("May import:")[1]
    for other in PIPELINE_LAYERS:
        assert (other in allowed) == (other in PIPELINE_LAYERS[layer]), (layer, other)


def test_the_checker_sees_lazy_imports(tmp_path: Path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from pipelines.environment import host\n    import pipelines.cli as c\n")
    assert [name for _, name in imports(sample)] == ["pipelines.environment", "pipelines.cli"]
