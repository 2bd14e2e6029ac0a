"""A throw-away certificate authority for the sandbox's HTTPS endpoints.

The real ARM and Kubernetes API servers only speak TLS, and azure-core refuses to send a
bearer token over plain HTTP. Serving the stand-ins over HTTPS with a sandbox CA keeps
the production code unchanged: clients only get told which CA to trust.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

# A state directory is kept between runs: certificates in it are used again only while
# they stay valid this much longer (a sandbox may run for hours; a demo for minutes).
REUSE_MARGIN = dt.timedelta(days=1)


@dataclass(frozen=True)
class SandboxTLS:
    ca_path: Path
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def ca_pem(self) -> bytes:
        return self.ca_path.read_bytes()


def _still_valid(*paths: Path, now: dt.datetime) -> bool:
    from cryptography import x509

    try:
        certs = [x509.load_pem_x509_certificate(p.read_bytes()) for p in paths]
    except (OSError, ValueError):
        return False
    return all(c.not_valid_before_utc <= now and now + REUSE_MARGIN < c.not_valid_after_utc for c in certs)


def create_tls(directory: Path) -> SandboxTLS:
    """Create a CA and a server certificate for 127.0.0.1 / localhost in ``directory``, or
    reuse the ones there while they stay valid (an expired pair is replaced)."""
    directory.mkdir(parents=True, exist_ok=True)
    tls = SandboxTLS(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    now = dt.datetime.now(dt.UTC)
    if tls.key_path.exists() and _still_valid(tls.ca_path, tls.cert_path, now=now):
        return tls

    import trustme

    ca = trustme.CA(organization_name="vmss-node-patcher sandbox")
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(tls.ca_path))
    server.cert_chain_pems[0].write_to_path(str(tls.cert_path))
    server.private_key_pem.write_to_path(str(tls.key_path))
    return tls
