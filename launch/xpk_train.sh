#!/usr/bin/env bash
# Train on GKE through xpk: create the workload (one slice or several), follow its log, delete it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/xpk_train.sh --cluster=CLUSTER --zone=ZONE --workload=NAME --tpu-type=TYPE
                           --workdir=gs://BUCKET/PATH [options] [--config.KEY=VALUE ...]
                           [-- EXTRA_TRAINER_FLAGS ...]
       launch/xpk_train.sh --cluster=CLUSTER --zone=ZONE --workload=NAME --logs [--all-hosts]
       launch/xpk_train.sh --cluster=CLUSTER --zone=ZONE --workload=NAME --delete

Creates an xpk workload (a JobSet: one pod per TPU host of every slice) whose every host runs
  python -m pose_jax.main --config=CONFIG --workdir=WORKDIR --distributed=on [--config.KEY=VALUE ...]
the same trainer command as launch/train.sh, from the directory xpk builds into the image (this
checkout, --script-dir). With --docker-image the image must already hold the package; otherwise
each host first runs pip install -r requirements-tpu.txt -e . on --base-docker-image. A restarted
or recreated workload resumes from the latest checkpoint in WORKDIR; on deletion or preemption
the pods get SIGTERM and the trainer finishes its step and checkpoints (give it
--grace-seconds). --logs follows the log of slice 0's host 0 (kubectl logs -f), --all-hosts
every host's, prefixed with its pod; --delete deletes the workload.

Required:
  --cluster=CLUSTER    GKE cluster (made by xpk cluster create)
  --zone=ZONE          the cluster's zone (its region is used for kubectl credentials)
  --workload=NAME      workload name: lowercase letters, digits and '-', at most 40 characters
  --tpu-type=TYPE      slice type, e.g. v5p-64, v6e-256, v5litepod-16 (create only)
  --workdir=WORKDIR    run directory, gs://BUCKET/PATH (create only)
Options:
  --num-slices=N       slices (default 1); the trainer's mesh must say how to use them
  --config=SPEC        trainer config (default: configs/wan_i2v.py:480p)
  --config.KEY=VALUE   override passed through to the trainer
  --env=KEY=VALUE      environment variable for the trainer (repeatable)
  --docker-image=IMG   a prebuilt image with this package installed (skips the pip install)
  --base-docker-image=IMG  the image xpk adds this checkout to (default python:3.11)
  --max-restarts=N     times the JobSet restarts after a failure or preemption (default 0)
  --grace-seconds=S    termination grace period for the final checkpoint (default 600)
  --priority=P         very-low, low, medium (default), high or very-high
  --follow             after creating, follow the log as --logs does
  --logs               follow the workload's log instead of creating it
  --all-hosts          with --logs/--follow: every host's log, not only slice 0 host 0
  --delete             delete the workload instead of creating it
  --project=PROJECT    gcloud project
  --dry-run            print the commands (prefixed '+ ') and run nothing
  -h, --help           this help
  -- ARGS              everything after -- is passed to the trainer as is

Example:
  launch/xpk_train.sh --cluster=pose-v5p --zone=us-east5-a --workload=pose480 \
    --tpu-type=v5p-64 --workdir=gs://my-bucket/runs/pose480 --max-restarts=3 --follow \
    --config.ckpt.init_from=gs://my-bucket/teachers/wan21_i2v_14b
EOF
}

CLUSTER="" ZONE="" PROJECT="" WORKLOAD="" TPU_TYPE="" WORKDIR="" CONFIG="configs/wan_i2v.py:480p"
SLICES=1 IMAGE="" BASE_IMAGE="python:3.11" RESTARTS=0 GRACE=600 PRIORITY="medium"
ACTION="create" FOLLOW=0 ALL_HOSTS=0
OVERRIDES=()
ENVS=()
value=""
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --follow) FOLLOW=1; shift ;;
    --logs) ACTION="logs"; shift ;;
    --delete) ACTION="delete"; shift ;;
    --all-hosts) ALL_HOSTS=1; shift ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    --config.*=*) OVERRIDES+=("$1"); shift ;;
    --config.*) die "$1: write trainer overrides as --config.KEY=VALUE" ;;
    --cluster | --cluster=*) take CLUSTER "$@"; shift "$NSHIFT" ;;
    --zone | --zone=*) take ZONE "$@"; shift "$NSHIFT" ;;
    --workload | --workload=*) take WORKLOAD "$@"; shift "$NSHIFT" ;;
    --tpu-type | --tpu-type=*) take TPU_TYPE "$@"; shift "$NSHIFT" ;;
    --workdir | --workdir=*) take WORKDIR "$@"; shift "$NSHIFT" ;;
    --num-slices | --num-slices=*) take SLICES "$@"; shift "$NSHIFT" ;;
    --config | --config=*) take CONFIG "$@"; shift "$NSHIFT" ;;
    --docker-image | --docker-image=*) take IMAGE "$@"; shift "$NSHIFT" ;;
    --base-docker-image | --base-docker-image=*) take BASE_IMAGE "$@"; shift "$NSHIFT" ;;
    --max-restarts | --max-restarts=*) take RESTARTS "$@"; shift "$NSHIFT" ;;
    --grace-seconds | --grace-seconds=*) take GRACE "$@"; shift "$NSHIFT" ;;
    --priority | --priority=*) take PRIORITY "$@"; shift "$NSHIFT" ;;
    --env | --env=*)
      take value "$@"; shift "$NSHIFT"
      check_env "$value" && ENVS+=("$value")
      ;;
    --project | --project=*) take PROJECT "$@"; shift "$NSHIFT" ;;
    *) die "unknown argument: $1 (trainer overrides: --config.KEY=VALUE, or put them after --)" ;;
  esac
