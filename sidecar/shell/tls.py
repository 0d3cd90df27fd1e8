"""TLS in the sidecar: the server-side ssl context that `--tls-cert` / `--tls-key` make.

Phones connect over `wss://`. There are two ways to run that (README "TLS"): the sidecar
terminates TLS itself (this module: the event loop's ssl context, handed to picows, which
hands it to `loop.create_server`), or a reverse proxy in front of N workers does
(docs/deploy-nginx.md) and the workers speak plain ws:// on loopback.

The context is built once, at start, before the engine is spawned, so that a missing,
unreadable, passphrase-protected or mismatched certificate/key is one line and exit status 1,
not a traceback and not a server that accepts and then fails every handshake. Defaults are
Python's server defaults (no compression, forward-secret AEAD ciphers only, server cipher
preference) with TLS 1.2 as the floor: every phone OS of the last ten years speaks it.

`reload()` reads the files again into the same context: handshakes from then on present the
new certificate, connections already open keep theirs (SIGHUP, for a renewed certificate,
cli.py). `self_signed()` makes a throwaway certificate for development, tests and benches.
"""

from __future__ import annotations

import re
import ssl
import subprocess
import weakref
from collections.abc import Sequence
from pathlib import Path

# How long a client has to finish the TLS handshake before its socket is closed (asyncio's
# default is 60 s: a minute of a descriptor per connection that never speaks). A phone on a bad
# cellular link needs two or three round trips of a few hundred ms; 10 s is room for that.
HANDSHAKE_TIMEOUT_S = 10.0
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# WebSocket upgrades are HTTP/1.1 (RFC 6455; RFC 8441's HTTP/2 form is not served): a client
# offering h2 by ALPN must not get it.
ALPN = ("http/1.1",)


class TlsError(Exception):
    """The certificate or key cannot be used; the message is one line naming the file and why."""


def server_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """An ssl context for the server side of wss:// and https://, loaded with `cert` and `key`.

    Args:
        cert: PEM file with the certificate, the leaf first, then any intermediates.
        key: PEM file with its private key, not encrypted (a service has no one to type a passphrase).

    Raises:
        TlsError: a file is missing or unreadable, is not PEM, the key is encrypted, or the key
            does not belong to the certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.set_alpn_protocols(list(ALPN))
    load(ctx, Path(cert), Path(key))
    return ctx


def reload(ctx: ssl.SSLContext, cert: Path | str, key: Path | str) -> bool:
    """Loads `cert`/`key` again into `ctx`: new handshakes present them. Returns whether the
    certificate file changed since it was last loaded: a reload that finds the same bytes renewed
    nothing (a systemd credential is a copy made at start: its renewal takes a restart). Raises
    TlsError (and leaves the context as it was) when they cannot be used."""
    before = _loaded.get(ctx)
    load(ctx, Path(cert), Path(key))
    return _loaded.get(ctx) != before


# What each context was last loaded with: the certificate file's bytes (a few KB).
_loaded: weakref.WeakKeyDictionary[ssl.SSLContext, bytes] = weakref.WeakKeyDictionary()


def load(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    for what, path in (("certificate", cert), ("key", key)):
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 16)
        except OSError as e:
            raise TlsError(f"cannot read the TLS {what} {path}: {e.strerror or e}") from None
        if b"-----BEGIN " not in head:
            raise TlsError(f"the TLS {what} {path} is not a PEM file (no -----BEGIN line)")
        if path is cert:
            cert_bytes = head
    try:  # OpenSSL's "PEM lib" says neither which file nor what: the certificate is read alone first
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError:
        raise TlsError(f"the TLS certificate {cert} holds no certificate that can be read (a key file?)") from None
    # Test the pair on a scratch context first: a failed load_cert_chain may leave a context
    # half-changed, and reload() must keep serving the old pair when the new one is bad.
    for target in (ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ctx):
        try:
            target.load_cert_chain(cert, key, password=_no_passphrase)
        except _Encrypted:
            raise TlsError(f"the TLS key {key} is encrypted: give the sidecar an unencrypted key "
                           "(readable by its user only)") from None
        except ssl.SSLError as e:
            raise TlsError(f"cannot use the TLS certificate {cert} with the key {key}: {_why(e)}") from None
    _loaded[ctx] = cert_bytes


class _Encrypted(Exception):
    pass


def _no_passphrase() -> bytes:
    # Called only for an encrypted key. Without this callback OpenSSL would prompt on the
    # terminal, and a sidecar under systemd would hang at start waiting for a passphrase.
    raise _Encrypted


_REASONS = {
    "KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
    "NO_CERTIFICATE_ASSIGNED": "the key does not belong to the certificate (another key type)",
    "NO_START_LINE": "no PEM certificate or key where one was expected",
    "CA_MD_TOO_WEAK": "the certificate is signed with a digest too weak to use (MD5/SHA-1)",
    "EE_KEY_TOO_SMALL": "the key is too small (RSA under 2048 bits)",
}


def _why(e: ssl.SSLError) -> str:
    reason = getattr(e, "reason", None) or ""
    if reason in _REASONS:
        return _REASONS[reason]
    text = str(e)
    if "PEM lib" in text:
        return "the key file holds no private key that can be read"
    m = re.search(r"\] (.*?) \(_ssl", text)
    return m.group(1) if m else text


# ---- development, tests and benches --------------------------------------------------------


def self_signed(directory: Path | str, names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
                key_type: str = "ec", days: int = 30) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for `names` (host names and IP addresses), with the
    openssl command-line tool; returns (cert.pem, key.pem) in `directory`. `key_type`: `ec`
    (P-256, what most public certificates now use) or `rsa` (2048 bits). Not for production:
    clients must be told to trust it (its cert.pem as their CA file)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / "cert.pem", out / "key.pem"
    alt = ",".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names)
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if key_type == "ec" \
        else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-days", str(days), "-sha256",
                    "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={alt}",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
