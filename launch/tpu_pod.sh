#!/usr/bin/env bash
# Runs `python -m vlp_jax.main ARGS` on every worker of a Cloud TPU VM pod slice at once (each
# worker is one JAX process; they find each other through the TPU metadata).
#
#   launch/tpu_pod.sh TPU_NAME ZONE [gcloud flags, e.g. --project=P] -- \
#       --config configs/albef.py --workdir gs://BUCKET/runs/albef
#
# The repository must be at $VLP_JAX_DIR (default ~/vlp_jax) on every worker, with its
# environment set up once, e.g.:
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone ZONE --worker=all --command \
#     "git clone REPO ~/vlp_jax && cd ~/vlp_jax && python3 -m venv .venv && .venv/bin/pip install -e '.[tpu]'"
# Use a gs:// workdir: Orbax writes each worker's checkpoint shards there and TensorBoard reads it.
# DRY_RUN=1 prints the gcloud command instead of running it.
set -euo pipefail
name=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE [GCLOUD_FLAGS...] -- ARGS...}
zone=${2:?usage: launch/tpu_pod.sh TPU_NAME ZONE [GCLOUD_FLAGS...] -- ARGS...}
shift 2
gcloud_flags=()
while [[ $# -gt 0 && $1 != "--" ]]; do gcloud_flags+=("$1"); shift; done
[[ ${1:-} == "--" ]] && shift
dir=${VLP_JAX_DIR:-'~/vlp_jax'}
python=${VLP_JAX_PYTHON:-.venv/bin/python}
remote="cd ${dir} && ${python} -m vlp_jax.main $(printf '%q ' "$@")"
cmd=(gcloud compute tpus tpu-vm ssh "$name" "--zone=$zone" "${gcloud_flags[@]}" --worker=all
     "--command=$remote")
if [[ -n ${DRY_RUN:-} ]]; then
  printf '%q ' "${cmd[@]}"; echo
else
  exec "${cmd[@]}"
fi
