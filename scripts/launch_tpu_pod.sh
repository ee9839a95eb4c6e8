#!/usr/bin/env bash
# Runs `python -m big_distill.train ARGS...` on every worker of a Cloud TPU VM
# pod. Run `scripts/launch_tpu_pod.sh -h` for the options; the usage text below
# is the documentation.
#
# Why it is shaped this way:
# - Every step is one `gcloud compute tpus tpu-vm ... --worker=all`, so all
#   workers get the same code, the same venv and the same command. The trainer
#   calls jax.distributed.initialize(), which finds the pod's workers by itself.
# - Setup and training are separate ssh calls: a worker whose setup fails
#   stops the launch, instead of the others waiting for it in
#   jax.distributed.initialize() until they time out.
# - TPU VM images ship an older Python than big_distill needs (>= 3.11), so the
#   venv is made by uv (from PyPI), which fetches the Python it is asked for.
# - Every value that reaches a remote shell is single-quoted by q(), so train
#   arguments with spaces, quotes or `$` arrive unchanged.
# - All settings are checked before the first gcloud call.
# Written for bash 3.2 (macOS) and later: no mapfile, no associative arrays,
# and possibly empty arrays are expanded as ${a[@]+"${a[@]}"}.

set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true  # Keep '&' literal in ${x//a/b}.

usage() {
  cat <<'EOF'
Usage: scripts/launch_tpu_pod.sh [OPTIONS] -- TRAIN_ARGS...

Runs `python -m big_distill.train TRAIN_ARGS... --workdir=WORKDIR` on every
worker of a TPU VM pod, after fetching the code and installing it in a venv
on each worker.

Example:
  scripts/launch_tpu_pod.sh --tpu my-v4-32 --zone us-central2-b \
    --repo https://github.com/ORG/big_distill.git --ref main \
    --workdir gs://BUCKET/runs/flowers_fm --data-dir gs://BUCKET/tfds \
    -- --config=configs/flowers_r50.py --config.total_epochs=1000

Required (option, or the environment variable in brackets):
  --tpu NAME            TPU VM name [TPU_NAME]
  --zone ZONE           its zone [TPU_ZONE]
  --workdir gs://...    run folder, shared by all workers [WORKDIR]; may also
                        be given as --workdir=... among TRAIN_ARGS
  --data-dir gs://...   TFDS data_dir, prepared beforehand [TFDS_DATA_DIR]
  and the code, one of:
  --repo URL            git URL to clone on each worker [REPO_URL]
  --tarball PATH        a .tar.gz of the repository, or a local git checkout
                        (packed here: its tracked files and untracked files
                        that git does not ignore), copied to each worker with
                        `gcloud compute tpus tpu-vm scp` [REPO_TARBALL]

Optional:
  --project PROJECT     Google Cloud project [TPU_PROJECT]; default: gcloud's
  --ref REF             branch, tag or full commit of --repo [REPO_REF] (main)
  --extras LIST         pip extras of big_distill, e.g. test [PIP_EXTRAS] (none)
  --jax SPEC            JAX requirement installed with it [JAX_SPEC] (jax[tpu])
  --python VERSION      Python of the venv [PYTHON_VERSION] (3.11)
  --remote-dir DIR      code folder on each worker, relative to its home
                        [REMOTE_DIR] (big_distill)
  --venv DIR            venv on each worker, relative to its home
                        [REMOTE_VENV] (big_distill_venv)
  --env NAME=VALUE      environment variable for training (repeatable)
  --gcloud-flag FLAG    extra flag for every gcloud call, e.g.
                        --gcloud-flag=--tunnel-through-iap (repeatable)
  --skip-setup          reuse the code and venv already on the workers
                        [SKIP_SETUP=1]
  --detach              train under nohup, logging to ~/big_distill_train.log
                        on each worker, and return at once [DETACH=1]
  --dry-run             print the gcloud commands and remote scripts, run
                        nothing [DRY_RUN=1]
  -h, --help            this text

TRAIN_ARGS (after --) go to big_distill.train unchanged; relative paths such
as --config=configs/flowers_r50.py are relative to the repository root.
EOF
}

