#!/usr/bin/env bash
# The main job on the embedded default: set up (if needed), generate a small diagnostic pack of
# annotated episodes on digits_hard (the scikit-learn digits with pixel noise), validate it, and run the query library over it.
#   ./run.sh                 # pack in runs/demo (completed with --resume if a run was interrupted)
#   OUT=runs/other EPISODES=24 WORKERS=4 ./run.sh
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
OUT=${OUT:-runs/demo}
EPISODES=${EPISODES:-12}
WORKERS=${WORKERS:-2}
esper=.venv/bin/esper
resume=()
[ -f "$OUT/manifest.json" ] && resume=(--resume)
"$esper" generate --profile diagnostic --dataset digits_hard --episodes "$EPISODES" --workers "$WORKERS" \
    --out "$OUT" "${resume[@]}"
"$esper" validate "$OUT"
"$esper" inspect "$OUT"
for sql in queries/*.sql; do
    name=$(basename "$sql" .sql)
    echo
    echo "== $name"
    "$esper" query "$OUT" "$name" --no-verify
done
