#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: one JAX process per TPU VM worker.
#
#   TPU_NAME=my-v5e-16 ZONE=us-west4-a [PROJECT=my-project] \
#   [ACCELERATOR_TYPE=v5litepod-16 CREATE=1] [DATA_BUCKET=gs://my-bucket/tensorflow_datasets] \
#   bash tpu_vm.sh python -m mha_jax.main --config=configs/gpt2_wikitext103.py:size=small \
#       --workdir=gs://my-bucket/runs/gpt2s
#
# Steps: (0) optionally create the slice, (1) put the code on every worker
# (git clone of REPO at BRANCH, pip install '.[tpu]'), (2) copy the prepared
# TFDS data to every worker's ~/tensorflow_datasets (or skip it and pass
# --config.data.tfds_data_dir=gs://...: TFDS reads GCS directly), (3) run the
# command on all workers at once. JAX finds the slice's other workers by itself
# (mha_jax.distributed sees TPU_WORKER_HOSTNAMES), so the command is the same
# as on one machine. The workdir should be on GCS so every worker writes its
# part of the orbax checkpoint to one place.
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

# Prints a command as one shell line (arguments with spaces or quotes single-quoted).
show() {
  local arg out=()
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+=("$arg"); else out+=("${arg@Q}"); fi
  done
  echo "${out[*]}"
}

: "${TPU_NAME:?set TPU_NAME (the TPU VM slice name)}"
: "${ZONE:?set ZONE (e.g. us-west4-a)}"
REPO="${REPO:-https://github.com/mha-jax/mha-jax.git}"
BRANCH="${BRANCH:-main}"
CODE_DIR="${CODE_DIR:-mha-jax}"
if [[ $# -eq 0 ]]; then
  echo "usage: TPU_NAME=... ZONE=... bash $0 <command ...>" >&2
  exit 2
fi

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then
    show "$@"
  else
    "$@"
  fi
}

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then
  where+=(--project="$PROJECT")
fi

if [[ -n "${CREATE:-}" ]]; then
  run "${gcloud_tpu[@]}" create "$TPU_NAME" "${where[@]}" \
    --accelerator-type="${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE to create the slice}" \
    --version="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
fi

setup="set -e; if [ -d $CODE_DIR ]; then git -C $CODE_DIR fetch -q && git -C $CODE_DIR checkout -q $BRANCH && git -C $CODE_DIR pull -q; else git clone -q -b $BRANCH $REPO $CODE_DIR; fi; python3 -m pip install -q -e './$CODE_DIR[tpu]'"
run "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$setup"

if [[ -n "${DATA_BUCKET:-}" ]]; then
  run "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all \
    --command="mkdir -p ~/tensorflow_datasets && gcloud storage rsync -r $DATA_BUCKET ~/tensorflow_datasets"
fi

printf -v command '%q ' "$@"
run "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all \
  --command="cd $CODE_DIR && TPU_ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-} $command"
