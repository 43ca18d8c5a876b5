#!/usr/bin/env bash
# The one-shot GPU check: run it from a fresh checkout on a machine with an
# NVIDIA GPU, and it writes one JSON file with every figure and every
# failure.
#
#   bench/gpu-check.sh [OUT.json]      # default: gpu-check.json here
#
# It assumes the NVIDIA driver and nothing else: it installs what is
# missing (a C compiler and Python through apt-get when run as root, Rust
# through rustup, the CUDA toolkit and PyTorch from PyPI), then
#   1. builds gradpool with CUDA, for the GPU's compute capability;
#   2. times `gradpool bench train --device cuda` beside the PyTorch
#      reference on the same GPU (bench/torch_gpt.py --device cuda), for
#      the reference GPT and for GPT-2 small's shape;
#   3. trains the same segment twice on the GPU and compares the bytes;
#   4. trains it on the CPU and measures the distance between the two
#      checkpoints (`gradpool checkpoint distance`);
#   5. reads NVML telemetry, and sets and restores a power cap where the
#      driver permits (`gradpool bench nvml`);
#   6. runs `gradpool devnet --device cuda --steps 200`.
# A step that fails is recorded with its error and log, and the next one
# runs; a step that depends on a failed one is recorded as skipped. The
# whole run stays within GPU_CHECK_BUDGET_S seconds (default 450, under the
# 8 minutes it is allowed): each step is cut off at what is left.
#
# On a machine without a GPU it installs and builds nothing: every GPU
# figure says "no GPU" and it exits 0. It exits 1 when a step failed.
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-gpu-check.json}")"
work="$root/target/gpu-check"
budget="${GPU_CHECK_BUDGET_S:-450}"
started="$(date +%s)"
deadline=$((started + budget))
# The figures, in the order they are measured.
gpu_figures=(build bench_reference bench_gpt2_small determinism gpu_vs_cpu nvml devnet)

# --- the report --------------------------------------------------------

keys=()
declare -A figure=()
failures=()
installs=()

# A JSON string of $1: escapes, and control characters dropped.
str() {
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    s="${s//$'\n'/\\n}"
    s="${s//$'\t'/\\t}"
    s="$(printf '%s' "$s" | tr -d '\000-\010\013-\037')"
    printf '"%s"' "$s"
}

# put KEY JSON: sets a figure.
put() {
    [ -n "${figure[$1]+set}" ] || keys+=("$1")
    figure[$1]="$2"
}

# failed KEY ERROR [LOG]: a figure that failed, with the log's last lines.
failed() {
    local tail=""
    if [ -n "${3:-}" ] && [ -s "$3" ]; then
        tail=",\"log\":$(str "$3"),\"log_tail\":$(str "$(tail -n 15 "$3")")"
    fi
    put "$1" "{\"status\":\"failed\",\"error\":$(str "$2")$tail}"
    failures+=("$(str "$1: $2")")
}

skipped() {
    put "$1" "{\"status\":\"skipped\",\"reason\":$(str "$2")}"
}

# The last line of a file if it is one JSON object, else nothing.
json_line() {
    local line
    line="$(tail -n 1 "$1" 2>/dev/null)"
    case "$line" in
    '{'*'}') printf '%s' "$line" ;;
    esac
}

# JSON's value of a top-level number or boolean field, from one line.
field() {
    printf '%s' "$1" | grep -oE "\"$2\":[^,}]+" | head -n 1 | cut -d: -f2-
}

seconds_since() {
    echo $(($(date +%s) - $1))
}

write_report() {
    local result="$1" body="" k sep=""
    for k in "${keys[@]}"; do
        body+="$sep  $(str "$k"): ${figure[$k]}"
        sep=$',\n'
    done
    local list=""
    sep=""
    for k in "${failures[@]+"${failures[@]}"}"; do
        list+="$sep$k"
        sep=","
    done
    local inst=""
    sep=""
    for k in "${installs[@]+"${installs[@]}"}"; do
        inst+="$sep$k"
        sep=","
    done
    mkdir -p "$(dirname "$out")"
    {
        printf '{\n  "check": "gradpool gpu-check",\n  "result": %s,\n' "$(str "$result")"
        printf '  "seconds": %s,\n  "budget_seconds": %s,\n' "$(seconds_since "$started")" "$budget"
        printf '  "failures": [%s],\n  "installs": [%s],\n' "$list" "$inst"
        printf '%s\n}\n' "$body"
    } >"$out.partial" && mv "$out.partial" "$out"
    echo "gpu-check: $result; wrote $out"
}

