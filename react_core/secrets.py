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
# sas_token, client_secret; http: password).
_SECRET_NAME = re.compile(r"(^|_)(key|secret|token|password|passwd|credentials?)$|access_key|secret_key|sas_token",
                          re.IGNORECASE)  # fmt: skip


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and name not in {"profile", "cache_key"}


def protect(options: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """``options`` with every credential-named string value (at any depth) wrapped in ``SecretStr``."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, Mapping):
            out[k] = protect(v, f"{path}{k}.")
        elif is_secret_name(str(k)) and isinstance(v, str):
            out[k] = SecretStr(v)
        else:
            out[k] = v
    return out


def reveal(options: Mapping[str, Any], path: str = "storage.options.") -> dict[str, Any]:
    """The plain options a filesystem needs. A masked value (the config came through a JSON dump, e.g. Prefect
    parameters) is dropped so the standard credential chain applies, with one warning naming the field."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        value = v.get_secret_value() if isinstance(v, SecretStr) else v
        if isinstance(value, Mapping):
            out[k] = reveal(value, f"{path}{k}.")
        elif value == MASK:
            _logger.warning(
                "%s%s arrived redacted (secrets are never sent in parameters or files); using the environment's "
                "credentials instead (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, an AWS profile or an instance role)",
                path, k,
            )  # fmt: skip
        else:
            out[k] = value
    return out


def public(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options without their credentials (what may be written to a file or printed)."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, Mapping):
            out[k] = public(v)
        elif not (isinstance(v, SecretStr) or is_secret_name(str(k))):
            out[k] = v
    return out


def secret_values(options: Mapping[str, Any]) -> list[str]:
    """Every credential value in ``options`` (for scrubbing text that may echo them)."""
    found: list[str] = []
    for k, v in options.items():
        if isinstance(v, Mapping):
            found += secret_values(v)
        elif isinstance(v, SecretStr):
            found.append(v.get_secret_value())
        elif is_secret_name(str(k)) and isinstance(v, str):
            found.append(v)
    return [s for s in found if s and s != MASK]


def scrub(text: str, options: Mapping[str, Any]) -> str:
    """``text`` with every credential value of ``options`` replaced by the mask."""
    for s in secret_values(options):
        text = text.replace(s, MASK)
    return text
