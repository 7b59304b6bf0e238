#!/usr/bin/env bash
# Start (or resume) python -m pose_jax.main on every worker of a TPU slice, in the background.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/train.sh --name=NAME --zone=ZONE --workdir=gs://BUCKET/PATH [options]
                       [--config.KEY=VALUE ...] [-- EXTRA_TRAINER_FLAGS ...]

Runs on every worker at once (gcloud compute tpus tpu-vm ssh NAME --worker=all):
  cd ~/pose_jax && nohup ~/pose_venv/bin/python -m pose_jax.main --config=CONFIG
      --workdir=WORKDIR --distributed=on [--config.KEY=VALUE ...] >> ~/pose_logs/RUN.log 2>&1 &
and returns; the pid is kept in ~/pose_logs/RUN.pid. Rerunning the same command resumes the run
from the latest checkpoint in WORKDIR (refused on a worker where RUN is still running: --stop
first). No coordinator flags are passed: --distributed=on lets jax.distributed.initialize()
find the other hosts of the TPU VM itself. --stop sends SIGTERM: the trainer finishes its step,
checkpoints and exits 0, like on a maintenance event.

Required:
  --name=NAME          TPU name
  --zone=ZONE          its zone
  --workdir=WORKDIR    run directory, gs://BUCKET/PATH (a local path is allowed only with
                       --accelerator naming a single-host slice, e.g. v5p-8, v6e-8)
Options:
  --config=SPEC        trainer config (default: configs/wan_i2v.py:480p; or configs/wan_i2v.py:720p)
  --config.KEY=VALUE   override passed through to the trainer, e.g.
                       --config.ckpt.init_from=gs://B/teachers/wan21_i2v_14b
                       --config.data.path=/tmp/pose_data/train (a local directory on every
                       worker: the data loader reads local files)
  --accelerator=TYPE   the slice's type (e.g. v5p-64); only used to check --workdir
  --run=RUN            name of the log and pid files (default: the last part of --workdir)
  --env=KEY=VALUE      environment variable for the trainer (repeatable), e.g. XLA_FLAGS=...
  --stop               stop RUN on the workers instead of starting it (needs --run or --workdir)
  --worker=W           all (default); only change it to stop or restart part of a slice
  --project=PROJECT    gcloud project
  --dry-run            print the gcloud command (prefixed '+ ') and run nothing
  -h, --help           this help
  -- ARGS              everything after -- is passed to the trainer as is

Example:
  launch/train.sh --name=pose-v5p --zone=us-east5-a --workdir=gs://my-bucket/runs/pose480 \
    --config.ckpt.init_from=gs://my-bucket/teachers/wan21_i2v_14b \
    --config.data.path=/tmp/pose_data/train
EOF
}

NAME="" ZONE="" PROJECT="" WORKDIR="" CONFIG="configs/wan_i2v.py:480p" ACCEL="" RUN_NAME=""
WORKER="all" STOP=0
OVERRIDES=()
ENVS=()
value=""
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --stop) STOP=1; shift ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    --config.*=*) OVERRIDES+=("$1"); shift ;;
    --config.*) die "$1: write trainer overrides as --config.KEY=VALUE" ;;
    --name | --name=*) take NAME "$@"; shift "$NSHIFT" ;;
    --zone | --zone=*) take ZONE "$@"; shift "$NSHIFT" ;;
    --workdir | --workdir=*) take WORKDIR "$@"; shift "$NSHIFT" ;;
    --config | --config=*) take CONFIG "$@"; shift "$NSHIFT" ;;
    --accelerator | --accelerator=*) take ACCEL "$@"; shift "$NSHIFT" ;;
    --run | --run=*) take RUN_NAME "$@"; shift "$NSHIFT" ;;
    --env | --env=*)
      take value "$@"; shift "$NSHIFT"
      check_env "$value" && ENVS+=("$value")
      ;;
    --worker | --worker=*) take WORKER "$@"; shift "$NSHIFT" ;;
    --project | --project=*) take PROJECT "$@"; shift "$NSHIFT" ;;
    *) die "unknown argument: $1 (trainer overrides: --config.KEY=VALUE, or put them after --)" ;;
  esac
done

