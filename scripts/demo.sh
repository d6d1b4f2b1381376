#!/usr/bin/env bash
# The README's main command: embed sample/corpus.parquet (4,000 texts) with the offline all-MiniLM-L6-v2
# on a local Ray into ./out/sample, with a progress bar, JSON log lines and a summary.
# Extra arguments go to `embedjob run` (e.g. --overwrite, --replicas 1, --output /tmp/x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "test,bench"
mkdir -p out
start=$(date +%s)
.venv/bin/embedjob run examples/sample-job.yaml --log-file out/sample-job.log "$@"
echo "demo: finished in $(( $(date +%s) - start )) s; JSON log lines in out/sample-job.log"
.venv/bin/python - <<'PY'
import pyarrow.dataset as ds
t = ds.dataset("out/sample").to_table()
print(f"demo: out/sample opens with pyarrow.dataset: {t.num_rows} rows, columns {t.column_names}, "
      f"embedding {t.schema.field('embedding').type}")
PY
