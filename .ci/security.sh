#!/usr/bin/env bash
# Security stage of .ci/run (docs/security.md, "Supply chain"): every check runs, then one verdict.
#   bandit           static analysis of appliance/; fails on medium or high severity findings that are not
#                    suppressed in place with a justified `# nosec BXXX: reason` (scripts/check-nosec).
#   secrets          no secret-looking string in what git would commit (scripts/check-secrets + allowlist).
#   unit exposure    `systemd-analyze security --offline=yes` scores against docs/systemd.md's limits.
#   pip-audit        known vulnerabilities of the installed dependencies; needs the advisory databases on the
#                    network, so it runs only with APPLIANCE_PIP_AUDIT=1 (the GitHub workflow sets it) and is
#                    reported as SKIPPED otherwise, never as passed.
# Exit status: 0 when every check that ran passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}

declare -a RESULTS=()
failed=0
check() {  # check NAME COMMAND... ; exit 3 from COMMAND means "could not run here" (reported, not failed)
  local name=$1; shift
  local start=$SECONDS rc=0
  echo "--- security: $name"
  "$@" || rc=$?
  local took=$((SECONDS - start))
  case $rc in
    0) RESULTS+=("$(printf '  %-14s ok       %3ds' "$name" "$took")") ;;
    3) RESULTS+=("$(printf '  %-14s SKIPPED  %3ds (see above)' "$name" "$took")") ;;
    *) RESULTS+=("$(printf '  %-14s FAILED   %3ds (exit %d)' "$name" "$took" "$rc")"); failed=1 ;;
  esac
}

run_bandit() {
  if ! "$PY" -m bandit --version >/dev/null 2>&1; then
    echo "bandit is not installed (pip install bandit)"; return 1
  fi
  # -ll: report medium and high severity only (low: asserts for type narrowing, random for jitter, subprocess
  # with argument lists: reviewed, see docs/security.md). Bandit honours `# nosec BXXX`.
  "$PY" -m bandit --recursive appliance --severity-level medium --confidence-level low --quiet --format txt
}

run_pip_audit() {
  if [[ ${APPLIANCE_PIP_AUDIT:-0} != 1 ]]; then
    echo "SKIPPED: pip-audit needs the vulnerability advisory services (PyPI JSON API, OSV), which this"
    echo "machine cannot reach; it runs in the GitHub workflow (.github/workflows/ci.yml, job 'python')."
    echo "Set APPLIANCE_PIP_AUDIT=1 where they are reachable to run it here."
    return 3
  fi
  if ! "$PY" -m pip_audit --version >/dev/null 2>&1; then
    echo "pip-audit is not installed (pip install pip-audit)"; return 1
  fi
  # The installed environment is what the tests ran against; our own editable package is not on PyPI.
  "$PY" -m pip_audit --skip-editable --progress-spinner off --desc on
}

check bandit run_bandit
check nosec "$PY" scripts/check-nosec appliance
check secrets "$PY" scripts/check-secrets
check unit-exposure "$PY" scripts/unit-exposure
check pip-audit run_pip_audit

echo "--- security summary"
printf '%s\n' "${RESULTS[@]}"
exit "$failed"
