"""The paho client as the transport uses it: protocol, credentials, TLS, last will, back-off.

One client serves until the pump replaces it (a fallback to 3.1.1, a link lost with decisions in
flight): :func:`make_client` builds and starts one, :func:`discard` takes one down so that no
callback of it runs again.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import ConfigError, MqttConfig
from agent.mqtt_failure import Client
from agent.mqtt_log import PahoLog

# the transport's modules log as one: the journal, and greps for "agent.mqtt", see one source
logger = logging.getLogger("agent.mqtt")


class Connection(Protocol):
    """paho's connection callbacks (its VERSION2 signatures), run on paho's network thread."""

    def on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None: ...

    def on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None: ...

    def on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None: ...

    def on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None: ...


def make_client(
    cfg: MqttConfig,
    client_id: str,
    v5: bool,
    will_topic: str,
    first_delay: float,
    connection: Connection,
    on_publish: Callable[..., None],
    on_message: Callable[..., None],
) -> mqtt.Client:
    """A client that connects in the background (``connect_async`` and its own thread),
    reconnecting after ``first_delay`` s at first and ``mqtt.reconnect_max`` s at most."""
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    client = Client(  # paho's, keeping why a connection attempt failed
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if v5 else True,
    )
    client.enable_logger(PahoLog(logger))  # type: ignore[arg-type]
    if cfg.user is not None:
        client.username_pw_set(cfg.user, cfg.secret())
        if cfg.password_file is not None:
            client.on_pre_connect = _password_reader(cfg)
    if cfg.tls:
        client.tls_set_context(tls_context(cfg))
        client.tls_insecure_set(cfg.tls_insecure)
    client.will_set(will_topic, b"offline", qos=1, retain=True)
    client.reconnect_delay_set(first_delay, cfg.reconnect_max)  # type: ignore[arg-type]
    client.on_socket_open = connection.on_socket_open
    client.on_connect = connection.on_connect
    client.on_connect_fail = connection.on_connect_fail
    client.on_disconnect = connection.on_disconnect
    client.on_publish = on_publish
    client.on_message = on_message
    client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
    client.loop_start()
    logger.info(
        "mqtt connecting host=%s port=%d tls=%s protocol=%s",
        cfg.host, cfg.port, cfg.tls, "5" if v5 else "3.1.1",
    )  # fmt: skip
    return client


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The broker's TLS context from the config's files, read again for each new client (a
    renewed certificate is taken at the next one).

    The reporter builds one at start, so that a file that cannot serve stops the daemon there
    with one line (:class:`agent.config.ConfigError`): paho's own ``tls_set`` raised on the
    daemon's first step, a traceback and a restart every 5 s, and an encrypted key asked for
    its passphrase on a terminal the service does not have.
    """
    try:
        ctx = ssl.create_default_context(cafile=cfg.tls_ca_certs)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"mqtt.tls_ca_certs: {cfg.tls_ca_certs}: {_reason(e)}; it must be the PEM "
            "certificate of the CA that signed the broker's certificate"
        ) from None
    if cfg.tls_client_cert is None:
        return ctx
    cert, key = cfg.tls_client_cert, cfg.tls_client_key or cfg.tls_client_cert
    asked: list[bool] = []

    def passphrase() -> bytes:  # OpenSSL asks only for an encrypted key: no prompt, but said
        asked.append(True)
        return b""

    try:
        ctx.load_cert_chain(cert, cfg.tls_client_key, password=passphrase)
    except PermissionError as e:
        raise ConfigError(
            f"mqtt.tls_client_cert/tls_client_key: {e.filename}: {e.strerror} for this process "
            f"(uid {os.geteuid()}); hand the key to the service as a credential "
            "(LoadCredential=, docs/deploy-pi.md) or make it readable by it"
        ) from None
    except (OSError, ssl.SSLError) as e:
        why = _reason(e)
        if "KEY_VALUES_MISMATCH" in str(e):
            why = f"the key {key} is not the private key of the certificate {cert}"
        elif asked:
            why = (
                f"the key {key} is encrypted with a passphrase, which a service cannot type: "
                "store it without one (openssl pkey -in KEY -out KEY.plain) and protect the "
                "file instead (mode 0600, or a systemd credential)"
            )
        raise ConfigError(f"mqtt.tls_client_cert/tls_client_key: {why}") from None
    return ctx


def _reason(e: BaseException) -> str:
    """What OpenSSL or the file system said, without errno numbers and source lines."""
    if isinstance(e, ssl.SSLError):
        return f"not a usable PEM file ({e.reason or e})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


def _password_reader(cfg: MqttConfig) -> Any:
    def on_pre_connect(client: mqtt.Client, userdata: Any) -> None:
        """The password file again before each connect: a rotated password is used at the next
        reconnect (on paho's thread; an unreadable file keeps the last password)."""
        try:
            client.username_pw_set(cfg.user, cfg.secret())
        except OSError as e:
            logger.error("mqtt password_file unreadable, keeping the last password: %s", e)

    return on_pre_connect


def set_nodelay(sock: Any) -> None:
    """Nagle's algorithm holds a small packet back while an earlier one is unacknowledged, and
    the broker delays its TCP acknowledgement: a reply or a decision sent right after another
    waited up to 40 ms for it."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def discard(client: mqtt.Client) -> None:
    """Stops ``client`` for good: no callback from it after this, and a half-open attempt's
    socket closed, since the broker must not keep it."""
    client.loop_stop()
    sock = client.socket()
    if sock is not None:
        sock.close()
