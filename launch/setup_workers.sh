#!/usr/bin/env bash
# Put the code on every TPU worker (git clone/fetch, or a copy of this checkout) and install it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/setup_workers.sh --name=NAME --zone=ZONE (--git-url=URL [--git-ref=REF] | --copy)
                               [options]

On every worker (gcloud compute tpus tpu-vm ssh NAME --worker=all): put the code in ~/pose_jax,
make the virtualenv ~/pose_venv with Python >= 3.11 (apt-installs PYTHON and PYTHON-venv when
missing: the TPU images are Ubuntu 22.04 with Python 3.10), then
  ~/pose_venv/bin/pip install -r requirements-tpu.txt -e .
Rerunning updates the code and the install in place.

Required:
  --name=NAME          TPU name
  --zone=ZONE          its zone
  and one of:
  --git-url=URL        clone URL (the workers need read access to it), fetched on every worker
  --copy               tar this checkout (without .git, .venv*, workdir*, caches) and scp it to
                       the workers (gcloud compute tpus tpu-vm scp --worker=all)
  --copy-from=DIR      like --copy, from another checkout DIR
Options:
  --git-ref=REF        branch, tag or commit to check out with --git-url (default: main)
  --python=PYTHON      interpreter for the venv (default: python3.11)
  --worker=W           all (default), or an index/list/range, e.g. 3 to redo one replaced worker
  --project=PROJECT    gcloud project
  --dry-run            print the commands (prefixed '+ ') and run nothing
  -h, --help           this help

Examples:
  launch/setup_workers.sh --name=pose-v5p --zone=us-east5-a --copy
  launch/setup_workers.sh --name=pose-v5p --zone=us-east5-a \
    --git-url=https://github.com/ORG/pose_jax.git --git-ref=v0.1.0
EOF
}

NAME="" ZONE="" PROJECT="" GIT_URL="" GIT_REF="main" COPY=0 PYTHON="python3.11" WORKER="all"
SRC_DIR="$REPO_ROOT"
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --copy) COPY=1; shift ;;
    --copy-from | --copy-from=*) take SRC_DIR "$@"; shift "$NSHIFT"; COPY=1 ;;
    --name | --name=*) take NAME "$@"; shift "$NSHIFT" ;;
    --zone | --zone=*) take ZONE "$@"; shift "$NSHIFT" ;;
    --git-url | --git-url=*) take GIT_URL "$@"; shift "$NSHIFT" ;;
    --git-ref | --git-ref=*) take GIT_REF "$@"; shift "$NSHIFT" ;;
    --python | --python=*) take PYTHON "$@"; shift "$NSHIFT" ;;
    --worker | --worker=*) take WORKER "$@"; shift "$NSHIFT" ;;
    --project | --project=*) take PROJECT "$@"; shift "$NSHIFT" ;;
    *) die "unknown argument: $1" ;;
  esac
done

require --name "$NAME" && check_name "$NAME"
require --zone "$ZONE" && check_zone "$ZONE"
[[ -z $PROJECT ]] || check_project "$PROJECT"
check_worker "$WORKER"
if ((COPY)) && [[ -n $GIT_URL ]]; then
  die "--copy and --git-url exclude each other"
elif ((!COPY)) && [[ -z $GIT_URL ]]; then
  die "one of --git-url=URL or --copy is required"
fi
if [[ -n $GIT_URL ]]; then
  [[ $GIT_URL =~ ^(https://|http://|ssh://|git://|file://|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:)[^[:space:]\']+$ ]] ||
    die "--git-url=$GIT_URL: not a git URL (https://..., ssh://..., git@host:org/repo.git)"
fi
[[ $GIT_REF =~ ^[A-Za-z0-9][A-Za-z0-9._/-]*$ ]] || die "--git-ref=$GIT_REF: not a branch, tag or commit"
[[ $PYTHON =~ ^python3\.[0-9]+$ ]] || die "--python=$PYTHON: expected python3.N (e.g. python3.11)"
if ((COPY)); then
  [[ -f $SRC_DIR/requirements-tpu.txt && -f $SRC_DIR/setup.py ]] ||
    die "--copy-from=$SRC_DIR: not a pose_jax checkout (no requirements-tpu.txt and setup.py)"
  SRC_DIR=$(cd "$SRC_DIR" && pwd)
fi
need_gcloud

SSH=(gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker="$WORKER")
SSH+=(${GCLOUD_COMMON[@]+"${GCLOUD_COMMON[@]}"})

# 1. The code in ~/pose_jax on every worker.
if ((COPY)); then
  TARBALL="${TMPDIR:-/tmp}/pose_jax.$$.tar.gz"
  ((DRY_RUN)) || trap 'rm -f "$TARBALL"' EXIT
  run tar -czf "$TARBALL" -C "$SRC_DIR" --exclude=.git --exclude=.venv --exclude='./.venv*' \
    --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache --exclude=.ruff_cache \
    --exclude='./workdir*' --exclude=./outputs --exclude=./build --exclude=./.whl .
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:pose_jax.tar.gz" --zone="$ZONE" \
    --worker="$WORKER" ${GCLOUD_COMMON[@]+"${GCLOUD_COMMON[@]}"}
  FETCH="mkdir -p $REMOTE_DIR && tar -xzf ~/pose_jax.tar.gz -C $REMOTE_DIR && rm -f ~/pose_jax.tar.gz"
else
  FETCH="{ [ -d $REMOTE_DIR/.git ] || git clone --quiet $(q "$GIT_URL") $REMOTE_DIR; }"
  FETCH+=" && cd $REMOTE_DIR && git remote set-url origin $(q "$GIT_URL")"
  FETCH+=" && git fetch --quiet origin $(q "$GIT_REF") && git checkout --quiet --force --detach FETCH_HEAD"
  FETCH+=" && git log -1 --format='%h %s'"
fi

# 2. Python >= 3.11 (apt when missing), the venv (remade if its Python is too old), the install.
APT="sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600"
INSTALL="if ! $PYTHON -c 'import ensurepip, venv' >/dev/null 2>&1; then"
INSTALL+=" $APT update -q && $APT install -y -q $PYTHON $PYTHON-venv; fi"
INSTALL+=" && if ! $REMOTE_VENV/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'"
INSTALL+=" >/dev/null 2>&1; then rm -rf $REMOTE_VENV && $PYTHON -m venv $REMOTE_VENV; fi"
INSTALL+=" && $REMOTE_VENV/bin/pip install -q --upgrade pip"
INSTALL+=" && cd $REMOTE_DIR && $REMOTE_VENV/bin/pip install -q -r requirements-tpu.txt -e ."
INSTALL+=" && $REMOTE_VENV/bin/python -c 'import jax, pose_jax; print(\"pose_jax ok, jax\", jax.__version__)'"

run "${SSH[@]}" --command="set -e; $FETCH && $INSTALL"
