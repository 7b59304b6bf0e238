#!/usr/bin/env bash
# Show the training log(s) written by launch/train.sh on the TPU workers.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/logs.sh --name=NAME --zone=ZONE [--run=RUN] [--worker=0|all] [--lines=N] [--follow]

Tails ~/pose_logs/RUN.log on the chosen worker(s) (gcloud compute tpus tpu-vm ssh). With
--worker=all every line is prefixed with the worker's hostname.

Required:
  --name=NAME          TPU name
  --zone=ZONE          its zone
Options:
  --run=RUN            run name given to (or derived by) launch/train.sh; default: the newest log
  --worker=W           0 (default), all, or an index/list/range (e.g. 1-3)
  --lines=N            lines to show (default 100)
  --follow, -f         keep following the log (tail -F) until Ctrl-C
  --project=PROJECT    gcloud project
  --dry-run            print the gcloud command (prefixed '+ ') and run nothing
  -h, --help           this help

Example:
  launch/logs.sh --name=pose-v5p --zone=us-east5-a --run=pose480 --follow
EOF
}

NAME="" ZONE="" PROJECT="" RUN_NAME="" WORKER="0" LINES="100" FOLLOW=0
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -f | --follow) FOLLOW=1; shift ;;
    --name | --name=*) take NAME "$@"; shift "$NSHIFT" ;;
    --zone | --zone=*) take ZONE "$@"; shift "$NSHIFT" ;;
    --run | --run=*) take RUN_NAME "$@"; shift "$NSHIFT" ;;
    --worker | --worker=*) take WORKER "$@"; shift "$NSHIFT" ;;
    --lines | --lines=*) take LINES "$@"; shift "$NSHIFT" ;;
    --project | --project=*) take PROJECT "$@"; shift "$NSHIFT" ;;
    *) die "unknown argument: $1" ;;
  esac
done

require --name "$NAME" && check_name "$NAME"
require --zone "$ZONE" && check_zone "$ZONE"
[[ -z $PROJECT ]] || check_project "$PROJECT"
[[ -z $RUN_NAME ]] || check_run_name "$RUN_NAME"
check_worker "$WORKER"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines=$LINES: expected a number"
need_gcloud

if [[ -n $RUN_NAME ]]; then
  REMOTE="f=$REMOTE_LOGS/$RUN_NAME.log"
else
  REMOTE="f=\$(ls -t $REMOTE_LOGS/*.log 2>/dev/null | head -n 1)"
fi
REMOTE+="; if [ -z \"\$f\" ] || [ ! -f \"\$f\" ]; then"
REMOTE+=" echo \"no log ${RUN_NAME:+$RUN_NAME }in $REMOTE_LOGS on \$(hostname)\" >&2; exit 1; fi"
TAIL="tail -n $LINES"
((FOLLOW)) && TAIL+=" -F"
REMOTE+="; $TAIL \"\$f\""
if [[ $WORKER != 0 ]]; then
  REMOTE+=" | sed -u \"s/^/[\$(hostname)] /\""
fi

run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker="$WORKER" \
  ${GCLOUD_COMMON[@]+"${GCLOUD_COMMON[@]}"} --command="$REMOTE"