# run_step LOG SECONDS CMD...: runs CMD with its output in LOG, cut off at
# SECONDS or at the budget, whichever comes first. Returns CMD's status
# (124: cut off).
run_step() {
    local log="$1" limit="$2" left
    shift 2
    left=$((deadline - $(date +%s)))
    [ "$left" -lt "$limit" ] && limit="$left"
    if [ "$limit" -lt 5 ]; then
        echo "out of the ${budget}-second budget" >"$log"
        return 124
    fi
    timeout --kill-after=15 "$limit" "$@" >"$log" 2>&1
}

# Why a step with status $1 failed.
why() {
    case "$1" in
    124 | 137) echo "cut off (the step's time or the ${budget}-second budget ran out)" ;;
    *) echo "exit status $1" ;;
    esac
}

# --- the machine -------------------------------------------------------

commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
put machine "{\"host\":$(str "$(uname -n)"),\"kernel\":$(str "$(uname -sr)"),\"arch\":$(str "$(uname -m)"),\"cpus\":$(nproc 2>/dev/null || echo 0),\"commit\":$(str "$commit"),\"date\":$(str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")}"

gpu_line=""
if command -v nvidia-smi >/dev/null 2>&1; then
    gpu_line="$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,power.limit \
        --format=csv,noheader,nounits -i 0 2>/dev/null | head -n 1)"
fi
if [ -z "$gpu_line" ]; then
    put gpu '{"status":"no GPU","reason":"nvidia-smi is missing or lists no GPU: no NVIDIA driver or GPU here"}'
    for f in "${gpu_figures[@]}"; do
        put "$f" '{"status":"no GPU"}'
    done
    write_report "no GPU"
    exit 0
fi
IFS=',' read -r gpu_name driver memory cap power <<<"$gpu_line"
trim() { printf '%s' "$1" | sed 's/^ *//; s/ *$//'; }
gpu_name="$(trim "$gpu_name")"
cap="$(trim "$cap")"
cap_digits="${cap//./}"
put gpu "{\"status\":\"ok\",\"name\":$(str "$gpu_name"),\"driver\":$(str "$(trim "$driver")"),\"memory_mib\":$(str "$(trim "$memory")"),\"compute_capability\":$(str "$cap"),\"power_limit_w\":$(str "$(trim "$power")"),\"count\":$(nvidia-smi -L | grep -c '^GPU')}"
mkdir -p "$work"
echo "gpu-check: $gpu_name (compute capability $cap); logs in $work"

# --- installs: only what is missing ------------------------------------

# install_step NAME COMMAND...: runs an install, recording it.
install_step() {
    local name="$1" t0 rc
    shift
    t0="$(date +%s)"
    echo "gpu-check: installing $name"
    run_step "$work/install-$name.log" 300 "$@"
    rc=$?
    installs+=("{\"what\":$(str "$name"),\"ok\":$([ $rc = 0 ] && echo true || echo false),\"seconds\":$(seconds_since "$t0")}")
    [ $rc = 0 ] || failures+=("$(str "install $name: $(why $rc), see $work/install-$name.log")")
    return $rc
}

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc g++ make)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v git >/dev/null 2>&1 || need_apt+=(git)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        install_step system-packages sh -c "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ca-certificates ${need_apt[*]}"
    else
        failures+=("$(str "missing ${need_apt[*]}: install them (this script installs them with apt-get when run as root)")")
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        install_step rust sh -c 'curl --proto =https --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal' &&
            export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi

