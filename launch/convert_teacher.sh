#!/usr/bin/env bash
# Convert a diffusers or original Wan2.1 teacher checkpoint into an orbax checkpoint on gs://.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/convert_teacher.sh --src=DIR --dst=gs://BUCKET/PATH [--format=diffusers|wan]
                                 [--dtype=bf16|fp32|source] [--on-tpu --name=NAME --zone=ZONE]

Runs
  python -m pose_jax.convert import --format=FORMAT --src=DIR --dst=gs://... --dtype=DTYPE
here (with --python, default python3, which must have pose_jax installed), or with --on-tpu on
worker 0 of the TPU (~/pose_venv/bin/python in ~/pose_jax, after launch/setup_workers.sh).
Pass the result to the trainer as --config.ckpt.init_from=gs://BUCKET/PATH.

Required:
  --src=DIR            checkpoint directory or .safetensors file: a diffusers transformer
                       directory (Wan-AI/Wan2.1-I2V-14B-480P-Diffusers/transformer) or the
                       original Wan2.1 release directory; local or gs://. With --on-tpu a local
                       path is read on worker 0 (absolute, or relative to ~/pose_jax).
  --dst=gs://B/PATH    orbax checkpoint to write
Options:
  --format=FORMAT      diffusers (default) or wan (original Wan2.1 release files)
  --dtype=DTYPE        bf16 (default), fp32, or source (keep the checkpoint's dtype)
  --config=PRESET      preset name (e.g. i2v_14b) or diffusers config.json; default: read from
                       the source
  --overwrite          replace an existing --dst
  --python=PYTHON      local interpreter (default: python3)
  --on-tpu             run on worker 0 of the TPU --name in --zone instead of here
  --name=NAME          TPU name (with --on-tpu)
  --zone=ZONE          its zone (with --on-tpu)
  --project=PROJECT    gcloud project (with --on-tpu)
  --dry-run            print the command (prefixed '+ ') and run nothing
  -h, --help           this help

Example:
  launch/convert_teacher.sh --src=$HOME/Wan2.1-I2V-14B-480P-Diffusers/transformer \
    --dst=gs://my-bucket/teachers/wan21_i2v_14b
EOF
}

SRC="" DST="" FORMAT="diffusers" DTYPE="bf16" CONFIG="" OVERWRITE=0 PYTHON="python3" ON_TPU=0
NAME="" ZONE="" PROJECT=""
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --overwrite) OVERWRITE=1; shift ;;
    --on-tpu) ON_TPU=1; shift ;;
    --src | --src=*) take SRC "$@"; shift "$NSHIFT" ;;
    --dst | --dst=*) take DST "$@"; shift "$NSHIFT" ;;
    --format | --format=*) take FORMAT "$@"; shift "$NSHIFT" ;;
    --dtype | --dtype=*) take DTYPE "$@"; shift "$NSHIFT" ;;
    --config | --config=*) take CONFIG "$@"; shift "$NSHIFT" ;;
    --python | --python=*) take PYTHON "$@"; shift "$NSHIFT" ;;
    --name | --name=*) take NAME "$@"; shift "$NSHIFT" ;;
    --zone | --zone=*) take ZONE "$@"; shift "$NSHIFT" ;;
    --project | --project=*) take PROJECT "$@"; shift "$NSHIFT" ;;
    *) die "unknown argument: $1" ;;
  esac
done

require --src "$SRC"
require --dst "$DST"
check_gs --dst "$DST"
[[ $FORMAT == diffusers || $FORMAT == wan ]] || die "--format=$FORMAT: expected diffusers or wan"
[[ $DTYPE == bf16 || $DTYPE == fp32 || $DTYPE == source ]] ||
  die "--dtype=$DTYPE: expected bf16, fp32 or source"
if ((ON_TPU)); then
  require --name "$NAME" && check_name "$NAME"
  require --zone "$ZONE" && check_zone "$ZONE"
  [[ -z $PROJECT ]] || check_project "$PROJECT"
  [[ $SRC != \~* ]] || die "--src=$SRC: give an absolute path on worker 0 (~ is not expanded there)"
  need_gcloud
else
  [[ -z $NAME && -z $ZONE && -z $PROJECT ]] || die "--name/--zone/--project need --on-tpu"
  [[ $SRC == gs://* || -e $SRC ]] || die "--src=$SRC: no such file or directory"
  [[ -z $CONFIG || ! $CONFIG == *.json || -f $CONFIG ]] || die "--config=$CONFIG: no such file"
  if ((!DRY_RUN)) && ! command -v "$PYTHON" >/dev/null 2>&1; then
    die "--python=$PYTHON: not found on PATH"
  fi
fi

ARGS=(-m pose_jax.convert import --format="$FORMAT" --src="$SRC" --dst="$DST")
[[ $DTYPE == source ]] || ARGS+=(--dtype="$DTYPE")
[[ -z $CONFIG ]] || ARGS+=(--config="$CONFIG")
((!OVERWRITE)) || ARGS+=(--overwrite)

if ((ON_TPU)); then
  run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=0 \
    ${GCLOUD_COMMON[@]+"${GCLOUD_COMMON[@]}"} \
    --command="set -e; cd $REMOTE_DIR; $REMOTE_VENV/bin/python $(quote_cmd "${ARGS[@]}")"
else
  run "$PYTHON" "${ARGS[@]}"
fi
