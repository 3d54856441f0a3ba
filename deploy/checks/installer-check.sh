#!/usr/bin/env bash
# Runs deploy/unit/install-unit.sh --dry-run for each supported OS (a fake os-release) and checks that
# the plan installs that OS's lock and Coral pair and the hardened units, and refuses what it should.
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
expect() { grep -qF -- "$2" "$1" || { echo "plan lacks: $2"; cat "$1"; exit 1; }; }
mkdir -p "$tmp/coral"
for os in bookworm:3.11:cp311 trixie:3.13:cp313; do
  IFS=: read -r codename python tag <<<"$os"
  printf 'ID=debian\nVERSION_CODENAME=%s\n' "$codename" >"$tmp/os-$codename"
  touch "$tmp/coral/libedgetpu1-std_16.0tf2.17.1-1.${codename}_arm64.deb" \
    "$tmp/coral/tflite_runtime-2.17.1-$tag-$tag-linux_aarch64.whl"
  plan=$tmp/plan-$codename
  deploy/unit/install-unit.sh --dry-run --os-release "$tmp/os-$codename" --machine aarch64 \
    --coral usb --coral-pair "$tmp/coral" --trust-coral-files --boot-fragments camera,pi5-m2-coral \
    --unit-id lobby-1 >"$plan"
  expect "$plan" "python$python -m venv --system-site-packages /opt/entrance-camera/venv"
  expect "$plan" "--require-hashes -r $PWD/requirements/unit-$codename.lock"
  expect "$plan" "libedgetpu1-std_16.0tf2.17.1-1.${codename}_arm64.deb"
  expect "$plan" "tflite_runtime-2.17.1-$tag-$tag-linux_aarch64.whl"
  expect "$plan" "pip uninstall --quiet -y ai-edge-litert"
  expect "$plan" "install -d -m 0750 -o root -g entrance-camera /etc/entrance-camera"
  expect "$plan" "install -d -m 0700 -o entrance-camera -g entrance-camera /etc/entrance-camera/secrets"
  expect "$plan" "99-entrance-camera-coral.rules"
  expect "$plan" "entrance-camera-purge.timer"
  echo "ok: $codename plan ($(grep -c '^+ ' "$plan") steps)"
done
# Without recorded sha256s the Coral files are refused unless the operator says otherwise.
if deploy/unit/install-unit.sh --dry-run --os-release "$tmp/os-trixie" --machine aarch64 --coral usb \
  --coral-pair "$tmp/coral" >"$tmp/refused" 2>&1; then
  echo "installer accepted unpinned Coral files"; exit 1
fi
expect "$tmp/refused" "has no sha256"
for bad in "--coral maybe" "--unit-id Bad_Id"; do
  # shellcheck disable=SC2086  # the options are meant to split
  if deploy/unit/install-unit.sh --dry-run --os-release "$tmp/os-bookworm" --machine aarch64 $bad >/dev/null 2>&1; then
    echo "installer accepted $bad"; exit 1
  fi
done
echo "ok: refuses unpinned Coral files and bad options"
# A dry run works anywhere (an installer's x86 laptop): it shows the Pi's plan, saying so.
deploy/unit/install-unit.sh --dry-run --os-release /dev/null --machine x86_64 >"$tmp/laptop"
expect "$tmp/laptop" "showing the plan for an aarch64 Raspberry Pi"
expect "$tmp/laptop" "+ systemctl enable"
echo "ok: dry run on another OS and machine"
# Boot fragments: applied twice, each line is there exactly once, and an existing setting is kept.
printf 'dtparam=audio=on\ncamera_auto_detect=1\n' >"$tmp/config.txt"
for _ in 1 2; do
  deploy/unit/install-unit.sh --os-release "$tmp/os-bookworm" --machine aarch64 \
    --boot-fragments camera,pi5-m2-coral --only-boot-config "$tmp/config.txt" >/dev/null
done
for line in camera_auto_detect=1 dtparam=pciex1 dtoverlay=pciex1-compat-pi5,no-mip dtoverlay=pcie-32bit-dma-pi5; do
  [ "$(grep -cxF "$line" "$tmp/config.txt")" = 1 ] || { echo "boot config: $line not exactly once"; cat "$tmp/config.txt"; exit 1; }
done
grep -qxF dtparam=audio=on "$tmp/config.txt" || { echo "boot config lost an existing line"; exit 1; }
echo "ok: boot fragments applied idempotently"
