#!/usr/bin/env bash
# Checks edupool against a real NVIDIA GPU:
#   1. builds the binaries;
#   2. compares `edupool-agent inventory --output json` (real NVML) with
#      `nvidia-smi --query-gpu=uuid,name,memory.total --format=csv`;
#      and, without failing on them, compares PCI bus id, compute
#      capability, driver version and power limit too;
#   3. starts a pool (a scheduler and one NVML agent that offers only GPU
#      $GPU_INDEX), runs a short real CUDA job through it, and checks that
#      the job succeeded on that GPU and that its energy is non-zero;
#   4. as root with crun and busybox-static: runs a container job on that
#      GPU (crun, only its /dev/nvidiaN, the driver files mounted) and
#      checks that `ls /dev/nvidia*` and `nvidia-smi -L` inside show only it;
#   5. checks the agent's /metrics for that GPU (healthy, energy counted).
# Needs: the NVIDIA driver (nvidia-smi), the Rust toolchain, python3, and
# for the CUDA job either PyTorch with CUDA or nvcc.
# Usage: scripts/gpu-check.sh   (GPU_INDEX=1 to use another GPU)
set -euo pipefail

GPU_INDEX="${GPU_INDEX:-0}"
cd "$(dirname "$0")/.."
say() { printf '== %s\n' "$*"; }
fail() { printf 'gpu-check: FAILED: %s\n' "$*" >&2; exit 1; }

command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: is the NVIDIA driver installed?"

say "building"
cargo build --release --quiet -p edupool-scheduler -p edupool-agent -p edupoolctl
BIN="$PWD/target/release"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

say "inventory: edupool-agent (NVML) against nvidia-smi"
"$BIN/edupool-agent" inventory --gpus nvml --node-name gpu-check --output json > "$WORK/inventory.json"
nvidia-smi --query-gpu=uuid,name,memory.total --format=csv,noheader,nounits > "$WORK/smi.csv"
# More fields, compared without failing (older drivers lack compute_cap).
nvidia-smi --query-gpu=uuid,pci.bus_id,compute_cap,driver_version,enforced.power.limit \
  --format=csv,noheader,nounits > "$WORK/smi-more.csv" 2>/dev/null || true
nvidia-smi -L || true
nvidia-smi topo -m || true
python3 - "$WORK/inventory.json" "$WORK/smi.csv" "$WORK/smi-more.csv" <<'PY'
import csv, json, sys
inv = json.load(open(sys.argv[1]))
smi = [[c.strip() for c in row] for row in csv.reader(open(sys.argv[2])) if row]
gpus = inv["gpus"]
print(f"agent: backend {inv['backend']}, driver {inv['driver_version']}, CUDA {inv['cuda_version']}")
assert inv["backend"] == "nvml", inv["backend"]
assert len(gpus) == len(smi), f"agent sees {len(gpus)} GPUs, nvidia-smi {len(smi)}"
for g, (uuid, name, mib) in zip(gpus, smi):
    print(f"  {g['index']}: {g['uuid']} {g['model']} {g['memory_bytes'] // 2**20} MiB"
          f" | nvidia-smi: {uuid} {name} {mib} MiB | healthy={g['healthy']}")
    assert g["uuid"] == uuid, (g["uuid"], uuid)
    assert g["model"] == name, (g["model"], name)
    assert g["memory_bytes"] // 2**20 == int(mib), (g["memory_bytes"], mib)
print("inventory matches nvidia-smi")
more = {row[0].strip(): [c.strip() for c in row[1:]]
        for row in csv.reader(open(sys.argv[3])) if len(row) == 5}
for g in gpus:
    smi_bus, smi_cc, smi_driver, smi_limit = more.get(g["uuid"], ["?"] * 4)
    limit = g.get("power_limit_watts")
    pairs = [
        ("pci bus id", g.get("pci_bus_id"), smi_bus),
        ("compute capability", g.get("compute_capability"), smi_cc),
        ("driver", inv["driver_version"], smi_driver),
        ("power limit W", None if limit is None else f"{limit:.0f}",
         f"{float(smi_limit):.0f}" if smi_limit.replace(".", "", 1).isdigit() else smi_limit),
    ]
    for what, ours, theirs in pairs:
        same = str(ours).lower() == str(theirs).lower()
        print(f"  {g['index']} {what}: agent {ours} | nvidia-smi {theirs}{'' if same else '  <- differs'}")
    mig = g.get("mig") or {}
    t = g.get("telemetry") or {}
    print(f"  {g['index']} MIG {'on' if mig.get('enabled') else 'off'}"
          f" ({len(mig.get('instances', []))} instances), NVLink peers {g.get('nvlink_peers')},"
          f" remapped rows {t.get('remapped_rows')}, retired pages pending {t.get('retired_pages_pending')},"
          f" ECC volatile {t.get('ecc_volatile_uncorrected')}, throttle {t.get('throttle_reasons')}")
