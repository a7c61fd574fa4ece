#!/usr/bin/env bash
# Installs what `make test`, `make demo` and `make install` need on a fresh Debian bookworm
# machine (as root), skipping whatever is already there:
#   - Debian packages: PostgreSQL 15 server headers, clang/libclang (bindgen), build tools,
#     sudo (cargo pgrx test --runas), libkrb5-dev (server headers include gssapi.h)
#   - cargo-pgrx 0.18.1 (~16 min cold), registered with Debian's pg_config
#   - a Python venv in .venv with the pinned test packages
set -euo pipefail
cd "$(dirname "$0")/.."

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION=0.18.1
APT_PACKAGES=(postgresql-15 postgresql-contrib postgresql-server-dev-15 libclang-dev clang pkg-config
  libssl-dev libkrb5-dev build-essential sudo python3-venv unzip)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Debian starts a default cluster on 5432 when the server package is installed; the tests
# start their own clusters on free ports and do not need it.

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  echo "setup: installing cargo-pgrx $PGRX_VERSION (takes a while the first time)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi
if ! grep -qs "pg15 = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  cargo pgrx init --pg15 "$PG_CONFIG"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt
  echo "$want" > .venv/.requirements.sha256
fi
echo "setup: ready"