die() {
  echo "launch_tpu_pod.sh: error: $*" >&2
  echo "Run 'scripts/launch_tpu_pod.sh -h' for usage." >&2
  exit 2
}

# POSIX single quoting: the result is one word in any sh-like shell.
q() {
  local r="'\\''"
  printf "'%s'" "${1//\'/$r}"
}

TPU_NAME=${TPU_NAME:-}
TPU_ZONE=${TPU_ZONE:-}
TPU_PROJECT=${TPU_PROJECT:-}
REPO_URL=${REPO_URL:-}
REPO_REF=${REPO_REF:-main}
REPO_TARBALL=${REPO_TARBALL:-}
WORKDIR=${WORKDIR:-}
TFDS_DATA_DIR=${TFDS_DATA_DIR:-}
PIP_EXTRAS=${PIP_EXTRAS:-}
JAX_SPEC=${JAX_SPEC:-jax[tpu]}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
REMOTE_DIR=${REMOTE_DIR:-big_distill}
REMOTE_VENV=${REMOTE_VENV:-big_distill_venv}
SKIP_SETUP=${SKIP_SETUP:-0}
DETACH=${DETACH:-0}
DRY_RUN=${DRY_RUN:-0}
env_exports=()
gcloud_flags=()
train_args=()

while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    --skip-setup) SKIP_SETUP=1; shift; continue ;;
    --detach) DETACH=1; shift; continue ;;
    --dry-run) DRY_RUN=1; shift; continue ;;
    --*=*) opt=${1%%=*}; val=${1#*=}; shift; set -- "$opt" "$val" "$@" ;;
  esac
  case "$1" in
    --tpu|--zone|--project|--repo|--ref|--tarball|--workdir|--data-dir|--extras|--jax|\
    --python|--remote-dir|--venv|--env|--gcloud-flag)
      (($# >= 2)) || die "$1 needs a value."
      ;;
    *) die "unknown option '$1'. Arguments for big_distill.train go after '--'." ;;
  esac
  case "$1" in
    --tpu) TPU_NAME=$2 ;;
    --zone) TPU_ZONE=$2 ;;
    --project) TPU_PROJECT=$2 ;;
    --repo) REPO_URL=$2 ;;
    --ref) REPO_REF=$2 ;;
    --tarball) REPO_TARBALL=$2 ;;
    --workdir) WORKDIR=$2 ;;
    --data-dir) TFDS_DATA_DIR=$2 ;;
    --extras) PIP_EXTRAS=$2 ;;
    --jax) JAX_SPEC=$2 ;;
    --python) PYTHON_VERSION=$2 ;;
    --remote-dir) REMOTE_DIR=$2 ;;
    --venv) REMOTE_VENV=$2 ;;
    --env)
      [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants NAME=VALUE, got '$2'."
      env_exports+=("$2") ;;
    --gcloud-flag) gcloud_flags+=("$2") ;;
  esac
  shift 2
done

# ---- Check every setting before any gcloud call -----------------------------

for v in SKIP_SETUP DETACH DRY_RUN; do  # From the environment: 1, true or yes.
  case ${!v} in 1|true|yes) printf -v "$v" 1 ;; *) printf -v "$v" 0 ;; esac
done

