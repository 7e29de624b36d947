"""Small annotated types shared by every config model: names and import paths.

They live apart from `sampan.config` so that layer configs (flows, gateway) can use them
without importing the whole top-level schema.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from sampan.units import describe_value

NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
_DOTTED: Final = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
IMPORT_PATH_PATTERN: Final = rf"^{_DOTTED}:{_DOTTED}$"
_NAME_RE: Final = re.compile(NAME_PATTERN)
_IMPORT_PATH_RE: Final = re.compile(IMPORT_PATH_PATTERN)


def check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise PydanticCustomError(
            "name_pattern",
            "must be 1-200 letters, digits, '.', '_' or '-', starting with a letter or digit,"
            " got {value}",
            {"value": describe_value(value)},
        )
    return value


def _check_import_path(value: str) -> str:
    if not _IMPORT_PATH_RE.fullmatch(value):
        raise PydanticCustomError(
            "import_path",
            "must be an import path like 'package.module:function', got {value}",
            {"value": describe_value(value)},
        )
    return value


Name = Annotated[
    str, AfterValidator(check_name), WithJsonSchema({"type": "string", "pattern": NAME_PATTERN})
]
"""A topic or group name: safe in file names, subjects (NATS) and stream keys (Redis)."""

ImportPath = Annotated[
    str,
    AfterValidator(_check_import_path),
    WithJsonSchema({"type": "string", "pattern": IMPORT_PATH_PATTERN}),
]
"""``package.module:attribute``: where user code is imported from."""
