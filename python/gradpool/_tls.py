"""Which pool a client talks to: a certificate pinned by its fingerprint.

A pool started with ``--tls-self-signed`` prints its certificate's SHA-256
fingerprint (``sha256:…``). A client given it accepts that certificate and
no other: the certificate is read once and becomes the only one the
connection trusts, so a different certificate fails the TLS handshake,
before any request (and its API key) leaves this machine.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import ssl
from typing import Tuple

from .errors import CertificateMismatch, GradpoolError, Unreachable


def parse_fingerprint(text: str) -> str:
    """``sha256:`` and 64 hex digits (colons allowed), normalised."""
    t = text.strip()
    for prefix in ("sha256:", "SHA256:"):
        if t.startswith(prefix):
            t = t[len(prefix) :]
            break
    digits = t.replace(":", "").lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise GradpoolError(
            f"fingerprint {text!r} is not sha256: and 64 hex digits "
            "(as the pool prints it at start)"
        )
    return "sha256:" + digits


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine: plain HTTP to it crosses no network."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def peer_certificate(url: str, host: str, port: int, timeout: float) -> Tuple[bytes, str]:
    """The certificate (DER) the pool at ``host:port`` shows, and its fingerprint."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with probe.wrap_socket(sock, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
    except OSError as e:
        raise Unreachable(url, str(e)) from e
    if der is None:
        raise Unreachable(url, "the pool showed no certificate")
    return der, "sha256:" + hashlib.sha256(der).hexdigest()


def pinned_context(url: str, host: str, port: int, pinned: str, timeout: float) -> ssl.SSLContext:
    """A TLS context that trusts exactly the certificate ``pinned`` names.

    Raises :class:`CertificateMismatch` when the pool shows another one.
    """
    der, got = peer_certificate(url, host, port, timeout)
    if got != pinned:
        raise CertificateMismatch(url, pinned, got)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The name is not what is checked: the certificate itself is.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=der)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx
