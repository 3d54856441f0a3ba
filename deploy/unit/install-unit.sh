#!/usr/bin/env bash
# Installs (or updates) the entrance camera on a Raspberry Pi running Raspberry Pi OS Bookworm
# (Python 3.11) or Trixie (Python 3.13). Idempotent: every step checks what is there first, so running
# it again after an update of the source tree only changes what changed. Run as root from a checkout:
#
#   sudo deploy/unit/install-unit.sh [--unit-id ID] [--coral usb|pci|none] [--coral-pair DIR]
#                                    [--key-source file|host-credential|tpm2]
#                                    [--boot-fragments camera,pi5-m2-coral] [--no-start] [--dry-run]
#
# What it sets up (see deploy/README.md for the reasons):
#   apt            python3-venv python3-picamera2 python3-libcamera
#   user           entrance-camera (system user, no login, groups video + its own)
#   /opt/entrance-camera/app    a copy of the project (device/, models/, requirements/, ...)
#   /opt/entrance-camera/venv   venv --system-site-packages (picamera2/libcamera come from apt),
#                               dependencies from requirements/unit-<codename>.lock, hash-checked
#   /etc/entrance-camera        0750 root:entrance-camera, unit.toml 0640
#   /etc/entrance-camera/secrets 0700 entrance-camera, master.key 0600 (generated once, never replaced);
#                  sealed by systemd-creds with --key-source host-credential|tpm2, and then handed to the
#                  services decrypted by systemd itself (LoadCredentialEncrypted= drop-ins), since the
#                  service user may not unseal it
#   /var/lib/entrance-camera    0700 entrance-camera (gallery, audit log, outbox)
#   systemd        entrance-camera.service, -selftest.service, -purge.service/.timer
#   udev           Coral rule (USB ids 1a6e:089a and 18d1:9302, /dev/apex_*) for the service group
#   Coral          --coral-pair DIR: feranick's libedgetpu .deb + matching tflite_runtime wheel
#                  (deploy/unit/coral-pairs.txt); ai-edge-litert is then removed from the venv so the
#                  interpreter in use is the one libedgetpu was built against.
set -euo pipefail

APP=entrance-camera
SERVICE_USER=entrance-camera
PREFIX=/opt/$APP
CONFIG_DIR=/etc/$APP
STATE_DIR=/var/lib/$APP
SYSTEMD_DIR=/etc/systemd/system
UDEV_RULE=/etc/udev/rules.d/99-entrance-camera-coral.rules
BOOT_CONFIG=/boot/firmware/config.txt

SOURCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
UNIT_ID=""
CORAL=none
CORAL_PAIR_DIR=""
KEY_SOURCE="file"
TRUST_CORAL_FILES=no
BOOT_FRAGMENTS=""
START=yes
DRY_RUN=no
ONLY_BOOT_CONFIG=""
OS_RELEASE=/etc/os-release
MACHINE=$(uname -m)

