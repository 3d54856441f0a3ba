#!/usr/bin/env bash
# The fleet playbook: syntax check, ansible-lint (production profile) and a check-mode run against
# localhost standing in for the broker and two units. The controller steps (PKI, broker config,
# project archive) really run, into a scratch folder; everything on the hosts is only predicted.
# Skipped in check mode, and said so: apt (its check mode needs python3-apt), the installer and source
# unpacking (tag install), and the sealed-set round trip (it needs the key the unit makes on its first
# real run; tests/test_provision.py covers seal/check/import with real keys).
set -euo pipefail
cd "$(dirname "$0")/../.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export ANSIBLE_LOCAL_TEMP=$scratch/ansible-tmp ANSIBLE_REMOTE_TEMP=$scratch/ansible-tmp
export ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0

ansible-playbook --syntax-check -i deploy/fleet/inventory.example.yml deploy/fleet/site.yml >/dev/null
echo "ok: syntax"
(cd deploy/fleet && ansible-lint --profile production --nocolor -q site.yml)
echo "ok: ansible-lint (production profile)"

cat >"$scratch/inventory.yml" <<INVENTORY
all:
  vars:
    ansible_connection: local
    ansible_become: false
    ansible_python_interpreter: $(command -v python)
  children:
    broker:
      hosts:
        broker-1:
          broker_ip: 127.0.0.1
    units:
      hosts:
        unit-a: {unit_id: unit-a, coral: usb}
        unit-b: {unit_id: unit-b, coral: pci, boot_fragments: "camera,pi5-m2-coral"}
INVENTORY
skip=packages,install
if [ ! -d /run/systemd/system ]; then
  skip=$skip,services  # no running systemd here (a container): service state cannot be predicted
  echo "note: systemd is not running here; service tasks skipped"
fi
ansible-playbook -i "$scratch/inventory.yml" deploy/fleet/site.yml --check --diff --skip-tags "$skip" \
  -e "fleet_pki_dir=$scratch/pki fleet_build_dir=$scratch/build broker_host=localhost" \
  >"$scratch/check.log" 2>&1 || { cat "$scratch/check.log"; exit 1; }
grep -A4 '^PLAY RECAP' "$scratch/check.log"
# What check mode would write (--diff): per-unit config and allow-list, the broker's own paths.
for expected in 'id = "unit-b"' 'edgetpu_device = "pci"' 'IPAddressAllow=localhost 127.0.0.1' \
  "cafile /etc/mosquitto/entrance/certs/ca.crt" "acl_file /etc/mosquitto/entrance/acl"; do
  grep -qF -- "$expected" "$scratch/check.log" || { echo "check-mode diff lacks: $expected"; exit 1; }
done
if grep -v '^+++ ' "$scratch/check.log" | grep -qF -- "$scratch/"; then
  echo "a controller path leaked into a host's file"; exit 1
fi
if grep -q 'PRIVATE KEY' "$scratch/check.log"; then
  echo "a private key was printed by --diff"; exit 1
fi
for identity in unit-a unit-b; do
  [ -s "$scratch/pki/units/$identity.crt" ] || { echo "no certificate for $identity"; exit 1; }
done
for identity in unit-a unit-b; do
  grep -qx "topic write entrance/$identity/events" "$scratch/build/broker/acl" || { echo "ACL lacks a block for $identity"; exit 1; }
done
if grep -q '^pattern' "$scratch/build/broker/acl"; then echo "ACL has a pattern, which would apply to consumers too"; exit 1; fi
echo "ok: check mode against localhost; PKI issued unit-a and unit-b, broker config rendered"

# The per-unit config template, rendered for each kind of unit, passes the unit's own validator.
for coral in usb pci none; do
  python - "$coral" >"$scratch/unit-$coral.toml" <<'RENDER'
import sys
from pathlib import Path

import jinja2

from ansible.plugins.filter.core import FilterModule

environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
environment.filters.update(FilterModule().filters())
template = environment.from_string(Path("deploy/fleet/templates/unit.toml.j2").read_text())
print(template.render(ansible_managed="check", unit_id="unit-a", capture_rotation=180, coral=sys.argv[1],
                      broker_host="mqtt.building.example", broker_port=8883, topic_prefix="entrance",
                      ha_discovery=False,
                      # one kind of unit with trusted commanders, the others with none
                      commanders_file="commanders.json" if sys.argv[1] == "none" else ""))
RENDER
  .venv/bin/device --config "$scratch/unit-$coral.toml" config check >/dev/null
done
echo "ok: unit config template valid for usb, pci and no Coral"