# PyTorch in its own environment, while the build runs.
torch_venv="$work/torch-venv"
# Cut off with the budget like every step: the last steps need no PyTorch.
timeout --kill-after=15 "$((deadline - $(date +%s)))" sh -c "
    python3 -m venv '$torch_venv' &&
        '$torch_venv/bin/pip' install --quiet --disable-pip-version-check torch numpy
" >"$work/install-torch.log" 2>&1 &
torch_pid=$!
torch_t0="$(date +%s)"

# --- 1. the CUDA build -------------------------------------------------

gradpool=""
t0="$(date +%s)"
export CUDA_COMPUTE_CAP="$cap_digits"
if ! install_step cuda-toolkit "$root/packaging/cuda-toolkit"; then
    skipped build "the CUDA toolkit did not install (see $work/install-cuda-toolkit.log)"
elif ! command -v cargo >/dev/null 2>&1; then
    skipped build "no Rust (cargo) and it could not be installed"
else
    # shellcheck source=/dev/null
    . "$root/.cuda/env"
    export CARGO_TARGET_DIR="$root/target"
    run_step "$work/build.log" 360 cargo build --release --locked \
        --manifest-path "$root/Cargo.toml" --features gradpool-cli/cuda
    rc=$?
    if [ $rc = 0 ]; then
        gradpool="$root/target/release/gradpool"
        put build "{\"status\":\"ok\",\"seconds\":$(seconds_since "$t0"),\"compute_capability\":$cap_digits,\"binary\":$(str "$gradpool")}"
    else
        failed build "cargo build --release --features gradpool-cli/cuda: $(why $rc)" "$work/build.log"
    fi
fi

wait "$torch_pid"
torch_rc=$?
installs+=("{\"what\":\"torch\",\"ok\":$([ $torch_rc = 0 ] && echo true || echo false),\"seconds\":$(seconds_since "$torch_t0")}")
python="$torch_venv/bin/python"
if [ $torch_rc != 0 ]; then
    failures+=("$(str "install torch: $(why $torch_rc), see $work/install-torch.log")")
    python=""
fi

# --- 2. speed beside PyTorch -------------------------------------------

# bench KEY CONFIG STEPS: gradpool and PyTorch on the GPU, and their ratio.
bench() {
    local key="$1" config="$2" steps="$3" ours="" theirs="" ratio="null" rc
    if [ -z "$gradpool" ]; then
        skipped "$key" "no CUDA build"
        return
    fi
    run_step "$work/$key-gradpool.log" 90 "$gradpool" bench train --device cuda \
        --config "$config" --steps "$steps" --json
    rc=$?
    ours="$(json_line "$work/$key-gradpool.log")"
    if [ $rc != 0 ] || [ -z "$ours" ]; then
        failed "$key" "gradpool bench train --device cuda --config $config: $(why $rc)" "$work/$key-gradpool.log"
        return
    fi
    if [ -n "$python" ]; then
        # PyTorch brings its own CUDA libraries: not the build's.
        run_step "$work/$key-torch.log" 90 env -u LD_LIBRARY_PATH "$python" "$root/bench/torch_gpt.py" --device cuda \
            --config "$config" --steps "$steps"
        rc=$?
        theirs="$(json_line "$work/$key-torch.log")"
        if [ $rc != 0 ] || [ -z "$theirs" ]; then
            failures+=("$(str "$key: the PyTorch reference failed: $(why $rc), see $work/$key-torch.log")")
            theirs=""
        fi
    fi
    if [ -n "$theirs" ]; then
        ratio="$(awk -v a="$(field "$ours" tokens_per_sec)" -v b="$(field "$theirs" tokens_per_sec)" \
            'BEGIN { if (b > 0) printf "%.3f", a / b; else print "null" }')"
    fi
    put "$key" "{\"status\":\"ok\",\"gradpool\":$ours,\"pytorch\":${theirs:-null},\"gradpool_over_pytorch\":$ratio}"
}
bench bench_reference reference 200
bench bench_gpt2_small gpt2-small 20

# --- 3. and 4. determinism, and the distance to the CPU ----------------

