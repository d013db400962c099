#!/usr/bin/env bash
# Create .venv and install the project with its test tools and the Ray extra (the engine tests run a
# real Ray cluster). Idempotent and fast when nothing changed.
# torch is installed first, pinned to a CPU build where one is on hand, so pip never pulls a
# multi-GB CUDA build just to satisfy the dependency. TORCH_INDEX=<url> picks another wheel index
# (for example the CPU index of download.pytorch.org on a machine that reaches it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" >/dev/null 2>&1; then
    echo "bootstrap: installing torch (CPU build)" >&2
    if [ -n "${TORCH_INDEX:-}" ]; then
        pip install -q "torch==${TORCH_VERSION:-2.13.0}" --index-url "$TORCH_INDEX"
    else
        pip install -q "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "^WARNING: Location" >&2 || true
    fi
    python -W ignore -c "import torch" 2>/dev/null || { echo "bootstrap: torch failed to install" >&2; exit 1; }
fi
stamp=.venv/.esper-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: installing esper-telemetry and its dependencies" >&2
    torch_before=$(pip show torch 2>/dev/null | sed -n 's/^Version: //p')
    pip install -q -e '.[dev,ray]' 2>&1 | grep -v "^WARNING: Location" >&2 || true
    python -c "import telemetry, duckdb, polars, pyarrow, sklearn, ray" || { echo "bootstrap: install failed" >&2; exit 1; }
    torch_after=$(pip show torch 2>/dev/null | sed -n 's/^Version: //p')
    if [ "$torch_after" != "$torch_before" ]; then  # the extras must never swap the CPU build for another
        echo "bootstrap: installing the project replaced torch $torch_before with $torch_after" >&2; exit 1
    fi
    echo "$want" > "$stamp"
fi
