#!/usr/bin/env bash
# Run every llmtally benchmark in turn; each prints its table (pass --json for JSON documents).
# Uses $PYTHON (default: python) from the environment where llmtally and the peers are installed:
#   pip install -e '.[test,bench]'   (LiteLLM is optional: pip install litellm)
# Each benchmark takes under about two minutes on a 2-core machine. Results go to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="bench/results"
mkdir -p "$OUT"
export LITELLM_LOCAL_MODEL_COST_MAP=True   # LiteLLM: read the bundled price map, fetch nothing
for name in import_time pricing overhead adapters stream ledger; do
    echo "== bench/$name.py =="
    start=$(date +%s)
    ext=txt; [[ " $* " == *" --json "* ]] && ext=json
    "$PYTHON" "bench/$name.py" "$@" | tee "$OUT/$name.$ext"
    echo "(took $(( $(date +%s) - start )) s)"
    echo
done
