#!/usr/bin/env bash
# Nix stage of .ci/run: what can be checked without a Nix binary cache (docs/nix.md, "What needs a Nix machine"
# lists the rest, which .github/workflows/ci.yml runs: nix flake check, image builds, VM tests).
#   parse       every .nix file git would commit parses (nix-instantiate --parse), not only the known dirs;
#   lock        flake.lock is version 7 and every input is locked to a rev with a narHash (a pinned flake);
#   eval        tests/test_nix.py: lock contents, flake outputs against a stub nixpkgs, and with
#               APPLIANCE_NIXPKGS_LIB the NixOS module through lib.evalModules (skipped, with the reason, without);
#   scripts     bash -n of the deployment scripts (scripts/*, .ci/*.sh), shellcheck when installed.
# Exit status: 0 when every check passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
failed=0
declare -a RESULTS=()
check() {
  local name=$1; shift
  local start=$SECONDS rc=0
  echo "--- nix: $name"
  "$@" || rc=$?
  if ((rc == 0)); then RESULTS+=("$(printf '  %-8s ok      %3ds' "$name" $((SECONDS - start)))")
  else RESULTS+=("$(printf '  %-8s FAILED  %3ds' "$name" $((SECONDS - start)))"); failed=1; fi
}

nix_files() { git ls-files --cached --others --exclude-standard -- '*.nix'; }

parse_all() {
  command -v nix-instantiate >/dev/null || { echo "nix-instantiate not found (apt-get install nix-bin)"; return 1; }
  local n=0 bad=0 f
  while IFS= read -r f; do
    [[ -f $f ]] || continue
    n=$((n + 1))
    if ! out=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
      echo "$f: $out"; bad=$((bad + 1))
    fi
  done < <(nix_files)
  echo "$n .nix files, $bad with parse errors"
  ((n > 0 && bad == 0))
}

check_lock() {
  "$PY" - <<'PY'
import json, sys
lock = json.load(open("flake.lock"))
problems = []
if lock.get("version") != 7:
    problems.append(f"lock version {lock.get('version')}, expected 7")
nodes = lock.get("nodes", {})
for name, node in nodes.items():
    if name == lock.get("root"):
        continue
    locked = node.get("locked", {})
    if not locked.get("narHash") or not (locked.get("rev") or locked.get("type") == "path"):
        problems.append(f"input {name} is not pinned (locked: {locked})")
for p in problems:
    print("flake.lock:", p)
print(f"flake.lock: {len(nodes) - 1} input(s), " + ("all pinned" if not problems else "NOT pinned"))
sys.exit(1 if problems else 0)
PY
}

check_scripts() {
  local bad=0 f
  for f in .ci/*.sh .ci/run scripts/*; do
    [[ -f $f ]] || continue
    if head -1 "$f" | grep -q 'bash'; then
      bash -n "$f" || bad=1
      if command -v shellcheck >/dev/null; then shellcheck -S warning "$f" || bad=1; fi
    fi
  done
  command -v shellcheck >/dev/null || echo "(shellcheck not installed: syntax checked with bash -n only)"
  return "$bad"
}

check parse parse_all
check lock check_lock
check eval "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_nix.py
check scripts check_scripts

echo "--- nix summary"
printf '%s\n' "${RESULTS[@]}"
exit "$failed"
