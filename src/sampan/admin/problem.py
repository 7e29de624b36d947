"""RFC 9457 problem details for the admin API, so every error a client sees has one shape."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

PROBLEM_JSON = "application/problem+json"


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type: str = "about:blank",
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    """Build an ``application/problem+json`` response.

    ``title`` defaults to the status phrase, which RFC 9457 asks for when ``type`` is
    ``about:blank``. ``extensions`` become extra members (e.g. ``errors=[...]``).
    """
    if title is None:
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
    body: dict[str, Any] = {"type": type, "title": title, "status": status, "detail": detail}
    if instance is not None:
        body["instance"] = instance
    for key, value in extensions.items():
        if key in body:
            raise ValueError(f"problem extension {key!r} would overwrite a standard member")
        body[key] = value
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)
