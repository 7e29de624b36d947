"""SPIFFE IDs (``spiffe://<trust domain>/<path>``), validated the strict way.

The rules are those of the SPIFFE ID specification: lowercase ``spiffe`` scheme; a trust
domain of lowercase letters, digits, ``.``, ``-`` and ``_`` (no port, no user info); a path
of non-empty segments of letters, digits, ``.``, ``-`` and ``_`` that are not ``.`` or
``..``; no trailing slash, query, fragment or percent-encoding; 2048 bytes at most.
Anything else is refused rather than normalised: an identity is compared as a string, so
two spellings of one ID must not exist.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "SERVICE_PREFIX",
    "parse_spiffe_id",
    "service_of",
    "spiffe_id",
    "validate_service",
    "validate_trust_domain",
]

SCHEME_PREFIX: Final = "spiffe://"
SERVICE_PREFIX: Final = "/svc/"
MAX_ID_BYTES: Final = 2048
MAX_TRUST_DOMAIN: Final = 255

_TRUST_DOMAIN: Final = re.compile(r"[a-z0-9._-]+")
_SEGMENT: Final = re.compile(r"[a-zA-Z0-9._-]+")


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a valid SPIFFE trust domain name, else ValueError."""
    if not trust_domain or len(trust_domain) > MAX_TRUST_DOMAIN:
        raise ValueError(f"trust domain {trust_domain!r}: 1 to {MAX_TRUST_DOMAIN} characters")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(
            f"trust domain {trust_domain!r}: use lowercase letters, digits, '.', '-' and '_'"
        )
    return trust_domain


def _validate_segment(segment: str, what: str) -> str:
    if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
        raise ValueError(
            f"{what} {segment!r}: use letters, digits, '.', '-' and '_' (not '.' or '..')"
        )
    return segment


def validate_service(service: str) -> str:
    """Return ``service`` if it can be the last segment of a SPIFFE ID, else ValueError."""
    return _validate_segment(service, "service name")


def spiffe_id(trust_domain: str, service: str) -> str:
    """``spiffe://<trust_domain>/svc/<service>``: the identity of a mesh service."""
    validate_trust_domain(trust_domain)
    validate_service(service)
    return f"{SCHEME_PREFIX}{trust_domain}{SERVICE_PREFIX}{service}"


def parse_spiffe_id(uri: str) -> tuple[str, str]:
    """``(trust domain, path)`` of a SPIFFE ID; the path is ``""`` or starts with ``/``.

    Raises ValueError naming what is wrong; see the module docstring for the rules."""
    if not isinstance(uri, str):
        raise ValueError(f"not a SPIFFE ID: {uri!r}")
    if len(uri.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise ValueError(f"SPIFFE ID longer than {MAX_ID_BYTES} bytes")
    if not uri.startswith(SCHEME_PREFIX):
        raise ValueError(f"{uri!r}: a SPIFFE ID starts with 'spiffe://'")
    rest = uri[len(SCHEME_PREFIX) :]
    slash = rest.find("/")
    trust_domain, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    if not trust_domain:
        raise ValueError(f"{uri!r}: no trust domain")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(
            f"{uri!r}: the trust domain may only hold lowercase letters, digits, '.', '-', '_'"
            " (no port, user info, query or fragment)"
        )
    if len(trust_domain) > MAX_TRUST_DOMAIN:
        raise ValueError(f"{uri!r}: trust domain longer than {MAX_TRUST_DOMAIN} characters")
    if path:
        if path.endswith("/"):
            raise ValueError(f"{uri!r}: the path must not end with '/'")
        for segment in path[1:].split("/"):
            if not segment:
                raise ValueError(f"{uri!r}: empty path segment")
            if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
                raise ValueError(
                    f"{uri!r}: path segment {segment!r} may only hold letters, digits, '.', "
                    "'-', '_' and may not be '.' or '..' (no query, fragment or %-encoding)"
                )
    return trust_domain, path


def service_of(uri: str, trust_domain: str) -> str | None:
    """The service name of a ``spiffe://<trust_domain>/svc/<name>`` ID, else None (another
    trust domain, another path shape, or not a valid SPIFFE ID)."""
    try:
        domain, path = parse_spiffe_id(uri)
    except ValueError:
        return None
    if domain != trust_domain or not path.startswith(SERVICE_PREFIX):
        return None
    name = path[len(SERVICE_PREFIX) :]
    if "/" in name:
        return None
    return name
