#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine, run as root (also what CI runs first):
#   1. the locked dependency set (requirements/dev.lock), then the gridwatch package (editable)
#   2. Java 17 and Maven, which the local Kafka broker needs, and PostgreSQL for the results
#      store (apt, only if missing)
#   3. the Kafka broker jars, fetched once from Maven Central into ~/.cache/gridwatch
# Safe to re-run: each step checks before it acts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '[setup] %s\n' "$*"; }

PYTHON=${PYTHON:-$(command -v python || command -v python3 || true)}
if [[ -z "$PYTHON" ]]; then
  say "no python found: installing python3 (Debian)"
  NEED_PY=1
else
  NEED_PY=0
fi

# --- system packages: only what is missing, one apt-get update first -------------------------
java_major() { # 17 for "17.0.15", 1 for "1.8.0"; 0 when java is missing or unparsable
  local v
  v=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -n1 || true)
  echo "${v:-0}"
}
apt_pkgs=()
if ((NEED_PY)); then apt_pkgs+=(python3 python3-pip python3-venv); fi
if (($(java_major) < 17)); then
  apt_pkgs+=(openjdk-17-jre-headless)
else
  say "java $(java_major) present"
fi
if ! command -v mvn >/dev/null 2>&1; then apt_pkgs+=(maven); else say "maven present"; fi
if ! command -v make >/dev/null 2>&1; then apt_pkgs+=(make); fi
# promtool and amtool check prometheus/ and alertmanager/ in tests/ops
if ! command -v promtool >/dev/null 2>&1; then apt_pkgs+=(prometheus); else say "promtool present"; fi
if ! command -v amtool >/dev/null 2>&1; then apt_pkgs+=(prometheus-alertmanager); else say "amtool present"; fi
# headless Chromium renders gridwatch evaluate's HTML report in tests/evaluation/test_evaluate.py
if ! command -v chromium >/dev/null 2>&1; then apt_pkgs+=(chromium); else say "chromium present"; fi
# PostgreSQL server binaries (/usr/lib/postgresql/<ver>/bin) for the results store, `make run` and
# tests; local/postgres.py starts its own server, so the package's own cluster is never used.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then apt_pkgs+=(postgresql); else say "postgresql present"; fi
if ((${#apt_pkgs[@]})); then
  say "apt-get install ${apt_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p /usr/share/man/man1 # openjdk's postinst fails without it on slim images
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}"
fi
if ((NEED_PY)); then PYTHON=$(command -v python3); fi
if (($(java_major) < 17)); then # an older default java: make 17 the default
  java17=$(ls /usr/lib/jvm/java-17-openjdk-*/bin/java | head -n1)
  say "update-alternatives --set java $java17"
  update-alternatives --set java "$java17"
fi

# --- the Python package -------------------------------------------------------------------------
pip_flags=(-q)
stdlib=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
if [[ -f "$stdlib/EXTERNALLY-MANAGED" ]]; then pip_flags+=(--break-system-packages); fi
# Exactly the locked versions (hashes checked), then gridwatch itself with no dependency resolution,
# so nothing floats with what the registry serves that day. `make lock` refreshes the lock.
say "$PYTHON -m pip install -r requirements/dev.lock (locked, hashes checked)"
"$PYTHON" -m pip install "${pip_flags[@]}" --require-hashes -r requirements/dev.lock
say "$PYTHON -m pip install --no-deps -e ."
"$PYTHON" -m pip install "${pip_flags[@]}" --no-deps --no-build-isolation -e .

# --- Kafka broker jars (cached; a no-op when already there) ------------------------------------
for v in 3.9.2 ${GRIDWATCH_KAFKA_VERSION:-}; do
  say "Kafka $v jars: $("$PYTHON" -c "from local.kafka import fetch_jars; print(fetch_jars('$v'))")"
done
say "done"
