#!/usr/bin/env bash
# Delete a TPU VM slice or a queued resource (with its TPU), after confirmation.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/delete_tpu.sh --name=NAME --zone=ZONE [--queued] [--yes] [--project=PROJECT]

Deletes the TPU VM (gcloud compute tpus tpu-vm delete NAME), or with --queued the queued
resource and the TPU it holds (gcloud compute tpus queued-resources delete NAME --force).
Asks for confirmation (y on stdin) unless --yes. Files on the workers (~/pose_logs, local
workdirs) are lost; gs:// workdirs stay.

Required:
  --name=NAME          TPU name (for --queued: the queued-resource id, which create_tpu.sh
                       makes equal to the TPU name)
  --zone=ZONE          its zone
Options:
  --queued             delete the queued resource made by create_tpu.sh --queued
  --yes, -y            do not ask
  --project=PROJECT    gcloud project
  --dry-run            print the gcloud command (prefixed '+ ') and run nothing
  -h, --help           this help

Example:
  launch/delete_tpu.sh --name=pose-v5p --zone=us-east5-a --queued
EOF
}

NAME="" ZONE="" PROJECT="" QUEUED=0 YES=0
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --queued) QUEUED=1; shift ;;
    -y | --yes) YES=1; shift ;;
    --name | --name=*) take NAME "$@"; shift "$NSHIFT" ;;
    --zone | --zone=*) take ZONE "$@"; shift "$NSHIFT" ;;
    --project | --project=*) take PROJECT "$@"; shift "$NSHIFT" ;;
    *) die "unknown argument: $1" ;;
  esac
done

require --name "$NAME" && check_name "$NAME"
require --zone "$ZONE" && check_zone "$ZONE"
[[ -z $PROJECT ]] || check_project "$PROJECT"
need_gcloud

if ((QUEUED)); then
  WHAT="queued resource $NAME and its TPU"
  CMD=(gcloud compute tpus queued-resources delete "$NAME" --zone="$ZONE" --force)
else
  WHAT="TPU VM $NAME"
  CMD=(gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE")
fi
CMD+=(${GCLOUD_COMMON[@]+"${GCLOUD_COMMON[@]}"} --quiet)

if ((!DRY_RUN && !YES)); then
  printf 'Delete %s in %s? [y/N] ' "$WHAT" "$ZONE" >&2
  answer=""
  read -r answer || true
  case $answer in
    y | Y | yes | YES) ;;
    *) fail "not deleted" ;;
  esac
fi
run "${CMD[@]}"
