#!/usr/bin/env bash
# `make deploy-check`: everything about deploying that this machine can check without a Pi, a camera or
# a Coral. Run by make with .venv-deploy/bin (ansible, ansible-lint, detect-secrets, bandit, shellcheck)
# first on PATH and .venv (the project) built. Each step prints one line; any failure fails the target.
set -euo pipefail
cd "$(dirname "$0")/../.."
PROJECT_PYTHON=${PROJECT_PYTHON:-.venv/bin/python}
step() { printf '\n== %s\n' "$*"; }

step "shellcheck"
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
shellcheck "${scripts[@]}"
echo "ok: ${#scripts[@]} scripts"

step "systemd units"
if command -v systemd-analyze >/dev/null 2>&1; then
  bash deploy/checks/systemd-check.sh
else
  echo "skipped: no systemd-analyze on this machine"
fi

step "installer plan (dry run) for Bookworm and Trixie"
bash deploy/checks/installer-check.sh

step "boot config fragments"
bad=$(grep -hvE '^(#.*|[a-z_0-9]+=[A-Za-z0-9_,.=-]+|)$' firmware_config/boot/*.txt || true)
[ -z "$bad" ] || { echo "not a config.txt line: $bad"; exit 1; }
echo "ok: $(find firmware_config/boot -name '*.txt' | wc -l) fragments"

step "hash-pinned requirements"
"$PROJECT_PYTHON" deploy/checks/check_locks.py

step "bandit on device/"
# Medium and high severity fail; low-severity patterns are ruff's S rules too (bandit-derived), where
# each reviewed exception carries its noqa reason on the line, so they are not judged twice.
bandit -q -c pyproject.toml -r device --severity-level medium
echo "ok: no medium or high findings"

step "secret scan over the whole git history"
python deploy/checks/scan_history.py --baseline .secrets.baseline
# The scanner must also fail: a key committed once and deleted later is still found.
planted=$(mktemp -d)
git -C "$planted" init -q && git -C "$planted" config user.email check@example.invalid && git -C "$planted" config user.name check
printf 'aws_secret_access_key = "%s"\n' "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEYx9" >"$planted/settings.ini"  # pragma: allowlist secret
git -C "$planted" add settings.ini && git -C "$planted" commit -qm planted
git -C "$planted" rm -q settings.ini && git -C "$planted" commit -qm removed
echo '{"results": {}}' >"$planted/baseline.json"
if python deploy/checks/scan_history.py --repo "$planted" --baseline "$planted/baseline.json" >/dev/null; then
  echo "the secret scan missed a key deleted from history"; exit 1
fi
rm -rf "$planted"
echo "ok: a key deleted from history is still found"

step "fleet playbook: syntax, ansible-lint, check mode against localhost"
bash deploy/checks/fleet-check.sh

step "broker kit"
if grep -q '^broker-check:' Makefile; then
  make --no-print-directory broker-check
else
  echo "skipped: no broker-check target yet (the broker kit lands separately)"
fi

printf '\ndeploy-check: all passed\n'