PY
echo "--- edupool-agent inventory (table)"
"$BIN/edupool-agent" inventory --gpus nvml --node-name gpu-check
GPU_UUID="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["gpus"][int(sys.argv[2])]["uuid"])' "$WORK/inventory.json" "$GPU_INDEX")"

say "CUDA job"
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  cat > "$WORK/job.py" <<'PY'
import os, torch
x = torch.randn(8192, 8192, device="cuda")
for _ in range(300):
    x = torch.tanh(x @ x)
torch.cuda.synchronize()
print("ran on", torch.cuda.get_device_name(0), "visible:", os.environ["CUDA_VISIBLE_DEVICES"])
PY
  JOB=(python3 "$WORK/job.py")
elif command -v nvcc >/dev/null; then
  cat > "$WORK/job.cu" <<'CU'
#include <cstdio>
__global__ void spin(float *x, int n, int rounds) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) { float v = x[i]; for (int r = 0; r < rounds; r++) v = v * 0.999f + 0.001f; x[i] = v; }
}
int main() {
  const int n = 1 << 24; float *x;
  if (cudaMalloc(&x, n * sizeof(float)) != cudaSuccess) { printf("cudaMalloc failed\n"); return 1; }
  for (int k = 0; k < 20; k++) spin<<<(n + 255) / 256, 256>>>(x, n, 20000);
  cudaError_t e = cudaDeviceSynchronize();
  printf("kernel: %s\n", cudaGetErrorString(e));
  return e == cudaSuccess ? 0 : 1;
}
CU
  nvcc -O2 -o "$WORK/job" "$WORK/job.cu"
  JOB=("$WORK/job")
else
  fail "no PyTorch with CUDA and no nvcc: cannot build a CUDA job"
fi
echo "job: ${JOB[*]}"

# The image of the container check, made before the agent starts (it lists
# its images in every hello): a static busybox plus the C libraries
# nvidia-smi needs; nvidia-smi and libnvidia-ml come from the driver mount.
CONTAINER_CHECK=""
if [ "$(id -u)" -ne 0 ] || ! command -v crun > /dev/null || [ ! -x /bin/busybox ]; then
  CONTAINER_SKIP="needs root, crun and busybox-static (apt-get install crun busybox-static)"
elif ! "$BIN/edupoolctl" job submit --help | grep -q -- '--image'; then
  CONTAINER_SKIP="this edupoolctl cannot submit jobs with an image yet"
else
  CONTAINER_CHECK=1
  ROOTFS="$WORK/images/gpu-check/rootfs"
  mkdir -p "$ROOTFS/bin" "$ROOTFS/work" "$ROOTFS/tmp" "$ROOTFS/proc" "$ROOTFS/dev"
  cp /bin/busybox "$ROOTFS/bin/"
  for a in sh ls cat echo; do ln -sf busybox "$ROOTFS/bin/$a"; done
  for lib in $(ldd "$(command -v nvidia-smi)" | grep -o '/[^ ]*' | grep -v libnvidia); do
    mkdir -p "$ROOTFS$(dirname "$lib")"; cp -L "$lib" "$ROOTFS$lib"
  done
fi

say "pool: scheduler and an NVML agent offering GPU $GPU_INDEX ($GPU_UUID)"
ADMIN=gpu-check-admin-token-0123456789
AGENT=gpu-check-agent-token-0123456789
PKI="$WORK/pki"
"$BIN/edupoolctl" pki init --dir "$PKI" > /dev/null
"$BIN/edupoolctl" pki issue-server --dir "$PKI" --ip 127.0.0.1 > /dev/null
"$BIN/edupoolctl" pki issue-node gpu-check --dir "$PKI" > /dev/null
"$BIN/edupool-scheduler" serve --listen 127.0.0.1:0 --data-dir "$WORK/scheduler" \
  --ca-cert "$PKI/ca.pem" --cert "$PKI/server.pem" --key "$PKI/server-key.pem" \
  --admin-token "$ADMIN" --agent-token "$AGENT" > "$WORK/scheduler.out" 2> "$WORK/scheduler.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q 'listening on' "$WORK/scheduler.out" && break; sleep 0.1; done
