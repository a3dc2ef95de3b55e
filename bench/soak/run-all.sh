#!/usr/bin/env bash
# Every soak and fault script, one after another, each with its defaults (or, with --small,
# hundreds of connections instead of thousands: a few minutes in all), each in its own private
# network namespace. Prints each script's output and a summary; exit status 1 if any failed.
#   cargo build --release && sudo bench/soak/run-all.sh [--small] [NAME...]
# NAME picks scripts (idle-tunnels, bump-sessions, many-snis, slowloris, overload, sds-kill,
# upstream-kill, reload-storm, sigterm-download); default all.
set -uo pipefail
cd "$(dirname "$0")" || exit 1
small=
if [ "${1:-}" = "--small" ]; then small=1; shift; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "run-all: needs root: every script runs in a private network namespace; run it with sudo" >&2
  exit 1
fi
# name | full-size arguments (the defaults) | --small arguments
table="idle-tunnels||1000 2
bump-sessions||300 8 2
many-snis||500 16
slowloris||300 3
overload||200 200
sds-kill||3 4
upstream-kill||2 2
reload-storm||20 0.25 2
sigterm-download||4 16 20"
pick=" $* "
summary=()
failed=0
while IFS='|' read -r name full smallargs; do
  [ $# -eq 0 ] || [[ $pick == *" $name "* ]] || continue
  if [ -n "$small" ]; then args=$smallargs; else args=$full; fi
  echo "=== $name $args"
  t0=$(date +%s)
  # shellcheck disable=SC2086 # word splitting of the arguments is meant
  if timeout 900 "./$name.sh" $args; then res=ok; else res=FAILED; failed=1; fi
  summary+=("$(printf '%-18s %-7s %4ss' "$name" "$res" $(( $(date +%s) - t0 )))")
  echo
done <<< "$table"
echo "=== summary${small:+ (--small)}"
printf '%s\n' "${summary[@]}"
exit $failed
