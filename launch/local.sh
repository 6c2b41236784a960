#!/usr/bin/env bash
# Runs N local processes of one job, each with its own share of virtual CPU devices, joined
# through jax.distributed (the multi-host code path, on one machine).
#
#   launch/local.sh N [DEVICES_PER_PROCESS] -- --config configs/albef.py:tiny --workdir runs/x
#
# Logs go to /tmp/vlp_jax_local_<port>_<i>.log; the script exits with the first
# non-zero exit status of its processes.
# The caller's XLA_FLAGS are kept; the device count is appended, so it wins over one there.
set -euo pipefail
n=${1:?usage: launch/local.sh N [DEVICES_PER_PROCESS] -- ARGS...}
shift
per=4
if [[ $# -gt 0 && $1 != "--" ]]; then per=$1; shift; fi
[[ ${1:-} == "--" ]] && shift
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${per}" \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:${port}" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" \
    python -m vlp_jax.main "$@" > "/tmp/vlp_jax_local_${port}_${i}.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    status=$?
    echo "process $i failed; its log: /tmp/vlp_jax_local_${port}_${i}.log" >&2
  fi
done
cat "/tmp/vlp_jax_local_${port}_0.log"
exit $status
