#!/usr/bin/env bash
# Install the tools benchmarks/peers.py compares against (the `peers` extra) into .venv without ever
# replacing its torch: backpack-for-pytorch declares torchvision, which pip would satisfy by pulling
# another torch. The packages that depend on torch go in with --no-deps, everything else under a
# constraint pinning the installed torch; the script fails if torch changed anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
before=$($PY -c 'import torch; print(torch.__version__)')
pin=$(mktemp)
trap 'rm -f "$pin"' EXIT
echo "torch==${before%%+*}" > "$pin"
$PY -m pip install -q --no-deps "cockpit-for-pytorch>=1.0.2" "backpack-for-pytorch>=1.7.1" "unfoldNd>=0.2" \
    "torch-surgeon>=0.1"
$PY -m pip install -q -c "$pin" "einops>=0.3" json-tricks pandas seaborn "wandb>=0.31" "setuptools<81"
after=$($PY -c 'import torch; print(torch.__version__)')
if [ "$before" != "$after" ]; then
    echo "install_peers.sh: torch changed from $before to $after; reinstall torch $before" >&2
    exit 1
fi
echo "peers installed; torch $after unchanged"
