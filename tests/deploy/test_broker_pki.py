"""The broker kit's PKI and config rendering, without a broker: files, permissions, names, refusals."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.broker.pki import Pki, PkiError
from deploy.broker.pki import main as pki_main
from deploy.broker.render import BrokerSettings, RenderError, render_acl, write_broker_config

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    made = Pki(tmp_path / "pki")
    made.init()
    made.issue_broker(hosts=["mqtt.example.org"], ips=["10.1.2.3"])
    return made


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_private_and_certificates_public(pki: Pki) -> None:
    unit = pki.issue_client("lobby-1", "unit")
    assert mode(pki.ca_key_path) == 0o600
    assert mode(pki.broker_files().key) == 0o600
    assert mode(unit.key) == 0o600
    assert mode(pki.dir) == 0o700
    assert mode(unit.cert) == 0o644
    assert mode(pki.ca_cert_path) == 0o644


def test_a_client_certificate_names_its_identity_and_is_signed_by_the_ca(pki: Pki) -> None:
    cert = load(pki.issue_client("lobby-1", "unit").cert)
    ca = load(pki.ca_cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "lobby-1"
    cert.verify_directly_issued_by(ca)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_the_broker_certificate_covers_its_names_and_loopback(pki: Pki) -> None:
    cert = load(pki.broker_files().cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"mqtt.example.org", "localhost"}
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


@pytest.mark.parametrize("bad", ["Lobby", "a/b", "unit+", "#", "", "-lead", "x" * 64, "a b"])
def test_identities_that_could_escape_the_acl_patterns_are_refused(pki: Pki, bad: str) -> None:
    with pytest.raises(PkiError, match="not allowed"):
        pki.issue_client(bad, "unit")


def test_a_consumer_cannot_share_a_units_name(pki: Pki) -> None:
    pki.issue_client("lobby-1", "unit")
    with pytest.raises(PkiError, match="already a unit"):
        pki.issue_client("lobby-1", "consumer")


def test_revoking_lists_every_certificate_of_the_identity_in_the_crl(pki: Pki) -> None:
    first = load(pki.issue_client("lobby-1", "unit").cert).serial_number
    second = load(pki.issue_client("lobby-1", "unit").cert).serial_number
    keeper = load(pki.issue_client("lobby-2", "unit").cert).serial_number

    assert sorted(pki.revoke("lobby-1")) == sorted([first, second])

    crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    assert crl.is_signature_valid(load(pki.ca_cert_path).public_key())  # type: ignore[arg-type]
    assert {entry.serial_number for entry in crl} == {first, second}
    assert crl.get_revoked_certificate_by_serial_number(keeper) is None
    with pytest.raises(PkiError, match="no valid certificate"):
        pki.revoke("lobby-1")


def test_the_ca_is_never_silently_replaced(pki: Pki) -> None:
    with pytest.raises(PkiError, match="refusing to replace"):
        pki.init()


def test_the_cli_reports_errors_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pki_main(["--dir", str(tmp_path / "none"), "unit", "lobby-1"]) == 2
    assert "no CA" in capsys.readouterr().err


def test_the_cli_runs_as_a_module_from_the_repository(tmp_path: Path) -> None:
    directory = str(tmp_path / "p")

    def run_module(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "deploy.broker.pki", "--dir", directory, *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    assert "CA:" in run_module("init")
    # The same entry point in-process, to spare an interpreter start per command.
    for command in (["broker", "--host", "mqtt.local"], ["unit", "lobby-1"], ["consumer", "backend"]):
        assert pki_main(["--dir", directory, *command]) == 0
    assert pki_main(["--dir", directory, "revoke", "lobby-1"]) == 0
    listing = run_module("list")
    assert "lobby-1" in listing and "revoked" in listing
    assert "backend" in listing and "valid until" in listing


def test_pki_files_are_ignored_by_git(tmp_path: Path) -> None:
    candidates = ["pki/ca.key", "deploy/broker/pki/units/lobby-1.key", "x/lobby-1.crt", "secrets/ca.key"]
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", *candidates], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.stdout.split() == candidates


def test_the_acl_confines_each_unit_to_its_own_topics() -> None:
    acl = render_acl("site/entrance", ("backend",), ha_discovery=False, units=("lobby-1",))
    lines = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "user lobby-1",
        "topic write site/entrance/lobby-1/events",
        "topic write site/entrance/lobby-1/status",
        "topic write site/entrance/lobby-1/health",
        "topic read site/entrance/lobby-1/cmd/#",
        "topic write site/entrance/lobby-1/answers/+",
        "user backend",
        "topic read site/entrance/+/events",
        "topic read site/entrance/+/status",
        "topic read site/entrance/+/health",
        "topic write site/entrance/+/cmd/#",
        "topic read site/entrance/+/answers/backend",
        "topic readwrite site/entrance/consumers/backend/probe",
        "topic write site/entrance/consumers/backend/status",
        "topic read site/entrance/consumers/+/status",
    ]
    assert "homeassistant" not in acl
    with_ha = render_acl("entrance", ("backend",), ha_discovery=True, units=("lobby-1",))
    assert "topic write homeassistant/+/lobby-1/#" in with_ha.splitlines()


def test_no_acl_rule_applies_to_every_identity() -> None:
    # A `pattern` line applies to consumers too: that is how a consumer certificate could write
    # <prefix>/<its own CN>/events (issue 13). Units get their own user blocks instead.
    acl = render_acl("entrance", ("backend", "home-assistant"), ha_discovery=True, units=("lobby-1",))
    assert not [line for line in acl.splitlines() if line.startswith("pattern")]
    consumer_rules = acl.split("user backend", 1)[1]
    assert "write entrance/+/events" not in consumer_rules and "homeassistant/+/" not in consumer_rules


def test_an_identity_cannot_be_both_unit_and_consumer_in_the_acl() -> None:
    with pytest.raises(RenderError):
        render_acl("entrance", ("lobby-1",), ha_discovery=False, units=("lobby-1",))


def test_no_unit_may_take_the_name_of_the_consumers_corner() -> None:
    # A unit called "consumers" would read <prefix>/consumers/cmd/#: consumer "cmd"'s probe topic.
    with pytest.raises(RenderError, match="consumers"):
        render_acl("entrance", ("cmd",), ha_discovery=False, units=("consumers",))


def test_units_in_the_acl_come_from_the_pki_index_without_revoked_ones(pki: Pki, tmp_path: Path) -> None:
    pki.issue_client("lobby-1", "unit")
    pki.issue_client("lobby-2", "unit")
    pki.revoke("lobby-2")
    pki.write_crl()
    conf = write_broker_config(BrokerSettings(pki_dir=pki.dir, out_dir=tmp_path / "conf"))
    acl = (conf.parent / "acl").read_text()
    assert "user lobby-1" in acl and "lobby-2" not in acl


@pytest.mark.parametrize("prefix", ["", "a//b", "a/#", "a/+/b", "/lead"])
def test_a_prefix_with_wildcards_or_empty_levels_is_refused(prefix: str) -> None:
    with pytest.raises(RenderError):
        render_acl(prefix, ("backend",), ha_discovery=False)


def test_a_consumer_name_with_acl_syntax_is_refused() -> None:
    with pytest.raises(RenderError):
        render_acl("entrance", ("backend\ntopic readwrite #",), ha_discovery=False)


def test_the_rendered_config_is_tls_only_with_client_certificates(pki: Pki, tmp_path: Path) -> None:
    conf = write_broker_config(BrokerSettings(pki_dir=pki.dir, out_dir=tmp_path / "conf")).read_text()
    directives = [line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#")]
    settings = {d[0]: (d[1] if len(d) > 1 else "") for d in directives}
    assert [d for d in directives if d[0] == "listener"] == [["listener", "8883"]]
    assert settings["require_certificate"] == "true"
    assert settings["use_identity_as_username"] == "true"
    assert settings["allow_anonymous"] == "false"
    assert settings["persistence"] == "true"
    assert "user" not in settings  # the packaged default (drop to `mosquitto`) stays
    assert (tmp_path / "conf" / "acl").exists()
    # The broker gets copies of what it needs, never the CA key; its own key stays private.
    certs = (tmp_path / "conf" / "certs").resolve()
    assert settings["cafile"] == str(certs / "ca.crt")
    assert settings["crlfile"] == str(certs / "crl.pem")
    assert Path(settings["keyfile"]).read_bytes() == pki.broker_files().key.read_bytes()
    assert mode(Path(settings["keyfile"])) == 0o600
    assert Path(settings["crlfile"]).read_bytes() == pki.crl_path.read_bytes()
    assert sorted(p.name for p in certs.iterdir()) == ["broker.crt", "broker.key", "ca.crt", "crl.pem"]


def test_rendering_without_a_broker_certificate_says_what_is_missing(tmp_path: Path) -> None:
    bare = Pki(tmp_path / "pki")
    bare.init()
    with pytest.raises(RenderError, match=r"broker\.crt"):
        write_broker_config(BrokerSettings(pki_dir=bare.dir, out_dir=tmp_path / "conf"))


def test_crl_status_warns_before_the_crl_expires(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    assert pki_main(["--dir", str(pki.dir), "crl-status", "--warn-days", "30"]) == 0
    pki.write_crl(days=10)
    assert pki_main(["--dir", str(pki.dir), "crl-status", "--warn-days", "30"]) == 1
    assert "re-sign" in capsys.readouterr().err
