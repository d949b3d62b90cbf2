#!/usr/bin/env bash
# Optional: compile the pinned xllamacpp (llama.cpp) from its source distribution for THIS
# machine's CPU and install it into .venv in place of the prebuilt wheel. Never run by the
# README's two set-up commands; undo with `scripts/setup.sh` after
# `.venv/bin/pip uninstall -y xllamacpp`.
#
# Why: the prebuilt wheel is an AVX2 build (no AVX-512 instruction in it); on an AVX-512 CPU
# a native build decodes faster. Why not -march=native: on VMs whose CPU *reports* AMX but
# whose hypervisor does not enable it, a native build dies with "Illegal instruction" in
# ggml_backend_amx_mul_mat (../shared/ENGINE-NOTES.md). So every instruction set is turned on
# by name from what the CPU reports, and AMX only when a probe really runs an AMX instruction.
#
# Offline-safe: llama.cpp's optional downloads (BoringSSL for its HTTPS client, llguidance's
# Rust crates) are turned off; JSON-schema output then goes through llama.cpp's own GBNF
# converter, which the server asks first (engines/grammar.py) just as it asks llguidance with
# the wheel. `nanochat-lite bench` prints which build is loaded.
#
#   ./scripts/build-native.sh                   # build and install (10 min on 2 quiet cores, ~40 beside a test run)
#   ./scripts/build-native.sh --wheel-dir DIR   # only build the wheel into DIR
#   NPROC=1 ./scripts/build-native.sh           # fewer compile jobs
set -euo pipefail
wheel_dir=""
if [ "${1:-}" = "--wheel-dir" ]; then wheel_dir=$(realpath -m "${2:?--wheel-dir needs a folder}"); fi
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "build-native.sh: run ./scripts/setup.sh first (.venv is missing)" >&2; exit 2; }
for tool in cmake gcc g++ make; do
    command -v "$tool" >/dev/null || { echo "build-native.sh: $tool is missing (apt-get install cmake build-essential)" >&2; exit 2; }
done
VERSION=$(sed -n 's/^ *"xllamacpp==\([^"]*\)".*/\1/p' pyproject.toml)
[ -n "$VERSION" ] || { echo "build-native.sh: no pinned xllamacpp==VERSION in pyproject.toml" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# -- what the CPU can really run -----------------------------------------------------------
flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
has() { [[ " $flags " == *" $1 "* ]]; }
args=(-DGGML_NATIVE=OFF -DLLAMA_BUILD_BORINGSSL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_LLGUIDANCE=OFF)
set_isa() { if has "$2"; then args+=("-D$1=ON"); isas+=("$2"); else args+=("-D$1=OFF"); fi; }
isas=()
set_isa GGML_AVX avx
set_isa GGML_AVX2 avx2
set_isa GGML_FMA fma
set_isa GGML_F16C f16c
set_isa GGML_BMI2 bmi2
set_isa GGML_AVX512 avx512f
set_isa GGML_AVX512_VBMI avx512vbmi
set_isa GGML_AVX512_VNNI avx512_vnni
set_isa GGML_AVX512_BF16 avx512_bf16
set_isa GGML_AVX_VNNI avx_vnni

# AMX: reported is not enough. Ask the kernel for the tile state, then load a tile
# configuration; a guest without AMX dies with SIGILL (or the kernel refuses the state).
amx=off
if has amx_tile; then
    cat > "$work/amx.c" <<'EOF'
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
int main(void) {
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) return 3;
    uint8_t cfg[64]; memset(cfg, 0, sizeof cfg); cfg[0] = 1;          /* palette 1 */
    cfg[16] = 64; cfg[48] = 16;                                       /* tile 0: 16 rows x 64 bytes */
    __asm__ volatile ("ldtilecfg %0" :: "m"(*cfg));
    __asm__ volatile ("tilerelease");
    return 0;
}
EOF
    if gcc -O0 -o "$work/amx" "$work/amx.c" 2>/dev/null && "$work/amx" 2>/dev/null; then amx=on; fi
fi
for f in GGML_AMX_TILE GGML_AMX_INT8 GGML_AMX_BF16; do args+=("-D$f=$([ $amx = on ] && echo ON || echo OFF)"); done
echo "CPU instruction sets used: ${isas[*]:-none beyond the baseline}; AMX: $amx$(has amx_tile && [ $amx = off ] && echo ' (reported by the CPU, but it does not run here)')" >&2

# -- build and install -----------------------------------------------------------------------
echo "Building xllamacpp $VERSION from source (llama.cpp; this takes a while) ..." >&2
start=$(date +%s)
export CMAKE_ARGS="${args[*]}" NPROC="${NPROC:-$(nproc)}"
# The source distribution, unpacked and patched so that Server() loads without the GIL
# (scripts/xllamacpp_nogil.py says why), then built.
.venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    "xllamacpp==$VERSION" -d "$work/sdist" >&2
tar -xzf "$work"/sdist/xllamacpp-*.tar.gz -C "$work"
.venv/bin/python scripts/xllamacpp_nogil.py "$work/xllamacpp-$VERSION"
.venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps "$work/xllamacpp-$VERSION" \
    -w "${wheel_dir:-$work/wheel}" >&2
if [ -n "$wheel_dir" ]; then
    echo "Built $(ls "$wheel_dir"/xllamacpp-*.whl) in $(( $(date +%s) - start )) s (not installed)" >&2
    exit 0
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$work"/wheel/xllamacpp-*.whl >&2
took=$(( $(date +%s) - start ))
echo "Built and installed in $((took / 60)) min $((took % 60)) s:" >&2
.venv/bin/python -c "from nanochat_lite.engines.build_info import describe; print(\"  \", describe())" >&2 || true