spec="$work/segment.toml"
data="$root/data/tinyshakespeare.txt"
sed '/^file = /d' "$root/examples/shakespeare-gpt.toml" >"$spec"
steps=100
# segment NAME DEVICE: trains steps [0, steps) into NAME.safetensors.
segment() {
    run_step "$work/segment-$1.log" 120 "$gradpool" segment run --spec "$spec" --data "$data" \
        --from 0 --to "$steps" --out "$work/segment-$1.safetensors" --device "$2"
}
digest() {
    sha256sum "$1" | cut -d' ' -f1
}
if [ -z "$gradpool" ]; then
    skipped determinism "no CUDA build"
    skipped gpu_vs_cpu "no CUDA build"
else
    rm -f "$work"/segment-*.safetensors
    segment gpu-a cuda
    rc=$?
    if [ $rc != 0 ]; then
        failed determinism "the first GPU segment: $(why $rc)" "$work/segment-gpu-a.log"
    else
        segment gpu-b cuda
        rc=$?
        if [ $rc != 0 ]; then
            failed determinism "the second GPU segment: $(why $rc)" "$work/segment-gpu-b.log"
        else
            a="$(digest "$work/segment-gpu-a.safetensors")"
            b="$(digest "$work/segment-gpu-b.safetensors")"
            same=false
            cmp -s "$work/segment-gpu-a.safetensors" "$work/segment-gpu-b.safetensors" && same=true
            put determinism "{\"status\":\"ok\",\"steps\":$steps,\"identical\":$same,\"sha256\":[$(str "$a"),$(str "$b")]}"
            [ "$same" = true ] || failures+=("$(str "determinism: two GPU runs of the same segment differ")")
        fi
    fi
    if [ ! -s "$work/segment-gpu-a.safetensors" ]; then
        skipped gpu_vs_cpu "no GPU segment to compare"
    elif segment cpu cpu; rc=$?; [ $rc != 0 ]; then
        failed gpu_vs_cpu "the CPU segment: $(why $rc)" "$work/segment-cpu.log"
    else
        run_step "$work/distance.log" 60 "$gradpool" checkpoint distance --spec "$spec" \
            --data "$data" "$work/segment-gpu-a.safetensors" "$work/segment-cpu.safetensors"
        rc=$?
        d="$(json_line "$work/distance.log")"
        if [ $rc = 0 ] && [ -n "$d" ]; then
            put gpu_vs_cpu "{\"status\":\"ok\",\"steps\":$steps,\"distance\":$d}"
        else
            failed gpu_vs_cpu "gradpool checkpoint distance: $(why $rc)" "$work/distance.log"
        fi
    fi
fi

# --- 5. NVML -----------------------------------------------------------

if [ -z "$gradpool" ]; then
    skipped nvml "no CUDA build"
else
    run_step "$work/nvml.log" 60 "$gradpool" bench nvml --gpu 0 --power-cap --json
    rc=$?
    n="$(json_line "$work/nvml.log")"
    if [ $rc = 0 ] && [ -n "$n" ]; then
        put nvml "{\"status\":\"ok\",\"report\":$n}"
    else
        failed nvml "gradpool bench nvml: $(why $rc)" "$work/nvml.log"
    fi
fi

# --- 6. devnet on the GPU ----------------------------------------------

if [ -z "$gradpool" ]; then
    skipped devnet "no CUDA build"
else
    rm -rf "$work/devnet"
    t0="$(date +%s)"
    run_step "$work/devnet.log" 240 "$gradpool" devnet --device cuda --steps 200 \
        --out "$work/devnet"
    rc=$?
    if [ $rc = 0 ] && [ -s "$work/devnet/summary.json" ]; then
        put devnet "{\"status\":\"ok\",\"seconds\":$(seconds_since "$t0"),\"summary\":$(cat "$work/devnet/summary.json")}"
    else
        failed devnet "gradpool devnet --device cuda --steps 200: $(why $rc)" "$work/devnet.log"
    fi
fi

if [ ${#failures[@]} -eq 0 ]; then
    write_report "ok"
    exit 0
fi
write_report "failures"
exit 1
