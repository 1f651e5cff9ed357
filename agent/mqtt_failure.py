"""Why a connection to the broker could not be made, in words an operator can act on.

paho retries a failed connection by itself and keeps the error to its own DEBUG line, so every
failure read "broker unreachable": a certificate refused (a Pi whose clock is not yet set sees a
valid certificate as not yet valid), a TLS client on the broker's plain port, a name that does
not resolve and a broker that is down all looked the same, and the operator checked the network.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import paho.mqtt.client as mqtt

from agent import clock
from agent.config import MqttConfig

# OpenSSL's X509_V_ERR_CERT_NOT_YET_VALID and X509_V_ERR_CERT_HAS_EXPIRED: a matter of dates
_DATES = {9: "not yet valid", 10: "expired"}


class Client(mqtt.Client):
    """paho's client, keeping the error of its last failed connection attempt.

    ``_create_socket`` is where paho 2.x opens the TCP connection and makes the TLS handshake;
    what it raises there paho catches in its network loop and does not hand to
    ``on_connect_fail``. ``tests/agent/test_mqtt_failure.py`` fails if a paho release moves it.
    """

    connect_error: OSError | None = None

    def _create_socket(self) -> Any:
        try:
            sock = super()._create_socket()
        except OSError as e:
            self.connect_error = e
            raise
        self.connect_error = None
        return sock


def host_port(cfg: MqttConfig) -> str:
    return f"{cfg.host}:{cfg.port}"


def explain(err: BaseException | None, cfg: MqttConfig) -> tuple[str, str]:
    """(kind, what went wrong and what to do) for a failed connection attempt."""
    if isinstance(err, ssl.SSLCertVerificationError):
        said = err.verify_message or str(err)
        dated = _DATES.get(err.verify_code)
        if dated is not None:
            now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            unset = " (not yet set by network time)" if clock.synced() is False else ""
            return "certificate_dates", (
                f"the broker's certificate is refused: {said}; the device's clock reads {now}"
                f"{unset}: a clock not yet set (a Raspberry Pi has no battery clock) makes a "
                f"valid certificate look {dated}, so check it (timedatectl), else renew the "
                "broker's certificate"
            )
        if "mismatch" in said:
            return "certificate_name", (
                f"the broker's certificate is refused: {said}; mqtt.host ({cfg.host}) must be "
                "a name or address the certificate was issued for"
            )
        return "certificate", (
            f"the broker's certificate is refused: {said}; mqtt.tls_ca_certs "
            f"({cfg.tls_ca_certs}) must be the certificate of the CA that signed it"
        )
    if cfg.tls and isinstance(err, ConnectionResetError | ssl.SSLEOFError):
        return "tls_closed", (
            f"{host_port(cfg)} closed the connection during the TLS handshake ({err}): "
            f"mqtt.port {cfg.port} may be the broker's plain port (its TLS port is usually "
            "8883; or mqtt.tls: false), or the broker refuses the device's certificate"
        )
    if isinstance(err, ssl.SSLError):
        said = err.reason or str(err)
        if said == "WRONG_VERSION_NUMBER":
            return "not_tls", (
                f"port {cfg.port} answers without TLS (SSL: {said}): it is the broker's plain "
                "port; set mqtt.port to its TLS port (usually 8883), or mqtt.tls: false"
            )
        return "tls", (
            f"the TLS handshake failed (SSL: {said}): the broker may refuse the device's "
            f"certificate (mqtt.tls_client_cert {cfg.tls_client_cert}: signed by a CA the "
            "broker trusts, not expired, with its key in mqtt.tls_client_key)"
        )
    if isinstance(err, socket.gaierror):
        return "name", (
            f"the name {cfg.host} does not resolve ({err.strerror}): check mqtt.host and the "
            "device's DNS"
        )
    if isinstance(err, ConnectionRefusedError):
        return "refused", (
            f"connection refused: nothing listens on {host_port(cfg)} (the broker is not "
            "running, or mqtt.port is not its port)"
        )
    if isinstance(err, TimeoutError):
        return "timeout", (
            f"no answer from {host_port(cfg)}: the host is down, or a firewall drops the connection"
        )
    if isinstance(err, OSError):
        return "network", f"{err.strerror or err}"
    return "unknown", "no connection"


# the broker's CONNACK refusals (MQTT 5 reason codes; paho gives 3.1.1's in the same terms)
_CREDENTIALS = (
    "check mqtt.user and its password (mqtt.password, ${PALM_MQTT_PASSWORD} from the "
    "service's EnvironmentFile, or mqtt.password_file) against the broker's password file"
)
_REFUSALS = {
    133: ("client_id", "device.id is not a client id the broker accepts"),
    134: ("credentials", _CREDENTIALS),
    135: (
        "not_authorized",
        f"{_CREDENTIALS} (mosquitto answers a wrong password so), then that the broker lets "
        "this user connect (a broker without anonymous clients needs mqtt.user)",
    ),
    136: ("unavailable", "the broker is not available now"),
    137: ("unavailable", "the broker is busy"),
    138: ("banned", "the broker has banned this client (its administrator lifts it)"),
}


def refusal(reason_code: Any) -> tuple[str, str]:
    """(kind, what to do) for a CONNACK that refused the connection."""
    value = getattr(reason_code, "value", reason_code)
    return _REFUSALS.get(value, ("refused_by_broker", f"the broker refused it ({reason_code})"))