ADDR="$(sed -n 's/^edupool-scheduler listening on //p' "$WORK/scheduler.out")"
[ -n "$ADDR" ] || fail "the scheduler did not start: $(cat "$WORK/scheduler.err")"
"$BIN/edupool-agent" run --gpus nvml --only-gpus "$GPU_UUID" --scheduler "http://$ADDR" \
  --ca-cert "$PKI/ca.pem" --cert "$PKI/node-gpu-check.pem" --key "$PKI/node-gpu-check-key.pem" \
  --allow-root --allow-host-jobs --image-store "$WORK/images" \
  --token "$AGENT" --node-name gpu-check --work-dir "$WORK/agent" \
  --metrics-listen 127.0.0.1:0 > "$WORK/agent.out" 2> "$WORK/agent.err" &
PIDS+=($!)

export EDUPOOL_ENDPOINT="https://$ADDR" EDUPOOL_CA_CERT="$PKI/ca.pem"
ctl() { "$BIN/edupoolctl" "$@"; }
for _ in $(seq 100); do
  ctl --token "$ADMIN" node list 2>/dev/null | grep -q '^gpu-check *ready' && break
  sleep 0.2
done
ctl --token "$ADMIN" node list
TENANT="$(ctl --token "$ADMIN" --output json tenant create gpu-check | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
ID="$(ctl --token "$TENANT" --output json job submit --gpus 1 --name cuda-check -- "${JOB[@]}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
echo "submitted $ID"
STATE=""
for _ in $(seq 600); do
  STATE="$(ctl --token "$TENANT" --output json job get "$ID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')"
  case "$STATE" in succeeded|failed|cancelled|lost) break ;; esac
  sleep 0.5
done
ctl --token "$TENANT" job get "$ID"
echo "--- job output"
ctl --token "$TENANT" job logs "$ID"
ctl --token "$TENANT" job logs --stderr "$ID" >&2
ctl --token "$TENANT" --output json job get "$ID" > "$WORK/job.json"
python3 - "$WORK/job.json" "$GPU_UUID" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))
want = sys.argv[2]
assert job["state"] == "succeeded", f"job ended {job['state']}: {job.get('reason')}"
assert job["gpu_uuids"] == [want], (job["gpu_uuids"], want)
assert job["energy_joules"] > 0, f"energy {job['energy_joules']} J"
assert job["gpu_seconds"] > 0, f"GPU time {job['gpu_seconds']} s"
print(f"job succeeded on {want}: {job['gpu_seconds']:.1f} GPU-seconds, {job['energy_joules']:.1f} J")
PY

say "a container job on GPU $GPU_INDEX (crun, only its /dev/nvidiaN, driver files mounted)"
if [ -z "$CONTAINER_CHECK" ]; then
  echo "skipped: $CONTAINER_SKIP"
else
  CID="$(ctl --token "$TENANT" --output json job submit --gpus 1 --image gpu-check --name container-check \
    -- sh -c 'ls /dev/nvidia*; nvidia-smi -L' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
  for _ in $(seq 600); do
    CSTATE="$(ctl --token "$TENANT" --output json job get "$CID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')"
    case "$CSTATE" in succeeded|failed|cancelled|lost) break ;; esac
    sleep 0.5
  done
  ctl --token "$TENANT" job logs "$CID" | tee "$WORK/container.out"
  ctl --token "$TENANT" job logs --stderr "$CID" >&2
  [ "$CSTATE" = succeeded ] || fail "the container job ended $CSTATE"
  [ "$(grep -c '^/dev/nvidia[0-9]' "$WORK/container.out")" -eq 1 ] || fail "the container saw other GPUs' nodes"
  grep -q "$GPU_UUID" "$WORK/container.out" || fail "nvidia-smi in the container did not show $GPU_UUID"
  [ "$(grep -c '^GPU ' "$WORK/container.out")" -eq 1 ] || fail "nvidia-smi in the container saw more than one GPU"
  echo "the container job saw exactly its GPU"
fi

say "agent metrics for $GPU_UUID"
METRICS="$(sed -n 's/^edupool-agent metrics listening on //p' "$WORK/agent.out")"
[ -n "$METRICS" ] || fail "the agent did not say where its metrics are: $(cat "$WORK/agent.err")"
python3 - "http://$METRICS/metrics" "$GPU_UUID" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
want = f'gpu_uuid="{sys.argv[2]}"'
lines = [l for l in text.splitlines() if l.startswith("edupool_gpu_") and want in l]
print("\n".join(lines))
value = lambda name: next(float(l.rsplit(" ", 1)[1]) for l in lines if l.startswith(name + "{"))
assert value("edupool_gpu_healthy") == 1, "the GPU is not healthy"
assert value("edupool_gpu_energy_joules_total") > 0, "no energy counted"
assert value("edupool_gpu_memory_total_bytes") > 0, "no memory total"
print("metrics present for the GPU; it is healthy")
PY
say "gpu-check passed"
