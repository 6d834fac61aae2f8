"""A TLS client context that trusts one CA only: the fleet's own.

The Notification Server and the package servers hold certificates issued by the CA that
``mcast-ns init`` makes; agents pin that CA (``mcast-agent --ca-file``), so no other
certificate authority, system-wide or not, can vouch for a server. The same context is handed
to the engine's HTTP downloads (``FetchSettings.tls``) for https codebases.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .errors import StorageError, TrustError


def pinned_context(ca_file: Path) -> ssl.SSLContext:
    """A client context verifying servers (name and chain) against ``ca_file`` only.

    A missing or unreadable file is a StorageError (exit 4); a file holding no usable
    certificate is a TrustError (exit 3)."""
    path = Path(ca_file)
    try:
        pem = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not a PEM file"
        raise StorageError(f"cannot read CA file {path}: {why or exc}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        raise TrustError(f"CA file {path} holds no usable certificate: {exc}") from None
    if not ctx.get_ca_certs():
        raise TrustError(f"CA file {path} holds no CA certificate")
    return ctx
