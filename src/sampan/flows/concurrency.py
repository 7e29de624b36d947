"""Running branches side by side without leaving any of them behind."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def gather_all(awaitables: list[Awaitable[T]]) -> list[T]:
    """Every result, or the first failure once every branch has finished: no branch keeps
    running behind a message that has already failed."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    values: list[T] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        values.append(result)
    return values
