"""Why the device cannot reach its broker, said in the first WARNING of the outage: every
failure read 'broker unreachable', and the operator checked the network for a refused
certificate, a TLS client on the plain port or a broker that was not running."""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.commands import Dispatcher
from agent.config import parse_config
from agent.mqtt import MqttReporter
from agent.outbox import Outbox
from export.demo.broker import _cert, _key_pem, free_port

from .test_mqtt import reporter, wait_until

DAY = 86400.0


class TlsServer:
    """A TLS listener on 127.0.0.1 with a certificate of the test's making: it only takes the
    handshake, which is where a certificate is refused, before any MQTT."""

    def __init__(self, folder: Path, san: list, starts_in: float = 0.0, port: int = 0) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
        ca = _cert("test CA", ca_key, ca_name, ca_key, ca=True)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert("server", key, ca_name, ca_key, san=san, starts_in=starts_in,
                     usage=[ExtendedKeyUsageOID.SERVER_AUTH])  # fmt: skip
        self.ca = folder / "ca.crt"
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (folder / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / "server.key").write_bytes(_key_pem(key))
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(folder / "server.crt", folder / "server.key")
        self._sock = socket.create_server(("127.0.0.1", port))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            try:
                with self._ctx.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                conn.close()  # the client refused the certificate

    def close(self) -> None:
        self._sock.close()


def _first_warning(caplog, r: MqttReporter) -> str:
    try:
        r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
        assert wait_until(
            lambda: any(x.levelno == logging.WARNING for x in caplog.records), timeout=10
        ), caplog.text
        assert not r.counters()["connected"]
    finally:
        r.stop(timeout=0.2)
    warned = [x.getMessage() for x in caplog.records if x.levelno >= logging.WARNING]
    assert len(warned) == 1, warned
    return warned[0]


def _to(server: TlsServer, device: str, tmp_path: Path, host: str = "127.0.0.1"):
    section = {"host": host, "port": server.port, "tls": True, "tls_ca_certs": str(server.ca),
               "reconnect_min": 0.2, "reconnect_max": 0.5}  # fmt: skip
    cfg = parse_config({"device": {"id": device}, "mqtt": section}, env={})
    return MqttReporter(cfg.mqtt, device, Outbox(tmp_path / "outbox.sqlite"))


@pytest.fixture
def mqtt_log(caplog):
    caplog.set_level(logging.DEBUG, logger="agent.mqtt")
    return caplog


def test_a_broker_signed_by_another_ca_names_tls_ca_certs(running_broker, tmp_path, mqtt_log):
    from .conftest import make_pki

    other = make_pki(tmp_path / "other", ("dev40",))
    cert, key = running_broker.pki.clients["dev40"]
    r = reporter(
        running_broker, "dev40", tmp_path, port=running_broker.tls_port, tls=True,
        tls_ca_certs=str(other.ca), tls_client_cert=str(cert), tls_client_key=str(key),
        reconnect_min=0.2, reconnect_max=0.5,
    )  # fmt: skip
    said = _first_warning(mqtt_log, r)
    assert said.startswith(
        f"mqtt broker unreachable host=127.0.0.1 port={running_broker.tls_port} "
        "reason=certificate: the broker's certificate is refused: "
    ), said
    # OpenSSL's words: the two CAs share a name, so the signature is what it finds wrong
    assert "certificate signature failure" in said or "unable to get local issuer" in said, said
    assert f"; mqtt.tls_ca_certs ({other.ca}) must be the certificate of the CA" in said, said
    assert said.endswith("decisions wait in the outbox; retrying every 0.5 s at most"), said


def test_a_certificate_not_yet_valid_points_at_the_clock(tmp_path, mqtt_log):
    """A Pi has no battery clock: until network time sets it, a valid certificate is not yet
    valid, and nothing said so."""
    server = TlsServer(tmp_path / "pki", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                       starts_in=DAY)  # fmt: skip
    try:
        said = _first_warning(mqtt_log, _to(server, "dev41", tmp_path))
    finally:
        server.close()
    assert "reason=certificate_dates: the broker's certificate is refused: certificate is not " \
           "yet valid; the device's clock reads " in said, said  # fmt: skip
    assert "check it (timedatectl), else renew the broker's certificate" in said, said


def test_a_host_the_certificate_does_not_name_says_so(tmp_path, mqtt_log):
    server = TlsServer(tmp_path / "pki", [x509.DNSName("broker.example")])
    try:
        said = _first_warning(mqtt_log, _to(server, "dev42", tmp_path))
    finally:
        server.close()
    assert "reason=certificate_name: the broker's certificate is refused: " in said, said
    assert "mismatch" in said and "mqtt.host (127.0.0.1) must be a name or address" in said, said


def test_tls_to_the_plain_port_says_which_port(running_broker, tmp_path, mqtt_log):
    """mosquitto's plain listener takes the TLS hello for a malformed MQTT packet and resets
    the connection."""
    r = reporter(running_broker, "dev43", tmp_path, tls=True,
                 tls_ca_certs=str(running_broker.pki.ca), reconnect_min=0.2,
                 reconnect_max=0.5)  # fmt: skip
    said = _first_warning(mqtt_log, r)
    assert (
        f"reason=tls_closed: 127.0.0.1:{running_broker.port} closed the connection during the "
        f"TLS handshake ("
    ) in said, said
    assert f"mqtt.port {running_broker.port} may be the broker's plain port" in said, said


