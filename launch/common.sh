# shellcheck shell=bash disable=SC2034,SC2088  # globals for the sourcing scripts; remote '~'
# Shared helpers for the launch/*.sh scripts (sourced, never run).
#
#   PROG                  script name for messages
#   die MSG               usage error: "PROG: error: MSG" on stderr, exit 2
#   fail MSG              runtime error: message on stderr, exit 1
#   take VAR "$@"         value of the flag in $1 (--flag=value or --flag value) into VAR;
#                         sets NSHIFT (1 or 2) for the caller's `shift "$NSHIFT"`
#   q_word, q, quote_cmd  shell-quote words (q: --flag='value') for display and remote commands
#   run CMD...            --dry-run: print "+ CMD" on stdout and run nothing;
#                         otherwise print "+ CMD" on stderr and run it
#   check_* VALUE         input checks (exit 2 naming the flag), e.g. check_trainer_flags
#   accel_hosts ACCEL     number of TPU VM hosts of an accelerator type
#   GCLOUD_COMMON         (--project=P) when --project was given

set -euo pipefail

PROG=$(basename "$0")
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LAUNCH_DIR/.." && pwd)
DRY_RUN=0
NSHIFT=1
GCLOUD_COMMON=()

# Where things live on every TPU worker (literal '~' paths, expanded by the remote shell).
REMOTE_DIR='~/pose_jax'
REMOTE_VENV='~/pose_venv'
REMOTE_LOGS='~/pose_logs'

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf "Run '%s --help' for usage.\n" "$PROG" >&2
  exit 2
}

fail() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 1
}

info() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

take() {
  local var=$1 flag=$2
  if [[ $flag == *=* ]]; then
    printf -v "$var" '%s' "${flag#*=}"
    NSHIFT=1
  else
    if (($# < 3)) || [[ $3 == --* ]]; then
      die "$flag needs a value"
    fi
    printf -v "$var" '%s' "$3"
    NSHIFT=2
  fi
}

q_word() {  # 'single-quoted' unless plainly safe
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

q() {  # like q_word, but --flag='value' rather than '--flag=value'
  if [[ $1 =~ ^(--[A-Za-z0-9_.-]+=)(.+)$ ]]; then
    local flag=${BASH_REMATCH[1]}
    printf '%s%s' "$flag" "$(q_word "${BASH_REMATCH[2]}")"
  else
    q_word "$1"
  fi
}

quote_cmd() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }$(q "$a")"
  done
  printf '%s' "$out"
}

run() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(quote_cmd "$@")"
  else
    printf '+ %s\n' "$(quote_cmd "$@")" >&2
    "$@"
  fi
}

need_gcloud() {
  if ((!DRY_RUN)) && ! command -v gcloud >/dev/null 2>&1; then
    fail "gcloud not found on PATH (install the Google Cloud CLI, or use --dry-run)"
  fi
}

require() {  # require FLAG VALUE
  [[ -n $2 ]] || die "$1 is required"
}

check_name() {  # TPU / queued-resource id: lowercase letters, digits, hyphens
  [[ $1 =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "--name=$1: not a valid TPU name (lowercase letters, digits and '-', starting with a letter)"
}

check_zone() {
  [[ $1 =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] ||
    die "--zone=$1: not a zone (expected e.g. us-east5-a, europe-west4-b)"
}

check_project() {
  [[ $1 =~ ^([a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$ ]] ||
    die "--project=$1: not a project id"
  GCLOUD_COMMON=(--project="$1")
}

check_worker() {
  [[ $1 =~ ^(all|[0-9]+([-,][0-9]+)*)$ ]] ||
    die "--worker=$1: expected all, an index (0), a list (0,2) or a range (1-3)"
}

check_run_name() {
  [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
    die "--run=$1: use letters, digits, '.', '_' and '-' only"
}

check_gs() {  # check_gs FLAG VALUE
  [[ $2 =~ ^gs://[a-z0-9][-a-z0-9_.]*[a-z0-9](/[^[:space:]]*)?$ ]] ||
    die "$1=$2: must be a gs://BUCKET/PATH URL"
}

# Accelerator types: v2-N, v3-N, v4-N, v5p-N (N = TensorCores), v5litepod-N, v6e-N (N = chips).
check_accelerator() {  # check_accelerator VALUE [FLAG]
  local a=$1 flag=${2:---accelerator} gen n
  if [[ $a =~ ^v5e-[0-9]+$ ]]; then
    die "$flag=$a: v5e slices are named v5litepod-N (e.g. v5litepod-16)"
  fi
  [[ $a =~ ^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$ ]] ||
    die "$flag=$a: expected GENERATION-SIZE, e.g. v5p-64, v6e-256, v5litepod-16, v4-32"
  gen=${BASH_REMATCH[1]}
  n=${BASH_REMATCH[2]}
  case $gen in
    v5litepod | v6e)
      [[ " 1 4 8 16 32 64 128 256 " == *" $n "* ]] ||
        die "$flag=$a: $gen sizes are 1, 4, 8, 16, 32, 64, 128 or 256 chips"
      ;;
    *)
      ((n >= 8 && n % 8 == 0)) ||
        die "$flag=$a: $gen sizes count TensorCores: a multiple of 8 (e.g. $gen-8, $gen-64)"
      ;;
  esac
}

check_env() {  # check_env KEY=VALUE (an --env flag's value)
  [[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env=$1: expected KEY=VALUE"
}

check_config_file() {  # check_config_file FILE.py[:VARIANT] (a --config flag's value)
  local file=${1%%:*}
  [[ $file =~ ^[A-Za-z0-9_./-]+\.py$ ]] || die "--config=$1: expected FILE.py[:VARIANT]"
  [[ $file == /* || -f $REPO_ROOT/$file ]] || die "--config=$1: $file is not in $REPO_ROOT"
}

check_trainer_flags() {  # check_trainer_flags WHERE ARG... (the trainer's extra arguments)
  local where=$1 o
  shift
  for o in "$@"; do
    [[ $o == --* ]] || die "trainer argument '$o' is not a flag (expected --config.KEY=VALUE)"
    case $o in
      --coordinator_address* | --num_processes* | --process_id*)
        die "$o: leave the coordinator flags out $where (JAX detects the hosts itself)"
        ;;
    esac
  done
}

accel_hosts() {  # assumes check_accelerator passed
  local gen=${1%-*} n=${1##*-}
  case $gen in
    v5litepod | v6e) if ((n <= 8)); then echo 1; else echo $((n / 4)); fi ;;
    *) echo $((n / 8)) ;;  # 4 chips x 2 TensorCores per host
  esac
}

default_runtime() {  # https://cloud.google.com/tpu/docs/runtimes (PyTorch and JAX table)
  case ${1%-*} in
    v6e) echo v2-alpha-tpuv6e ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v5litepod) echo v2-alpha-tpuv5-lite ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}