usage() {
  cat <<'HELP'
Installs (or updates) the entrance camera on a Raspberry Pi (Raspberry Pi OS Bookworm or Trixie, 64-bit).
Idempotent: run it again after updating the source tree. Run as root from a checkout:

  sudo deploy/unit/install-unit.sh [OPTIONS]

Options:
  --unit-id ID            the unit's name and MQTT identity (default: the host name); 1 to 63
                          lowercase letters, digits and '-'; written to /etc/entrance-camera/unit.toml
                          only when that file does not exist yet
  --coral usb|pci|none    which Coral the unit has (default: none); usb/pci need --coral-pair
  --coral-pair DIR        folder with the libedgetpu .deb and tflite_runtime wheel named for this OS in
                          deploy/unit/coral-pairs.txt (checked against the sha256 pinned there)
  --key-source SOURCE     file (default), host-credential or tpm2: how the gallery's master key is kept.
                          host-credential and tpm2 seal it with systemd-creds (systemd 250+; tpm2 needs
                          a TPM) and have systemd unseal it for the services (LoadCredentialEncrypted=);
                          chosen once, with the key (an existing key is never replaced)
  --trust-coral-files     accept Coral pair files whose sha256 is not pinned yet (prints it; record it
                          in deploy/unit/coral-pairs.txt afterwards)
  --boot-fragments LIST   comma-separated firmware_config/boot/*.txt fragments to add to
                          /boot/firmware/config.txt (e.g. camera,pi5-m2-coral); reboot afterwards
  --no-start              install and enable the services but do not (re)start them
  --dry-run               print every change instead of making it; needs no root and works on any
                          machine (an x86 laptop too: it shows the plan a Pi would run)
  --os-release FILE       plan for another OS (read VERSION_CODENAME from FILE); checks only
  --machine ARCH          plan for another machine (default: uname -m); checks only
  --only-boot-config FILE only the boot config step, on FILE
  -h, --help              this help

Without compiled Edge TPU model files (models/manifest.json lists none until `make edgetpu-models` has
run on a build host) the unit runs on the CPU, Coral or not: `device doctor` says which and why.
After installing: edit /etc/entrance-camera/unit.toml, then `device doctor` (deploy/README.md).
HELP
  exit "${1:-0}"
}

log() { printf '[install-unit] %s\n' "$*"; }
die() { printf '[install-unit] error: %s\n' "$*" >&2; exit 1; }

# Every change to the system goes through run, so --dry-run shows the complete plan without root.
run() {
  if [ "$DRY_RUN" = yes ]; then
    printf '+ %s\n' "$*"
  else
    "$@"
  fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --unit-id) UNIT_ID=$2; shift 2 ;;
    --coral) CORAL=$2; shift 2 ;;
    --coral-pair) CORAL_PAIR_DIR=$2; shift 2 ;;
    --key-source) KEY_SOURCE=$2; shift 2 ;;
    --trust-coral-files) TRUST_CORAL_FILES=yes; shift ;;
    --boot-fragments) BOOT_FRAGMENTS=$2; shift 2 ;;
    --no-start) START=no; shift ;;
    --dry-run) DRY_RUN=yes; shift ;;
    # For checking the plan for another OS on a build machine (make deploy-check); not for installs.
    --os-release) OS_RELEASE=$2; shift 2 ;;
    --machine) MACHINE=$2; shift 2 ;;
    # Only the boot config step, on the given file (also what the check uses to prove idempotence).
    --only-boot-config) ONLY_BOOT_CONFIG=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) printf 'unknown option: %s\n' "$1" >&2; usage 2 ;;
  esac
done

case "$CORAL" in usb|pci|none) ;; *) die "--coral must be usb, pci or none" ;; esac
case "$KEY_SOURCE" in file|host-credential|tpm2) ;; *) die "--key-source must be file, host-credential or tpm2" ;; esac
if [ -n "$UNIT_ID" ] && ! [[ "$UNIT_ID" =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]]; then
  die "unit id '$UNIT_ID': use 1 to 63 lowercase letters, digits and '-', starting with a letter or digit"
fi
if [ -n "$ONLY_BOOT_CONFIG" ]; then
  BOOT_CONFIG=$ONLY_BOOT_CONFIG
elif [ "$DRY_RUN" = no ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo), or with --dry-run to see the plan"
fi

# --- which OS: the lock and the Coral pair depend on it ------------------------------------------
[ -r "$OS_RELEASE" ] || die "cannot read $OS_RELEASE"
# shellcheck disable=SC1090  # os-release is a fixed-format file named on purpose
CODENAME=$(. "$OS_RELEASE" && printf '%s' "${VERSION_CODENAME:-}")
case "$CODENAME" in
  bookworm) PYTHON_VERSION=3.11 ;;
  trixie) PYTHON_VERSION=3.13 ;;
  *)
    [ "$DRY_RUN" = yes ] || die "unsupported OS '$CODENAME': Raspberry Pi OS Bookworm or Trixie expected"
    # A plan on another machine: show what Bookworm would get.
    log "note: this is '${CODENAME:-unknown}', not Raspberry Pi OS; showing the plan for bookworm"
    CODENAME=bookworm PYTHON_VERSION=3.11 ;;
esac
case "$MACHINE" in
  aarch64) ;;
  *)
    [ "$DRY_RUN" = yes ] || die "unsupported machine '$MACHINE': the unit locks are for aarch64 (64-bit Raspberry Pi OS)"
    log "note: this machine is $MACHINE; showing the plan for an aarch64 Raspberry Pi" ;;
esac
LOCK=$SOURCE_DIR/requirements/unit-$CODENAME.lock
[ -r "$LOCK" ] || die "missing $LOCK (make lock)"
log "OS $CODENAME, Python $PYTHON_VERSION, $MACHINE; lock $(basename "$LOCK")"

if [ -z "$ONLY_BOOT_CONFIG" ]; then
# --- apt --------------------------------------------------------------------------------------------
APT_PACKAGES=(python3-venv python3-picamera2 python3-libcamera rsync)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt packages: ${missing[*]}"
  run env DEBIAN_FRONTEND=noninteractive apt-get update -q
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- service user and directories ---------------------------------------------------------------
if ! getent passwd "$SERVICE_USER" >/dev/null; then
  run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
    --shell /usr/sbin/nologin --comment "entrance camera service" "$SERVICE_USER"
fi
# The camera nodes (/dev/video*, /dev/media*, /dev/dma_heap/*) belong to group video on Pi OS.
if ! id -nG "$SERVICE_USER" 2>/dev/null | tr ' ' '\n' | grep -qx video; then
  run usermod -a -G video "$SERVICE_USER"
fi
run install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
run install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_USER" "$CONFIG_DIR/secrets"
run install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
run install -d -m 0755 -o root -g root "$PREFIX"

# --- the application and its venv ---------------------------------------------------------------
# A copy, not the checkout: the service runs from a root-owned tree it cannot modify.
run rsync -a --delete --chown=root:root --chmod=D0755,F0644 \
  --exclude .git --exclude '.venv*' --exclude __pycache__ --exclude '*.egg-info' --exclude state \
  --exclude secrets --exclude '*.key' --exclude '*.pem' \
  "$SOURCE_DIR/device" "$SOURCE_DIR/models" "$SOURCE_DIR/requirements" "$SOURCE_DIR/firmware_config" \
  "$SOURCE_DIR/deploy" "$SOURCE_DIR/pyproject.toml" "$SOURCE_DIR/README.md" "$PREFIX/app/"
VENV=$PREFIX/venv
if [ ! -x "$VENV/bin/python" ]; then
  # --system-site-packages: picamera2 and libcamera exist only as apt packages (python3-picamera2).
  run "python$PYTHON_VERSION" -m venv --system-site-packages "$VENV"
fi
# --require-hashes: every file pip installs is checked against the lock; --no-deps: the lock is complete.
run "$VENV/bin/python" -m pip install --quiet --no-deps --require-hashes -r "$LOCK"
run "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation --no-index "$PREFIX/app"

# --- Coral: a matched libedgetpu + interpreter pair --------------------------------------------
PAIRS=$SOURCE_DIR/deploy/unit/coral-pairs.txt
if [ -n "$CORAL_PAIR_DIR" ]; then
  line=$(grep -E "^${CODENAME}[[:space:]]" "$PAIRS") || die "no Coral pair for $CODENAME in $PAIRS"
  read -r _ deb_name deb_sha wheel_name wheel_sha <<<"$line"
  deb=$CORAL_PAIR_DIR/$deb_name
  wheel=$CORAL_PAIR_DIR/$wheel_name
  [ -r "$deb" ] || die "missing $deb (see deploy/README.md, 'Coral pairing')"
  [ -r "$wheel" ] || die "missing $wheel (see deploy/README.md, 'Coral pairing')"
  check_sha() { # file, pinned sha256 ('-' = not recorded yet)
    local actual
    actual=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "$2" = "-" ]; then
      [ "$TRUST_CORAL_FILES" = yes ] || die "$(basename "$1") has no sha256 in $PAIRS yet (it is $actual); \
check where it came from, then record it there or pass --trust-coral-files"
      log "trusting $(basename "$1") sha256 $actual (not pinned yet: record it in $PAIRS)"
    elif [ "$actual" != "$2" ]; then
      die "$(basename "$1"): sha256 $actual, pinned $2"
    fi
  }
  check_sha "$deb" "$deb_sha"
  check_sha "$wheel" "$wheel_sha"
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$deb"
  run "$VENV/bin/python" -m pip install --quiet --no-deps "$wheel"
  # device/models/interpreter.py prefers ai_edge_litert; libedgetpu was built against the tflite_runtime above,
  # so the other interpreter must not be importable.
  run "$VENV/bin/python" -m pip uninstall --quiet -y ai-edge-litert
elif [ "$CORAL" != none ]; then
  die "--coral $CORAL needs --coral-pair DIR with the files named in $PAIRS"
fi

if [ "$CORAL" != none ] || [ -n "$CORAL_PAIR_DIR" ]; then
  run install -m 0644 "$SOURCE_DIR/deploy/udev/99-entrance-camera-coral.rules" "$UDEV_RULE"
  run udevadm control --reload-rules
  run udevadm trigger --subsystem-match=usb --subsystem-match=apex
fi
if ! grep -q '"edgetpu"' "$SOURCE_DIR/models/manifest.json" 2>/dev/null \
  || grep -A3 '"edgetpu"' "$SOURCE_DIR/models/manifest.json" | grep -q '"sha256": null'; then
  log "note: models/manifest.json has no compiled Edge TPU files: the unit runs on the CPU (Coral unused)" \
    "until they are built (make edgetpu-models on a build host; models/README.md)"
fi
if [ "$CORAL" = pci ] && [ ! -e /dev/apex_0 ]; then
  log "note: no /dev/apex_0 yet: the gasket/apex driver must be built for this kernel (deploy/README.md)"
fi

fi  # not --only-boot-config

# --- boot config fragments (only lines not already there) --------------------------------------
boot_changed=no
if [ -n "$BOOT_FRAGMENTS" ]; then
  IFS=',' read -r -a fragments <<<"$BOOT_FRAGMENTS"
  for fragment in "${fragments[@]}"; do
    file=$SOURCE_DIR/firmware_config/boot/$fragment.txt
    [ -r "$file" ] || die "unknown boot fragment '$fragment' (firmware_config/boot/*.txt)"
    while IFS= read -r line; do
      case "$line" in ''|'#'*) continue ;; esac
      if ! grep -qxF "$line" "$BOOT_CONFIG" 2>/dev/null; then
        log "boot config: $line"
        boot_changed=yes
        if [ "$DRY_RUN" = yes ]; then
          printf '+ append %s to %s\n' "$line" "$BOOT_CONFIG"
        else
          # config.txt has no trailing comments: the marker gets its own line, the setting stays exact
          # so the grep above finds it on the next run.
          printf '# entrance-camera: %s\n%s\n' "$fragment" "$line" >>"$BOOT_CONFIG"
        fi
      fi
    done <"$file"
  done
fi
if [ "$boot_changed" = yes ]; then
  log "boot config changed: reboot for it to take effect"
fi

[ -z "$ONLY_BOOT_CONFIG" ] || exit 0

# --- config and master key (created once, never overwritten) ----------------------------------
CONFIG=$CONFIG_DIR/unit.toml
if [ ! -e "$CONFIG" ]; then
  unit_id=${UNIT_ID:-$(hostname -s | tr 'A-Z_' 'a-z-')}
  tmp=$(mktemp)
  sed -e "s/@UNIT_ID@/$unit_id/" -e "s/@KEY_SOURCE@/$KEY_SOURCE/" "$SOURCE_DIR/deploy/unit/unit.toml.in" >"$tmp"
  run install -m 0640 -o root -g "$SERVICE_USER" "$tmp" "$CONFIG"
  rm -f "$tmp"
fi
MASTER_KEY=$CONFIG_DIR/secrets/master.key
if [ ! -e "$MASTER_KEY" ] && [ "$KEY_SOURCE" = file ]; then
  # Generated as the service user so the 0600 file is its own from the first byte.
  run runuser -u "$SERVICE_USER" -- "$VENV/bin/python" -c \
    'import sys, pathlib; from device.identity.masterkey import generate_master_key; generate_master_key(pathlib.Path(sys.argv[1]))' \
    "$MASTER_KEY"
elif [ ! -e "$MASTER_KEY" ]; then
  # Sealed by root (systemd-creds needs the host key or the TPM), then given to the service user: it
  # keeps the file, systemd unseals it into the services' credentials folder.
  run "$VENV/bin/python" -c \
    'import sys, pathlib; from device.identity.masterkey import generate_master_key; generate_master_key(pathlib.Path(sys.argv[1]), sys.argv[2])' \
    "$MASTER_KEY" "$KEY_SOURCE"
  run chown "$SERVICE_USER:$SERVICE_USER" "$MASTER_KEY"
fi
run runuser -u "$SERVICE_USER" -- "$VENV/bin/device" --config "$CONFIG" config check

# --- systemd --------------------------------------------------------------------------------------
for unit in entrance-camera.service entrance-camera-selftest.service entrance-camera-purge.service \
  entrance-camera-purge.timer; do
  run install -m 0644 "$SOURCE_DIR/deploy/systemd/$unit" "$SYSTEMD_DIR/$unit"
done
# The key's credential for every service that opens the gallery: systemd (root) unseals it into the
# service's own credentials folder ($CREDENTIALS_DIRECTORY), which `device` reads; without the drop-in a
# sealed key cannot be opened by the service user at all. A plain key file needs none (removed if there).
for unit in entrance-camera.service entrance-camera-selftest.service entrance-camera-purge.service; do
  dropin=$SYSTEMD_DIR/$unit.d/master-key.conf
  if [ "$KEY_SOURCE" = file ]; then
    [ ! -e "$dropin" ] || run rm -f "$dropin"
  else
    run install -d -m 0755 "$SYSTEMD_DIR/$unit.d"
    tmp=$(mktemp)
    printf '[Service]\nLoadCredentialEncrypted=entrance-camera-master-key:%s\n' "$MASTER_KEY" >"$tmp"
    log "$dropin: LoadCredentialEncrypted=entrance-camera-master-key:$MASTER_KEY"
    run install -m 0644 "$tmp" "$dropin"
    rm -f "$tmp"
  fi
done
run systemctl daemon-reload
run systemctl enable entrance-camera-selftest.service entrance-camera.service entrance-camera-purge.timer
if [ "$START" = yes ]; then
  run systemctl restart entrance-camera-purge.timer
  run systemctl restart entrance-camera-selftest.service entrance-camera.service
fi
log "done: systemctl status entrance-camera; journalctl -u entrance-camera-selftest"
log "check the unit before relying on it: sudo -u $SERVICE_USER $VENV/bin/device --config $CONFIG doctor"
