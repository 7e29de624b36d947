"""Load user code named in config as ``package.module:function``."""

from __future__ import annotations

import importlib
from typing import Any


class TargetError(Exception):
    """The dotted path does not name a callable."""


def load_target(dotted: str) -> Any:
    module_name, sep, attribute = dotted.partition(":")
    if not sep or not module_name or not attribute:
        raise TargetError(f"{dotted!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetError(f"{dotted!r}: cannot import {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise TargetError(f"{dotted!r}: {module_name!r} has no attribute {part!r}") from None
    if not callable(target):
        raise TargetError(f"{dotted!r} is not callable")
    return target
