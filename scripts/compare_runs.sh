#!/usr/bin/env bash
# Compare the outputs of two checkouts that each ran `dvc repro` (e.g. before and after a refactor):
#   scripts/compare_runs.sh /path/to/old /path/to/new
# Prints "identical" or "DIFFERENT" per artifact; for manifests and stats it also says whether
# they differ only in the fields that hold wall-clock times (fetched_at, *_s, seconds, *_per_s, rss)
# and render's code hash (params_hash). Model folders are compared by a sha256 over their files.
set -uo pipefail
old="$1"; new="$2"
mask() { sed -E 's/"fetched_at": "[^"]*"/"fetched_at": T/g; s/"params_hash": "[^"]*"/"params_hash": H/g;
                 s/"([a-z_]*(seconds|_s|per_s|rss_mb|_time_s)|s_per_judgement)": [0-9.e+-]+/"\1": N/g' "$1"; }
cd "$old" || exit 2
files=(data/chunks.jsonl data/qa.jsonl data/qa_rejected.jsonl data/split/train.jsonl data/split/val.jsonl
       data/split/test.jsonl data/split/near_dups.jsonl data/augment/train.jsonl data/augment/skipped.jsonl
       data/eval/answers.jsonl data/eval/per_example.jsonl data/judge/scores.jsonl
       metrics/eval.json metrics/judge.json metrics/train.json metrics/data.json
       data/raw/manifest.jsonl data/pdf/manifest.jsonl data/stats/*.json)
for f in "${files[@]}"; do
  if [ ! -f "$old/$f" ] || [ ! -f "$new/$f" ]; then echo "missing    $f"; continue; fi
  if cmp -s "$old/$f" "$new/$f"; then echo "identical  $f"
  elif cmp -s <(mask "$old/$f") <(mask "$new/$f"); then echo "timing     $f  (differs only in times / fetched_at / params_hash)"
  else echo "DIFFERENT  $f"; fi
done
tree() { (cd "$1" && find . -type f ! -name '*.lock' | sort | xargs sha256sum | sha256sum | cut -c1-16); }
for d in data/pdf models/student models/teacher models/judge models/encoder models/adapter; do
  [ -d "$old/$d" ] && [ -d "$new/$d" ] || continue
  a=$(tree "$old/$d"); b=$(tree "$new/$d")
  if [ "$d" = data/pdf ]; then a=$(cd "$old/$d" && sha256sum *.pdf | sha256sum | cut -c1-16); b=$(cd "$new/$d" && sha256sum *.pdf | sha256sum | cut -c1-16); fi
  [ "$a" = "$b" ] && echo "identical  $d/ ($a)" || echo "DIFFERENT  $d/ ($a vs $b)"
done
