#!/usr/bin/env bash
# The GPU measurements of issue 6 in one device call. A session is lent 15 minutes of device time in all (the
# machine's start included) and one command may run 10, so everything is one prepared command, most needed first:
#   1. the encoding benchmark on the GPU host's cores (seconds; the HTTP overhead's share)
#   2. FLUX.1-dev: plain diffusers, engine (+ one profiled image), HTTP (cold start, latency, concurrency), fp8
#   3. SDXL, SD 1.5, FLUX.1-schnell: the same stages, as far as time allows (SDXL first: on 2026-12-06 it was the
#      one model without an engine figure; SD 1.5's and schnell's engine figures exist)
# bench.py starts no model or stage past its --deadline-s and rewrites its JSON after every stage, so a call cut
# short still brings back what it measured.
#
#   bash scripts/gpu_session.sh wheels          # here, once: the packages the device image lacks, into .whl/
#   bash scripts/gpu_session.sh run [SECONDS]   # on the device (carry [".whl"], timeout_s 600): results in $OUT
#
# SECONDS (default 560) is what the run may take; keep it under the call's timeout_s. Other models (SD3.5) and
# the full --ablate need sessions of their own: edit the two bench lines at the end of run_on_device.
set -uo pipefail
cd "$(dirname "$0")/.."
MARGIN_S=60

# Installed with --no-deps, so every requirement the device image lacks is listed. This exact set was rehearsed on
# the device's stack (Python 3.12, torch 2.11.0, transformers 5.17.0, accelerate 1.15.0, huggingface_hub 1.33.0):
# bench.py --tiny and the e2e tests passed. fastapi needs opentelemetry-api and openai needs httpx2, which the image
# does not have. The image's typer is older than pyproject's floor (0.29, which bundles its click); with it every
# HTTP stage of 2026-12-06 failed, so typer travels too. torchao 0.18.0 loads its kernels on torch >= 2.11; before
# moving that pin, check min_torch_version in the new wheel's torchao/__init__.py.
WHEELS=(
  diffusers==0.42.1 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 python-multipart==0.0.34
  openai==3.54.0 jiter==0.19.0 distro==1.9.0 sniffio==1.3.1 pydantic==2.14.3 pydantic_core==2.50.4
  annotated-types==0.8.0 typing-inspection==0.4.5 h11==0.16.0 anyio==4.16.0 torchao==0.18.0
  opentelemetry-api==1.45.3 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 annotated-doc==0.0.7
  requests==2.34.2 urllib3==2.8.0 charset-normalizer==3.5.3 typer==0.29.2
)

fetch_wheels() {
  rm -rf .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}" && du -sh .whl
}

run_on_device() {
  local budget=${1:-560} out=${OUT:?on the device machine, where OUT is set}
  local started=$SECONDS
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || return
  export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  # A package missing from the carried set fails here in seconds, not minutes into a stage.
  if ! python3 -c 'import diffusers, fastapi, uvicorn, openai, torchao, localimg.cli, localimg.server' \
    >"$out/imports.log" 2>&1; then
    cat "$out/imports.log"
    return 1
  fi
  { date -u; df -h /tmp; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv;
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } >"$out/env.txt" 2>&1
  timeout 60 python3 scripts/bench_encoding.py --size 1024 --out "$out/encoding.json" >"$out/encoding.log" 2>&1

  # NAME, then bench.py's arguments. No stage starts in the last MARGIN_S seconds; one that runs past the budget
  # is killed and loses only itself (the JSON holds every stage before it).
  bench() {
    local name=$1 left=$((budget - (SECONDS - started)))
    shift
    if ((left < 2 * MARGIN_S)); then echo "no time left for $name" | tee -a "$out/env.txt"; return; fi
    # -k: an uninterruptible load or compile would otherwise outlive the SIGTERM, and the call's own limit.
    timeout -k 20 "$((left - 30))" python3 scripts/bench.py --deadline-s "$((left - MARGIN_S))" --work-dir /tmp/bench \
      --out "$out/$name.json" "$@" 2>&1 | tee "$out/$name.log"
  }
  bench flux-dev --models flux-dev --variants +fp8 --profile
  bench others --models sdxl,sd15,flux-schnell --profile
}

case "${1:-}" in
  wheels) fetch_wheels ;;
  run) shift; run_on_device "$@" ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
