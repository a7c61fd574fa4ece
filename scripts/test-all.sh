#!/usr/bin/env bash
# The whole test suite (unit, #[pg_test], integration with real logins) on every supported
# PostgreSQL: Debian's 15 and 14, 16, 17, 18 from scripts/pg-versions.sh. Prints one line
# per version and fails if any version fails. Versions can be chosen: test-all.sh 14 17
set -uo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh || exit 1
matrix=$(printf '15 /usr/lib/postgresql/15/bin\n%s\n' "$(./scripts/pg-versions.sh)") || exit 1
wanted=" ${*:-14 15 16 17 18} "

lines=()
failed=0
while read -r major bin; do
  [[ "$wanted" == *" $major "* ]] || continue
  echo "=== PostgreSQL $major ($bin)"
  started=$SECONDS
  log="/tmp/login_notification-test-pg$major.log"
  if make --no-print-directory unit-test integration-test PG_MAJOR="$major" PG_CONFIG="$bin/pg_config" \
       PG_BIN="$bin" 2>&1 | tee "$log"; then
    result="passed"
  else
    result="FAILED (log: $log)"
    failed=$((failed + 1))
  fi
  tests=$(grep -Eo '^=+ .*[0-9]+ passed.* in [0-9.]+s' "$log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
  lines+=("PostgreSQL $major: $result - ${tests:-no pytest summary}; $((SECONDS - started)) s")
done <<< "$matrix"

echo
echo "=== test-all: one line per version"
printf '%s\n' "${lines[@]}"
exit $((failed > 0))
