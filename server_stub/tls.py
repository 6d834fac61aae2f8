"""The fleet's certificate authority and the servers' certificates (ECDSA P-256).

``mcast-ns init`` makes, in ``DATA/tls/``, the CA (``ca.pem``, and its key ``ca.key``) and a
certificate for the Notification Server (``server.pem``, ``server.key``) whose subject
alternative names are the host names and addresses agents reach it by (default ``localhost``
and ``127.0.0.1``). ``mcast-ns cert issue`` signs one for a package server into any
directory. Agents pin ``ca.pem``; keys are written mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mcast.errors import StorageError, TrustError

TLS_DIR = "tls"
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CERT = "server.pem"
KEY = "server.key"
DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1")
CA_DAYS = 3650
CERT_DAYS = 825


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def tls_dir(data_dir: Path) -> Path:
    return Path(data_dir) / TLS_DIR


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        if private:
            os.fchmod(fh.fileno(), 0o600)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _names(hostnames: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in dict.fromkeys(hostnames):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)


def make_ca(directory: Path) -> None:
    """A new CA in ``directory`` (``ca.pem``, ``ca.key``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcast fleet CA")])
    start = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write(directory / CA_KEY, _key_pem(key), private=True)
    _write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), private=False)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except OSError as exc:
        raise StorageError(
            f"no CA in {directory} ({exc.strerror or exc}): run `mcast-ns init`"
        ) from None
    except ValueError as exc:
        raise TrustError(f"the CA in {directory} cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TrustError(f"the CA key in {directory} is not an ECDSA key")
    return cert, key


def issue(ca_dir: Path, hostnames: list[str], out_dir: Path) -> CertFiles:
    """Sign a server certificate for ``hostnames`` with the CA in ``ca_dir``; writes
    ``server.pem`` (with the CA's certificate after it) and ``server.key`` to ``out_dir``."""
    if not hostnames:
        raise ValueError("a certificate needs at least one host name")
    ca_cert, ca_key = _load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(hostnames)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = CertFiles(Path(out_dir) / CERT, Path(out_dir) / KEY)
    try:
        _write(files.key, _key_pem(key), private=True)
        chain = cert.public_bytes(serialization.Encoding.PEM)
        _write(files.cert, chain + ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    except OSError as exc:
        raise StorageError(f"cannot write the certificate to {out_dir}: {exc.strerror}") from None
    return files


def cert_hostnames(path: Path) -> list[str]:
    """The subject alternative names of the certificate in ``path`` (first of the chain)."""
    cert = x509.load_pem_x509_certificates(Path(path).read_bytes())[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]


def init_tls(data_dir: Path, hostnames: list[str] | None = None) -> CertFiles:
    """The CA and the server's certificate of ``data_dir``, made when missing (idempotent).
    Given ``hostnames`` that the certificate does not carry, a new one is issued for them."""
    directory = tls_dir(data_dir)
    try:
        if not (directory / CA_CERT).exists():
            make_ca(directory)
    except OSError as exc:
        raise StorageError(f"cannot create {directory}: {exc.strerror or exc}") from None
    files = CertFiles(directory / CERT, directory / KEY)
    wanted = list(dict.fromkeys(hostnames or []))
    if (
        files.cert.exists()
        and files.key.exists()
        and (not wanted or sorted(cert_hostnames(files.cert)) == sorted(_canonical(wanted)))
    ):
        return files
    return issue(directory, wanted or list(DEFAULT_HOSTNAMES), directory)


def _canonical(hostnames: list[str]) -> list[str]:
    return [str(n.value) for n in _names(hostnames)]


def server_files(directory: Path) -> CertFiles:
    """The certificate and key a server serves with, from ``directory``; StorageError when
    either is missing."""
    files = CertFiles(Path(directory) / CERT, Path(directory) / KEY)
    for path in (files.cert, files.key):
        if not path.is_file():
            raise StorageError(
                f"no TLS certificate: {path} is missing (run `mcast-ns init`, or `mcast-ns cert "
                "issue --out DIR` for a package server; --plain-http serves without TLS)"
            )
    return files
