#!/usr/bin/env bash
# Installs the Debian packages a development or CI machine needs, only those that are missing.
# Idempotent; uses sudo when not root. (The unit itself is installed by deploy/unit/install-unit.sh.)
set -euo pipefail

# strace: the "unknown faces leave no trace" test records the unit's file writes with it.
# postgresql: the archive's PostgreSQL tests start their own server (initdb, pg_ctl) in a temp folder;
# the Debian package's own cluster is not used.
wanted=(mosquitto npm strace postgresql)
# A fresh Debian has python3 without venv/ensurepip; a pyenv or other Python that has them needs nothing.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  wanted+=(python3-venv)
fi

missing=()
for package in "${wanted[@]}"; do
  case "$package" in
    mosquitto) command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=("$package") ;;
    npm) command -v npm >/dev/null 2>&1 || missing+=("$package") ;;
    strace) command -v strace >/dev/null 2>&1 || missing+=("$package") ;;
    postgresql) compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=("$package") ;;
    *) dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package") ;;
  esac
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "error: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
echo "installing system packages: ${missing[*]}"
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
