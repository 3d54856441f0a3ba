#!/usr/bin/env bash
# Installs the Debian packages a development or CI machine needs, only those that are missing.
# Idempotent; uses sudo when not root. (The unit itself is installed by deploy/unit/install-unit.sh.)
set -euo pipefail

# strace: the "unknown faces leave no trace" test records the unit's file writes with it.
# postgresql: the archive's PostgreSQL tests start their own server (initdb, pg_ctl) in a temp folder;
# the Debian package's own cluster is not used.
# g++: `make ha-check` builds the few pins of Home Assistant's lock that have no Python 3.13 wheel
# (ciso8601, lru-dict, pymicro-vad, pyspeex-noise).
wanted=(mosquitto npm strace postgresql g++)
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
    g++) command -v g++ >/dev/null 2>&1 || missing+=("$package") ;;
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

# Another apt or dpkg (unattended-upgrades on a fresh machine, a second terminal) holds the package
# manager's locks: wait for it rather than fail at once. dpkg and apt take POSIX (fcntl) locks, which
# flock(1) does not see, so the holder is asked for with F_GETLK. The lock files and the time to wait
# can be changed (tests point them at a lock of their own).
read -r -a lock_files <<<"${DPKG_LOCK_FILES:-/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock}"
lock_timeout_s=${DPKG_LOCK_TIMEOUT_S:-600}

lock_holder() {  # prints the pid holding a POSIX lock on $1, nothing when it is free or unreadable
  python3 - "$1" <<'PY'
import fcntl, os, struct, sys
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
except OSError:
    sys.exit(0)
layout = "hhqqi4x"  # struct flock: type, whence, start, len, pid (Linux, 64-bit off_t)
query = struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
kind, _, _, _, pid = struct.unpack(layout, fcntl.fcntl(fd, fcntl.F_GETLK, query))
if kind != fcntl.F_UNLCK:
    print(pid)
PY
}

busy_lock() {  # prints "<pid> <file>" for the first held lock
  local file holder
  for file in "${lock_files[@]}"; do
    holder=$(lock_holder "$file")
    if [ -n "$holder" ]; then
      echo "$holder $file"
      return
    fi
  done
}

started=$SECONDS
announced=
while busy=$(busy_lock) && [ -n "$busy" ]; do
  if [ $((SECONDS - started)) -ge "$lock_timeout_s" ]; then
    echo "error: the package manager is still busy after ${lock_timeout_s} s (process ${busy% *} holds ${busy#* });" \
      "let it finish (unattended-upgrades on a new machine can take a while) and run make setup again" >&2
    exit 1
  fi
  if [ -z "$announced" ]; then
    echo "waiting for the package manager: process ${busy% *} holds ${busy#* } (up to ${lock_timeout_s} s)"
    announced=yes
  fi
  sleep 1
done

echo "installing system packages: ${missing[*]}"
# apt waits for its locks too, should another apt start between the check above and here.
apt_wait=(-o "DPkg::Lock::Timeout=${lock_timeout_s}")
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_wait[@]}" update -q
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_wait[@]}" install -y -q \
  --no-install-recommends "${missing[@]}"
