"""Credentials in storage options: held as pydantic ``SecretStr`` from the moment a config is read, revealed only
where a filesystem is built, never written.

``SecretStr`` serialises as ``**********`` in every JSON dump (``react config show``, Prefect flow-run
parameters, MLflow params, stage manifests, job files), so a secret cannot reach any of them by accident. The
cost: a config that went through one of those (a deployment run's parameters arrive at the worker from the
Prefect API) carries the mask, not the secret. The mask is then dropped with a warning, and the filesystem falls
back to the standard credential chain (environment, AWS profile, instance role), which is where a worker's
credentials belong.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

_logger = logging.getLogger(__name__)

MASK = "**********"  # what pydantic writes for a SecretStr

# Option names that hold credentials in fsspec backends (s3fs: key, secret, token; botocore client kwargs:
# aws_access_key_id, aws_secret_access_key, aws_session_token; gcsfs: token; adlfs: account_key,
# sas_token, client_secret; http and s3fs: username, password), and the usual spellings of the rest (pwd, pass, api_key_value,
# apiKey, auth, private_key): a name any of whose words (split at _, - and camelCase) is one of these.
_SECRET_WORDS = {
    "key",
    "keys",
    "secret",
    "secrets",
    "token",
    "tokens",
    "password",
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "username",
    "credential",
    "credentials",
    "apikey",
    "auth",
    "authorization",
    "sas",
    "signature",
}
_NOT_SECRET = {"profile", "cache_key", "key_prefix"}
# A URL with a password in it (scheme://user:password@host): a credential whatever the option is called.
URL_PASSWORD = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@\s:]*:[^/?#@\s]+@")


def mask_urls(text: str) -> str:
    """``text`` with the user and password of every URL in it replaced (``http://***@host``)."""
    return URL_PASSWORD.sub(lambda m: m.group(0).split("://", 1)[0] + "://***@", text)


def is_secret_name(name: str) -> bool:
    if name.lower() in _NOT_SECRET:
        return False
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower().replace("-", "_").split("_")
    return any(w in _SECRET_WORDS for w in words)


def _protect_value(v: Any, secret: bool) -> Any:
    if isinstance(v, Mapping):
        return protect(v)
    if isinstance(v, list | tuple):
        return [_protect_value(x, secret) for x in v]
    if isinstance(v, SecretStr) or v is None or isinstance(v, bool):
        return v
    if secret and isinstance(v, str | int | float):  # a numeric password is still a password
        return SecretStr(str(v))
    if isinstance(v, str) and URL_PASSWORD.search(v):
        return SecretStr(v)
    return v


def protect(options: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """``options`` with every credential (at any depth, in lists too) wrapped in ``SecretStr``: a value of any
    scalar type under a credential-like name (:func:`is_secret_name`), and any string holding a URL with a
    password."""
    return {k: _protect_value(v, is_secret_name(str(k))) for k, v in options.items()}


def reveal(options: Mapping[str, Any], path: str = "storage.options.") -> dict[str, Any]:
    """The plain options a filesystem needs. A masked value (the config came through a JSON dump, e.g. Prefect
    parameters) is dropped so the standard credential chain applies, with one warning naming the field."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        value = v.get_secret_value() if isinstance(v, SecretStr) else v
        if isinstance(value, Mapping):
            out[k] = reveal(value, f"{path}{k}.")
        elif isinstance(value, list | tuple):
            items = [reveal({str(i): x}, f"{path}{k}.")[str(i)] for i, x in enumerate(value) if x != MASK]
            out[k] = items
            if len(items) < len(value):
                _logger.warning(
                    "%s%s arrived with redacted items, dropped; using the environment's credentials", path, k
                )
        elif value == MASK:
            _logger.warning(
                "%s%s arrived redacted (secrets are never sent in parameters or files); using the environment's "
                "credentials instead (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, an AWS profile or an instance role)",
                path,
                k,
            )
        else:
            out[k] = value
    return out


def public(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options without their credentials (what may be written to a file or printed)."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, Mapping):
            out[k] = public(v)
        elif isinstance(v, list | tuple) and not is_secret_name(str(k)):
            out[k] = [public({"_": x})["_"] for x in v if "_" in public({"_": x})]
        elif not (isinstance(v, SecretStr) or is_secret_name(str(k))):
            out[k] = v
    return out


def secret_values(options: Mapping[str, Any]) -> list[str]:
    """Every credential value in ``options`` (for scrubbing text that may echo them)."""
    found: list[str] = []
    for k, v in options.items():
        if isinstance(v, Mapping):
            found += secret_values(v)
        elif isinstance(v, list | tuple):
            for x in v:
                found += secret_values({k: x})
        elif isinstance(v, SecretStr):
            found.append(v.get_secret_value())
            if m := URL_PASSWORD.search(v.get_secret_value()):  # the password alone may be echoed too
                found.append(m.group(0).rsplit(":", 1)[1][:-1])
        elif is_secret_name(str(k)) and isinstance(v, str | int | float) and not isinstance(v, bool):
            found.append(str(v))
    return [s for s in found if s and s != MASK]


def scrub(text: str, options: Mapping[str, Any]) -> str:
    """``text`` with every credential value of ``options`` replaced by the mask."""
    for s in secret_values(options):
        text = text.replace(s, MASK)
    return text
