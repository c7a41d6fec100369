"""API-key authentication of `lga-export serve`: where the key comes from and who may skip it.

The key is read from a file (`--api-key-file`) or the environment (`LGA_API_KEY`), never from a
command-line value, which `ps` would show every user of the machine. Replicas receive only its
SHA-256, so the key itself is in no Ray object or log; a request's key is hashed and the two
digests are compared with `hmac.compare_digest` (constant time). Importing this module imports
neither Ray nor FastAPI: the CLI checks the key and the host before it starts anything.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from lga_export.errors import LGAError

ENV_VAR = "LGA_API_KEY"
KEY_FILE_FLAG = "--api-key-file"
NO_AUTH_FLAG = "--allow-no-auth"
MIN_KEY_CHARS = 16
_FIX = "make one with `openssl rand -hex 32`"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _checked(key: str, origin: str) -> str:
    key = key.strip()
    if not key:
        raise LGAError(f"{origin} is empty; put the API key in it ({_FIX}) or leave it unset")
    if len(key) < MIN_KEY_CHARS or any(c.isspace() or not c.isprintable() for c in key):
        raise LGAError(f"{origin}: an API key must be one word of at least {MIN_KEY_CHARS} printable characters; {_FIX}")
    return key


def load_api_key(key_file: Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key from `key_file` or $LGA_API_KEY (both set: an error, never a silent choice);
    None when neither is given."""
    environ = os.environ if environ is None else environ
    from_env = environ.get(ENV_VAR)
    if key_file is not None and from_env is not None:
        raise LGAError(f"the API key is given twice ({KEY_FILE_FLAG} {key_file} and ${ENV_VAR}); give one of them")
    if from_env is not None:
        return _checked(from_env, f"${ENV_VAR}")
    if key_file is None:
        return None
    path = Path(key_file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LGAError(f"{KEY_FILE_FLAG} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LGAError(f"{KEY_FILE_FLAG} {path}: cannot read the API key ({type(exc).__name__}); give a UTF-8 text "
                       f"file holding the key") from None
    return _checked(text, f"{KEY_FILE_FLAG} {path}")


def check_exposure(host: str, has_key: bool, allow_no_auth: bool) -> None:
    """Refuse to listen beyond loopback without a key, unless the caller said so explicitly."""
    from lga_export.serve.client import is_loopback

    if has_key or allow_no_auth or is_loopback(host):
        return
    raise LGAError(f"--host {host} is reachable from other machines and the server has no API key: give one with "
                   f"{KEY_FILE_FLAG} FILE or ${ENV_VAR}, or pass {NO_AUTH_FLAG} to serve without authentication "
                   f"(e.g. behind your own authenticating proxy)")


def authorized(header: str | None, digest: str | None) -> str | None:
    """None when the request may pass (no key configured, or the right one), else the one-line
    reason for a 401. `header` is the request's Authorization header."""
    if digest is None:
        return None
    scheme, _, presented = (header or "").strip().partition(" ")
    if not header or scheme.lower() != "bearer" or not presented.strip():
        return "missing API key: send the header 'Authorization: Bearer <key>' (the server's key file or $LGA_API_KEY)"
    if not hmac.compare_digest(key_digest(presented.strip()), digest):
        return "wrong API key: send the key the server was started with in 'Authorization: Bearer <key>'"
    return None
