"""The sandbox's certificates: trusted by a real TLS client, renewed once they expire."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import trustme
from cryptography import x509

from sandbox.tls import create_tls


def _handshake(tls_dir: Path) -> str:
    tls = create_tls(tls_dir)
    server_ctx = tls.server_context()
    client_ctx = ssl.create_default_context(cafile=str(tls.ca_path))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                s.sendall(b"ok")

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            data = s.recv(2).decode()
        t.join(5)
    return data


def test_a_client_trusting_the_sandbox_ca_verifies_the_server(tmp_path: Path) -> None:
    assert _handshake(tmp_path) == "ok"


def test_valid_certificates_are_kept_and_expired_ones_replaced(tmp_path: Path) -> None:
    first = create_tls(tmp_path).cert_path.read_bytes()
    assert create_tls(tmp_path).cert_path.read_bytes() == first

    # A state directory left from long ago: a pair that expired yesterday.
    ca = trustme.CA()
    old = ca.issue_cert("localhost", "127.0.0.1", not_after=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    old.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    old.private_key_pem.write_to_path(str(tmp_path / "server-key.pem"))

    renewed = x509.load_pem_x509_certificate(create_tls(tmp_path).cert_path.read_bytes())
    assert renewed.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert _handshake(tmp_path) == "ok"


def test_a_certificate_about_to_expire_is_not_reused(tmp_path: Path) -> None:
    ca = trustme.CA()
    soon = ca.issue_cert("localhost", not_after=dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    soon.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    soon.private_key_pem.write_to_path(str(tmp_path / "server-key.pem"))
    assert create_tls(tmp_path).cert_path.read_bytes() != soon.cert_chain_pems[0].bytes()
