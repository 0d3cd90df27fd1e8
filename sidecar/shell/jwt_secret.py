"""Where the JWT secret comes from, and the one rule it must meet: at least 32 bytes.

HS256 with a short secret can be brute-forced offline from a single token, so a secret shorter
than 32 bytes (256 bits, the hash's size; RFC 7518 §3.2) is refused wherever it comes from.
The first source that has one wins:

    1. --secret-file PATH on the command line
    2. $DGDO_JWT_SECRET
    3. the systemd credential $CREDENTIALS_DIRECTORY/jwt-secret (`LoadCredential=jwt-secret:...`:
       a file only this service can read, not an environment variable every child and
       /proc/PID/environ would show)
    4. [auth] secret_file in the config file

A secret may hold several keys, one per line (auth.keys): the first signs what `dgdo token`
mints, and every one verifies. That is how it is rotated (README "Secret").

Every problem ends the command with one line (SystemExit, status 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.wire import auth

CREDENTIAL_SECRET = "jwt-secret"  # the systemd credential's name: $CREDENTIALS_DIRECTORY/jwt-secret
MAKE_ONE = "head -c 32 /dev/urandom | base64"


@dataclass(frozen=True, slots=True)
class Found:
    secret: str
    file: Path | None  # the file it was read from (None: the environment)


def checked(secret: str, source: str) -> str:
    """The secret, or SystemExit when it (or, in a secret of several lines, any line: auth.keys) is too short."""
    lines = auth.keys(secret)
    for i, key in enumerate(lines, 1):
        n = len(key.encode())
        if n < auth.MIN_SECRET_BYTES:
            which = f"line {i} of the JWT secret" if len(lines) > 1 else "the JWT secret"
            raise SystemExit(f"dgdo: {which} from {source} is {n} bytes; at least {auth.MIN_SECRET_BYTES} "
                             f"are needed (make one: {MAKE_ONE})")
    return secret


def read_secret_file(path: Path) -> str:
    """A secret kept in a file (a systemd credential, /etc/dgdo/jwt-secret): its text without the
    trailing newline an editor or `echo` leaves. SystemExit, one line, when unreadable, empty or short."""
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"dgdo: cannot read the JWT secret from {path}: {getattr(e, 'strerror', None) or e}") from None
    if not secret:
        raise SystemExit(f"dgdo: the JWT secret file {path} is empty")
    return checked(secret, str(path))


def _credential(environ: Mapping[str, str]) -> Path | None:
    creds = environ.get("CREDENTIALS_DIRECTORY")
    path = Path(creds) / CREDENTIAL_SECRET if creds else None
    return path if path is not None and path.exists() else None


def find(flag_file: Path | None = None, config_file: Path | None = None,
         environ: Mapping[str, str] = os.environ) -> Found | None:
    """The configured secret (see the module's doc for the order), or None when there is none."""
    if flag_file is not None:
        return Found(read_secret_file(flag_file), flag_file)
    if environ.get(auth.ENV_SECRET):
        return Found(checked(environ[auth.ENV_SECRET], f"${auth.ENV_SECRET}"), None)
    cred = _credential(environ)
    if cred is not None:
        return Found(read_secret_file(cred), cred)
    if config_file is not None:
        return Found(read_secret_file(config_file), config_file)
    return None


def configured_secret(environ: Mapping[str, str] = os.environ) -> str | None:
    """$DGDO_JWT_SECRET, else the systemd credential, else None (no files named by flags or config)."""
    found = find(environ=environ)
    return found.secret if found else None