# A --workdir among the train arguments counts as the workdir.
train_workdir=
i=0
while ((i < ${#train_args[@]})); do
  case "${train_args[i]}" in
    --workdir=*) train_workdir=${train_args[i]#--workdir=} ;;
    --workdir) ((i + 1 < ${#train_args[@]})) && train_workdir=${train_args[i + 1]} ;;
  esac
  i=$((i + 1))
done
if [[ -n $train_workdir ]]; then
  [[ -z $WORKDIR || $WORKDIR == "$train_workdir" ]] \
    || die "two workdirs: '$WORKDIR' (--workdir/WORKDIR) and '$train_workdir' (train arguments)."
  WORKDIR=$train_workdir
else
  [[ -z $WORKDIR ]] || train_args+=("--workdir=$WORKDIR")
fi

missing=()
[[ -n $TPU_NAME ]] || missing+=("the TPU name (--tpu or TPU_NAME)")
[[ -n $TPU_ZONE ]] || missing+=("its zone (--zone or TPU_ZONE)")
[[ -n $REPO_URL || -n $REPO_TARBALL ]] \
  || missing+=("the code: --repo URL (REPO_URL) or --tarball PATH (REPO_TARBALL)")
[[ -n $WORKDIR ]] || missing+=("the workdir (--workdir gs://... or WORKDIR)")
[[ -n $TFDS_DATA_DIR ]] || missing+=("the TFDS data dir (--data-dir gs://... or TFDS_DATA_DIR)")
if ((${#missing[@]})); then
  msg="missing required settings:"
  for m in "${missing[@]}"; do msg+=$'\n'"  - $m"; done
  die "$msg"
fi
[[ -z $REPO_URL || -z $REPO_TARBALL ]] \
  || die "give the code once: --repo ($REPO_URL) or --tarball ($REPO_TARBALL), not both."
[[ -z $REPO_TARBALL || -e $REPO_TARBALL ]] || die "--tarball $REPO_TARBALL does not exist."
# Every worker must see the same workdir and data, and a TPU VM's disk is its own.
[[ $WORKDIR == gs://* ]] || die "the workdir must be on GCS (gs://...), got '$WORKDIR'."
[[ $TFDS_DATA_DIR == gs://* ]] \
  || die "the TFDS data dir must be on GCS (gs://...), got '$TFDS_DATA_DIR'."
has_config=0
for a in ${train_args[@]+"${train_args[@]}"}; do
  case "$a" in --config|--config=*) has_config=1 ;; esac
done
((has_config)) || die "no --config=... among the train arguments (after '--')."
if ((!DRY_RUN)) && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud is not on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk)."
fi

# ---- Remote scripts ----------------------------------------------------------

REMOTE_TARBALL=big_distill_src.tar.gz  # In each worker's home.
LOG=big_distill_train.log

# Shared start of both remote scripts: settings, made absolute under $HOME.
remote_head() {
  cat <<EOF
set -euo pipefail
cd "\$HOME"
REMOTE_DIR=$(q "$REMOTE_DIR")
VENV=$(q "$REMOTE_VENV")
EOF
  cat <<'EOF'
case $REMOTE_DIR in /*) ;; *) REMOTE_DIR=$HOME/$REMOTE_DIR ;; esac
case $VENV in /*) ;; *) VENV=$HOME/$VENV ;; esac
say() { echo "[$(hostname)] $*"; }
EOF
}

setup_script() {
  remote_head
  cat <<EOF
REPO_URL=$(q "$REPO_URL")
REPO_REF=$(q "$REPO_REF")
TARBALL=$(q "$REMOTE_TARBALL")
PYTHON_VERSION=$(q "$PYTHON_VERSION")
PKG=$(q "${PIP_EXTRAS:+[$PIP_EXTRAS]}")
JAX_SPEC=$(q "$JAX_SPEC")
EOF
  cat <<'EOF'
MARK=.launch_tpu_pod
case ${REMOTE_DIR%/} in ""|/|"${HOME%/}") say "refusing --remote-dir $REMOTE_DIR"; exit 1 ;; esac
if [ -n "$REPO_URL" ]; then
  if [ ! -d "$REMOTE_DIR/.git" ]; then
    [ ! -e "$REMOTE_DIR" ] || { say "$REMOTE_DIR exists and is no git checkout"; exit 1; }
    git clone --quiet "$REPO_URL" "$REMOTE_DIR"
  fi
  git -C "$REMOTE_DIR" fetch --quiet origin "$REPO_REF"
  git -C "$REMOTE_DIR" checkout --quiet --force FETCH_HEAD
  say "code: $REPO_URL at $REPO_REF = $(git -C "$REMOTE_DIR" rev-parse --short HEAD)"
else
  if [ -e "$REMOTE_DIR" ] && [ ! -e "$REMOTE_DIR/$MARK" ]; then
    say "$REMOTE_DIR exists and was not unpacked by launch_tpu_pod.sh; pick --remote-dir"
    exit 1
  fi
  rm -rf "$REMOTE_DIR.new"
  mkdir -p "$REMOTE_DIR.new"
  tar -xf "$TARBALL" -C "$REMOTE_DIR.new"
  src=$REMOTE_DIR.new
  if [ ! -f "$src/pyproject.toml" ]; then  # A tarball with one top folder.
    set -- "$src"/*/pyproject.toml
    [ -f "$1" ] || { say "no pyproject.toml in the tarball"; exit 1; }
    src=$(dirname "$1")
  fi
  touch "$src/$MARK"
  rm -rf "$REMOTE_DIR"
  mv "$src" "$REMOTE_DIR"
  rm -rf "$REMOTE_DIR.new" "$TARBALL"
  say "code: unpacked into $REMOTE_DIR"
fi
if ! python3 -m uv --version >/dev/null 2>&1; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo apt-get install -y -qq python3-pip
  fi
  python3 -m pip install --user --quiet uv 2>/dev/null \
    || python3 -m pip install --user --quiet --break-system-packages uv
fi
[ -x "$VENV/bin/python" ] || python3 -m uv venv --quiet --python "$PYTHON_VERSION" "$VENV"
python3 -m uv pip install --quiet --python "$VENV/bin/python" -e "$REMOTE_DIR$PKG" "$JAX_SPEC"
say "ready: $("$VENV/bin/python" -c 'import jax; print("jax", jax.__version__)')"
EOF
}

run_script() {
  remote_head
  echo "export TFDS_DATA_DIR=$(q "$TFDS_DATA_DIR")"
  echo "export PYTHONUNBUFFERED=1"
  for e in ${env_exports[@]+"${env_exports[@]}"}; do
    echo "export ${e%%=*}=$(q "${e#*=}")"
  done
  echo "LOG=$(q "$LOG")"
  printf 'set --'
  for a in "${train_args[@]}"; do printf ' %s' "$(q "$a")"; done
  printf '\n'
  if ((DETACH)); then
    cat <<'EOF'
cd "$REMOTE_DIR"
nohup "$VENV/bin/python" -m big_distill.train "$@" >"$HOME/$LOG" 2>&1 </dev/null &
say "training in the background (pid $!), log: ~/$LOG"
EOF
  else
    cat <<'EOF'
cd "$REMOTE_DIR"
exec "$VENV/bin/python" -m big_distill.train "$@"
EOF
  fi
}

# ---- gcloud -------------------------------------------------------------------

common=(--zone="$TPU_ZONE")
[[ -z $TPU_PROJECT ]] || common+=(--project="$TPU_PROJECT")
common+=(${gcloud_flags[@]+"${gcloud_flags[@]}"} --worker=all)

run() {
  if ((DRY_RUN)); then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

ssh_all() {  # $1: what, $2: the script, run by bash on every worker.
  echo "==> $1 on all workers of $TPU_NAME"
  if ((DRY_RUN)); then
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${common[@]}" --command="bash -c SCRIPT"
    printf '%s\n' "--- SCRIPT ($1) ---" "$2" "---"
    return
  fi
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${common[@]}" --command="bash -c $(q "$2")"
}

if ((!SKIP_SETUP)); then
  if [[ -n $REPO_TARBALL ]]; then
    tarball=$REPO_TARBALL
    if [[ -d $REPO_TARBALL ]]; then
      tmp=$(mktemp -d)
      trap 'rm -rf "$tmp"' EXIT
      tarball=$tmp/src.tar.gz
      echo "==> packing $REPO_TARBALL (git tracked + untracked, not ignored)"
      if ((!DRY_RUN)); then
        git -C "$REPO_TARBALL" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
          || die "--tarball $REPO_TARBALL is a folder but no git checkout; give a .tar.gz."
        (cd "$REPO_TARBALL" && git ls-files -z --cached --others --exclude-standard \
          | while IFS= read -r -d '' f; do [[ ! -e $f ]] || printf '%s\0' "$f"; done \
          | COPYFILE_DISABLE=1 tar --null -T - -czf "$tarball")
      fi
    fi
    echo "==> copying $tarball to all workers of $TPU_NAME"
    run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:$REMOTE_TARBALL" "${common[@]}"
  fi
  ssh_all setup "$(setup_script)"
fi
ssh_all train "$(run_script)"