require --name "$NAME" && check_name "$NAME"
require --zone "$ZONE" && check_zone "$ZONE"
[[ -z $PROJECT ]] || check_project "$PROJECT"
check_worker "$WORKER"
[[ -z $ACCEL ]] || check_accelerator "$ACCEL"
if ((STOP)); then
  [[ -n $RUN_NAME || -n $WORKDIR ]] || die "--stop needs --run=RUN or --workdir=WORKDIR"
else
  require --workdir "$WORKDIR"
fi
if [[ -n $WORKDIR ]]; then
  if [[ $WORKDIR == gs://* ]]; then
    check_gs --workdir "$WORKDIR"
  elif [[ -z $ACCEL ]]; then
    die "--workdir=$WORKDIR: must be gs://BUCKET/PATH (every host of a multi-host slice reads and" \
      "writes it); a local path needs --accelerator naming a single-host slice"
  elif (($(accel_hosts "$ACCEL") > 1)); then
    die "--workdir=$WORKDIR: must be gs://BUCKET/PATH on $ACCEL ($(accel_hosts "$ACCEL") hosts)"
  elif [[ ! $WORKDIR =~ ^[A-Za-z0-9_./-]+$ ]]; then
    die "--workdir=$WORKDIR: a local path is absolute or relative to ~/pose_jax, in letters," \
      "digits and ._/- (~ is not expanded)"
  fi
fi
if [[ -z $RUN_NAME ]]; then
  RUN_NAME=${WORKDIR%/}
  RUN_NAME=${RUN_NAME##*/}
  RUN_NAME=${RUN_NAME//[^A-Za-z0-9._-]/_}
fi
check_run_name "$RUN_NAME"
check_config_file "$CONFIG"
check_trainer_flags "on TPU VMs" ${OVERRIDES[@]+"${OVERRIDES[@]}"}
for o in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do
  case $o in
    --config.data.path=gs://* | --config.data.eval_path=gs://*)
      info "note: ${o%%=*} is gs://: every worker fetches the whole dataset into" \
        "config.data.cache_dir (local disk) first; larger than a disk: gcsfuse, pass the mount"
      ;;
  esac
done
need_gcloud

LOG="$REMOTE_LOGS/$RUN_NAME.log"
PID="$REMOTE_LOGS/$RUN_NAME.pid"
# Alive = the pid in the file is still a pose_jax.main process (not a reused pid, not a zombie).
ALIVE="[ -f $PID ] && grep -qa pose_jax.main \"/proc/\$(cat $PID)/cmdline\" 2>/dev/null"
if ((STOP)); then
  REMOTE="if $ALIVE; then kill \"\$(cat $PID)\" && echo \"stopped $RUN_NAME on \$(hostname)\";"
  REMOTE+=" else echo \"$RUN_NAME is not running on \$(hostname)\"; fi"
else
  TRAIN=(-m pose_jax.main --config="$CONFIG" --workdir="$WORKDIR" --distributed=on)
  TRAIN+=(${OVERRIDES[@]+"${OVERRIDES[@]}"})
  REMOTE="set -e; mkdir -p $REMOTE_LOGS; cd $REMOTE_DIR"
  REMOTE+="; if $ALIVE; then echo \"$RUN_NAME is already running on \$(hostname)"
  REMOTE+=" (pid \$(cat $PID)); stop it with --stop\" >&2; exit 1; fi"
  REMOTE+="; echo \"=== \$(date -u +%FT%TZ) start on \$(hostname)\" >> $LOG"
  REMOTE+="; PYTHONUNBUFFERED=1"
  for e in ${ENVS[@]+"${ENVS[@]}"}; do
    REMOTE+=" ${e%%=*}=$(q_word "${e#*=}")"
  done
  REMOTE+=" nohup $REMOTE_VENV/bin/python $(quote_cmd "${TRAIN[@]}") >> $LOG 2>&1 < /dev/null &"
  REMOTE+=" echo \$! > $PID; echo \"started $RUN_NAME on \$(hostname): pid \$!, log $LOG\""
fi

run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker="$WORKER" \
  ${GCLOUD_COMMON[@]+"${GCLOUD_COMMON[@]}"} --command="$REMOTE"
if ((!STOP)); then
  info "follow it with: launch/logs.sh --name=$NAME --zone=$ZONE --run=$RUN_NAME --follow"
fi
