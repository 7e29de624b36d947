"""The error a plugin entry's bad config raises, located within the plugin's ``config``."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from pydantic import BaseModel, ValidationError

KeyPath = tuple[Hashable, ...]


def format_key_path(path: KeyPath) -> str:
    """``("headers", "add", 0)`` → ``headers.add[0]`` (the config loader's notation)."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and part and all(c.isalnum() or c in "_-" for c in part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


class PluginConfigError(ValueError):
    """A plugin entry's name or config is wrong.

    ``errors`` holds ``(key path within the entry's config, message)`` pairs, the path in the
    loader's notation (``allow[2]``, ``headers.add``; ``""`` = the config as a whole).
    ``locs`` holds the same paths as tuples, and ``validation_error``/``model`` the pydantic
    error and the options model when the error came from validation, so the loader can reuse
    its own message wording. ``scope``/``index`` say which entry failed when
    ``build_chain`` raised it (``"global"`` or ``"route"`` and the position in that list).
    """

    def __init__(
        self,
        name: str,
        errors: Sequence[tuple[str, str]],
        *,
        locs: Sequence[KeyPath] | None = None,
        validation_error: ValidationError | None = None,
        model: type[BaseModel] | None = None,
    ) -> None:
        self.name = name
        self.errors: list[tuple[str, str]] = list(errors)
        self.locs: list[KeyPath] = list(locs) if locs is not None else [() for _ in self.errors]
        self.validation_error = validation_error
        self.model = model
        self.scope: str | None = None
        self.index: int | None = None
        lines = "; ".join(f"{path}: {msg}" if path else msg for path, msg in self.errors)
        super().__init__(f"plugin {name!r}: {lines}")