done

require --cluster "$CLUSTER"
[[ $CLUSTER =~ ^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$ ]] ||
  die "--cluster=$CLUSTER: not a GKE cluster name (lowercase letters, digits, '-', <= 40)"
require --zone "$ZONE" && check_zone "$ZONE"
[[ -z $PROJECT ]] || check_project "$PROJECT"
require --workload "$WORKLOAD"
[[ $WORKLOAD =~ ^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$ ]] ||
  die "--workload=$WORKLOAD: lowercase letters, digits and '-', starting with a letter, <= 40"
if [[ $ACTION == create ]]; then
  require --tpu-type "$TPU_TYPE" && check_accelerator "$TPU_TYPE" --tpu-type
  require --workdir "$WORKDIR"
  [[ $WORKDIR == gs://* ]] ||
    die "--workdir=$WORKDIR: must be gs://BUCKET/PATH (every pod reads and writes it; pods keep" \
      "nothing when they restart)"
  check_gs --workdir "$WORKDIR"
  [[ $SLICES =~ ^[1-9][0-9]*$ ]] || die "--num-slices=$SLICES: expected a positive number"
  [[ $RESTARTS =~ ^[0-9]+$ ]] || die "--max-restarts=$RESTARTS: expected a number"
  [[ $GRACE =~ ^[0-9]+$ ]] || die "--grace-seconds=$GRACE: expected a number of seconds"
  [[ " very-low low medium high very-high " == *" $PRIORITY "* ]] ||
    die "--priority=$PRIORITY: one of very-low, low, medium, high, very-high"
  check_config_file "$CONFIG"
  check_trainer_flags "on GKE" ${OVERRIDES[@]+"${OVERRIDES[@]}"}
elif [[ -n $TPU_TYPE$WORKDIR || ${#OVERRIDES[@]} -gt 0 ]]; then
  die "--$ACTION takes no --tpu-type, --workdir or trainer flags"
fi
if ((!DRY_RUN)); then
  command -v xpk >/dev/null 2>&1 || [[ $ACTION == logs ]] ||
    fail "xpk not found on PATH (pip install xpk, or use --dry-run)"
  if [[ $ACTION == logs ]] || ((FOLLOW)); then
    need_gcloud
    command -v kubectl >/dev/null 2>&1 || fail "kubectl not found on PATH (or use --dry-run)"
  fi
fi

XPK_COMMON=(--cluster="$CLUSTER" --zone="$ZONE" ${GCLOUD_COMMON[@]+"${GCLOUD_COMMON[@]}"})

follow_logs() {
  local selector="jobset.sigs.k8s.io/jobset-name=$WORKLOAD" requests=1
  if ((ALL_HOSTS)); then
    requests=64
  else
    selector+=",jobset.sigs.k8s.io/job-index=0,batch.kubernetes.io/job-completion-index=0"
  fi
  run gcloud container clusters get-credentials "$CLUSTER" --region="${ZONE%-*}" \
    ${GCLOUD_COMMON[@]+"${GCLOUD_COMMON[@]}"}
  if ((!DRY_RUN)); then  # a queued workload has no pods yet
    until [[ -n $(kubectl get pods --selector="$selector" --output=name 2>/dev/null) ]]; do
      info "waiting for the pods of $WORKLOAD to be scheduled ..."
      sleep 30
    done
  fi
  run kubectl wait --for=condition=Ready pod --selector="$selector" --timeout=3600s
  run kubectl logs --follow --prefix --all-containers --max-log-requests="$requests" \
    --selector="$selector"
}

case $ACTION in
  delete) run xpk workload delete "${XPK_COMMON[@]}" --workload="$WORKLOAD" --force ;;
  logs) follow_logs ;;
  create)
    TRAIN=(python -m pose_jax.main --config="$CONFIG" --workdir="$WORKDIR" --distributed=on)
    TRAIN+=(${OVERRIDES[@]+"${OVERRIDES[@]}"})
    COMMAND="$(quote_cmd "${TRAIN[@]}")"
    IMAGE_FLAGS=(--docker-image="$IMAGE")
    if [[ -z $IMAGE ]]; then
      COMMAND="pip install -q -r requirements-tpu.txt -e . && $COMMAND"
      IMAGE_FLAGS=(--base-docker-image="$BASE_IMAGE" --script-dir="$REPO_ROOT")
    fi
    ENV_FLAGS=(--env=PYTHONUNBUFFERED=1)
    for e in ${ENVS[@]+"${ENVS[@]}"}; do
      ENV_FLAGS+=(--env="$e")
    done
    run xpk workload create "${XPK_COMMON[@]}" --workload="$WORKLOAD" --tpu-type="$TPU_TYPE" \
      --num-slices="$SLICES" "${IMAGE_FLAGS[@]}" --command="$COMMAND" "${ENV_FLAGS[@]}" \
      --max-restarts="$RESTARTS" --termination-grace-period-seconds="$GRACE" \
      --priority="$PRIORITY"
    if ((FOLLOW)); then
      follow_logs
    else
      info "follow it with: launch/xpk_train.sh --cluster=$CLUSTER --zone=$ZONE" \
        "--workload=$WORKLOAD --logs; delete it with --delete"
    fi
    ;;
esac
