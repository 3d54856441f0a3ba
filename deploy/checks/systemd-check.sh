#!/usr/bin/env bash
# systemd-analyze verify and security on the shipped units, inside a scratch root that has the unit's
# executable path, so the units are checked exactly as installed (verify rejects a missing ExecStart).
# Fails when the exposure of the camera service or the door service rises above MAX_EXPOSURE
# (recorded in deploy/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
MAX_EXPOSURE=${MAX_EXPOSURE:-1.5}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/opt/entrance-camera/venv/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
printf '#!/bin/sh\n' >"$root/opt/entrance-camera/venv/bin/device"
chmod +x "$root/opt/entrance-camera/venv/bin/device"
cp -r /lib/systemd/system "$root/usr/lib/systemd/"
units=()
for file in deploy/systemd/*.service deploy/systemd/*.timer; do
  cp "$file" "$root/etc/systemd/system/"
  units+=("/etc/systemd/system/$(basename "$file")")
done
systemd-analyze verify --man=no --root="$root" "${units[@]}"
echo "verify ok: ${#units[@]} units"
for unit in deploy/systemd/*.service; do
  name=$(basename "$unit")
  score=$(systemd-analyze security --offline=true --root="$root" "/etc/systemd/system/$name" 2>/dev/null |
    sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
  [ -n "$score" ] || { echo "no security score for $name"; exit 1; }
  echo "systemd-analyze security $name: $score"
  if { [ "$name" = entrance-camera.service ] || [ "$name" = entrance-camera-door.service ]; } && awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN{exit !(s>m)}'; then
    echo "exposure $score is above $MAX_EXPOSURE"
    exit 1
  fi
done
