#!/usr/bin/env bash
# The GPU check of rewardmix, in one call on a lent GPU machine (target: <= 8 minutes on one H100).
#
# What:  1. installs what the GPU path needs into its own virtual environment (.venv-gpu): rewardmix with the
#           vllm extra; vLLM brings its own CUDA build of torch (the CPU pin of constraints.txt does not apply);
#        2. runs bench/gpu_check.py: a reward-model adapter (2 steps), then short bf16 PPO runs on one GPU:
#           the policy alone, every role on one base with generation.backend: hf, the same with vllm;
#        3. writes bench/results/gpu_check.json: peak GPU memory of all roles on one base vs the policy alone,
#           rollout tokens/s of vllm vs hf, versions, and the tail of the log of any run that failed.
#        docs/distributed.md ("The GPU check") says how to read it.
# Usage: bash bench/gpu_check.sh                         # install + check (needs the package registries)
#        bash bench/gpu_check.sh --no-install            # use the python on PATH / $PYTHON as it is
#        bash bench/gpu_check.sh --wheelhouse DIR        # install offline from wheels downloaded beforehand
#        bash bench/gpu_check.sh --dry-run               # CPU, tiny model, no install, no vLLM (~1 min)
#        Other arguments go to bench/gpu_check.py (--model PATH_OR_ID, --steps, --batch, --out FILE).
# Exit:  0 every run done; 1 a run failed (its log tail is in the JSON) or no GPU; 2 bad arguments.
set -euo pipefail

cd "$(dirname "$0")/.."
dry_run=0
install=1
wheelhouse=""
passthrough=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1; install=0; passthrough+=("--dry-run") ;;
        --no-install) install=0 ;;
        --wheelhouse)
            [ $# -ge 2 ] || { echo "gpu_check.sh: error: --wheelhouse needs a folder" >&2; exit 2; }
            wheelhouse="$2"; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) passthrough+=("$1") ;;
    esac
    shift
done

started=$(date +%s)
python="${PYTHON:-python3}"
if [ "$dry_run" = 0 ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "gpu_check.sh: error: no NVIDIA GPU here (nvidia-smi); use --dry-run on a CPU machine" >&2
        exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
fi

if [ "$install" = 1 ]; then
    # step 1. a virtual environment of its own: vLLM pins a CUDA torch that the project's CPU venv must not get
    "$python" -m venv .venv-gpu
    python=.venv-gpu/bin/python
    pip_args=(--quiet --disable-pip-version-check)
    if [ -n "$wheelhouse" ]; then
        pip_args+=(--no-index --find-links "$wheelhouse")
    fi
    "$python" -m pip install "${pip_args[@]}" --upgrade pip
    "$python" -m pip install "${pip_args[@]}" -e '.[vllm]'
    echo "gpu_check.sh: installed in $(( $(date +%s) - started )) s" >&2
fi

# step 2. the measurements (each run in its own process); step 3. the JSON
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
status=0
"$python" bench/gpu_check.py "${passthrough[@]}" || status=$?
echo "gpu_check.sh: done in $(( $(date +%s) - started )) s (exit $status)" >&2
exit "$status"