def test_a_broker_not_running_then_back_with_a_refused_certificate(running_broker, tmp_path,
                                                                   mqtt_log):  # fmt: skip
    """Nothing listens: 'connection refused'. Then a listener whose certificate is refused
    answers on that port: the outage's reason changed, said once at INFO, not per retry."""
    port = free_port()
    cert, key = running_broker.pki.clients["dev44"]
    r = reporter(
        running_broker, "dev44", tmp_path, port=port, tls=True,
        tls_ca_certs=str(running_broker.pki.ca), tls_client_cert=str(cert),
        tls_client_key=str(key), reconnect_min=0.2, reconnect_max=0.5,
    )  # fmt: skip
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    server = None
    try:
        assert wait_until(lambda: "reason=refused" in mqtt_log.text, timeout=10)
        # a listener whose certificate another CA signed than the device's tls_ca_certs
        server = TlsServer(tmp_path / "pki", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                           port=port)  # fmt: skip
        assert wait_until(lambda: "reason=certificate:" in mqtt_log.text, timeout=10)
        wait_until(lambda: False, timeout=1.5)  # a few more attempts for the same reason
    finally:
        r.stop(timeout=0.2)
        if server is not None:
            server.close()
    said = [(x.levelno, x.getMessage()) for x in mqtt_log.records if "reason=" in x.getMessage()]
    assert said[0][0] == logging.WARNING and said[0][1].startswith(
        f"mqtt broker unreachable host=127.0.0.1 port={port} reason=refused: connection "
        f"refused: nothing listens on 127.0.0.1:{port} (the broker is not running"
    ), said
    loud = [(lvl, m.split(":")[0]) for lvl, m in said if lvl > logging.DEBUG]
    assert [lvl for lvl, _ in loud] == [logging.WARNING, logging.INFO], loud
    assert "reason=certificate" in loud[1][1], loud
    assert len(said) > len(loud)  # the retries, at DEBUG


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_wrong_password_is_one_error_saying_what_to_check(
    running_broker, tmp_path, mqtt_log, protocol
):
    """The broker refuses the credentials at every attempt: that was an ERROR line each time,
    'mqtt connect refused reason=Not authorized' (mosquitto's answer to a wrong password), for
    as long as it lasted, and nothing said what to check."""
    r = reporter(running_broker, "dev45", tmp_path, password="not-the-password",
                 protocol=protocol, reconnect_min=0.1, reconnect_max=0.2)  # fmt: skip
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    try:
        assert wait_until(lambda: mqtt_log.text.count("mqtt connect refused") >= 4, timeout=10)
        assert not r.counters()["connected"]
    finally:
        r.stop(timeout=0.2)
    said = [(x.levelno, x.getMessage()) for x in mqtt_log.records if "refused" in x.getMessage()]
    loud = [m for lvl, m in said if lvl > logging.DEBUG]
    assert len(loud) == 1 and said[0][0] == logging.ERROR, said
    assert loud[0].startswith(
        "mqtt connect refused reason=Not authorized kind=not_authorized: check mqtt.user and "
        "its password (mqtt.password, ${PALM_MQTT_PASSWORD} from the service's EnvironmentFile, "
        "or mqtt.password_file) against the broker's password file (mosquitto answers a wrong "
        "password so)"
    ), loud


@pytest.mark.parametrize("wrong", ["other_key", "encrypted_key", "key_for_ca"])
def test_tls_files_that_cannot_serve_stop_the_start_in_one_line(
    running_broker, palm_bundle, tmp_path, wrong
):
    """paho's tls_set raised on the daemon's first step: a traceback, exit code 1 and a restart
    every 5 s; an encrypted key asked for its passphrase on a terminal the service lacks."""
    from .test_daemon import agent_config, write_replay
    from .test_run_cli import _cli

    pki = running_broker.pki
    cert, key = pki.clients["dev1"]
    ca = pki.ca
    if wrong == "other_key":
        key = pki.clients["dev2"][1]
    elif wrong == "encrypted_key":
        enc = tmp_path / "dev1.enc.key"
        subprocess.run(["openssl", "pkey", "-in", key, "-out", enc, "-aes256", "-passout",
                        "pass:secret"], check=True)  # fmt: skip
        key = enc
    else:
        ca = key

    class TlsBroker:
        def mqtt_section(self, device: str) -> dict:
            return running_broker.mqtt_section(
                device, port=running_broker.tls_port, tls=True, tls_ca_certs=str(ca),
                tls_client_cert=str(cert), tls_client_key=str(key),
            )  # fmt: skip

    replay = write_replay(tmp_path / "r", [0])
    cfg = agent_config(tmp_path, TlsBroker(), "dev1", palm_bundle, replay)
    out = _cli("run", "--config", cfg)
    said = out.stderr.strip()
    assert out.returncode == 2 and "Traceback" not in said, said
    line = said.splitlines()[-1]
    expected = {
        "other_key": f"palm-agent: mqtt.tls_client_cert/tls_client_key: the key {key} is not the "
        f"private key of the certificate {cert}",
        "encrypted_key": f"palm-agent: mqtt.tls_client_cert/tls_client_key: the key {key} is "
        "encrypted with a passphrase, which a service cannot type",
        "key_for_ca": f"palm-agent: mqtt.tls_ca_certs: {key}: not a usable PEM file (",
    }[wrong]
    assert line.startswith(expected), line
