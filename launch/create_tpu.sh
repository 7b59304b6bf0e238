#!/usr/bin/env bash
# Create a Cloud TPU VM slice, directly or as a queued resource.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/create_tpu.sh --name=NAME --zone=ZONE --accelerator=TYPE [options]

Create a TPU VM slice (gcloud compute tpus tpu-vm create), or queue a request for one
(gcloud compute tpus queued-resources create NAME --node-id=NAME) with --queued.

Required:
  --name=NAME          TPU name (lowercase letters, digits, '-'); also the queued-resource id
  --zone=ZONE          e.g. us-east5-a
  --accelerator=TYPE   v5p-64, v6e-256, v5litepod-16, v4-32, ... (v2/v3/v4/v5p: TensorCores,
                       v5litepod/v6e: chips)
Options:
  --version=RUNTIME    TPU software version; default by generation:
                       v6e: v2-alpha-tpuv6e, v5p: v2-alpha-tpuv5, v5litepod: v2-alpha-tpuv5-lite,
                       v2/v3/v4: tpu-ubuntu2204-base
  --queued             create a queued resource (waits in the queue until capacity exists;
                       watch it with: gcloud compute tpus queued-resources describe NAME --zone=ZONE)
  --spot               Spot capacity (preemptible)
  --reserved           use reserved capacity (exclusive with --spot)
  --project=PROJECT    gcloud project (default: gcloud's configured project)
  --dry-run            print the gcloud command (prefixed '+ ') and run nothing
  -h, --help           this help

Example:
  launch/create_tpu.sh --name=pose-v5p --zone=us-east5-a --accelerator=v5p-64 --queued --spot
EOF
}

NAME="" ZONE="" ACCEL="" VERSION="" PROJECT="" QUEUED=0 SPOT=0 RESERVED=0
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --reserved) RESERVED=1; shift ;;
    --name | --name=*) take NAME "$@"; shift "$NSHIFT" ;;
    --zone | --zone=*) take ZONE "$@"; shift "$NSHIFT" ;;
    --accelerator | --accelerator=*) take ACCEL "$@"; shift "$NSHIFT" ;;
    --version | --version=*) take VERSION "$@"; shift "$NSHIFT" ;;
    --project | --project=*) take PROJECT "$@"; shift "$NSHIFT" ;;
    *) die "unknown argument: $1" ;;
  esac
done

require --name "$NAME" && check_name "$NAME"
require --zone "$ZONE" && check_zone "$ZONE"
require --accelerator "$ACCEL" && check_accelerator "$ACCEL"
[[ -z $PROJECT ]] || check_project "$PROJECT"
((!(SPOT && RESERVED))) || die "--spot and --reserved exclude each other"
if [[ -z $VERSION ]]; then
  VERSION=$(default_runtime "$ACCEL")
else
  [[ $VERSION =~ ^[a-z0-9][-a-z0-9.]*$ ]] || die "--version=$VERSION: not a TPU software version"
fi
need_gcloud

CAPACITY=()
((SPOT)) && CAPACITY+=(--spot)
((RESERVED)) && CAPACITY+=(--reserved)

info "$ACCEL: $(accel_hosts "$ACCEL") host(s), runtime $VERSION"
if ((QUEUED)); then
  run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" --zone="$ZONE" \
    --accelerator-type="$ACCEL" --runtime-version="$VERSION" ${CAPACITY[@]+"${CAPACITY[@]}"} \
    ${GCLOUD_COMMON[@]+"${GCLOUD_COMMON[@]}"}
  info "queued; the TPU is usable once its state is ACTIVE:"
  info "  gcloud compute tpus queued-resources describe $NAME --zone=$ZONE"
else
  run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$ACCEL" \
    --version="$VERSION" ${CAPACITY[@]+"${CAPACITY[@]}"} ${GCLOUD_COMMON[@]+"${GCLOUD_COMMON[@]}"}
fi
