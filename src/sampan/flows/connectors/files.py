"""files: pick up files dropped in a directory; write each message as a file.

Source: a file is taken only once its size and modification time have not changed between
two polls (a writer still appending is left alone) and its name does not start with '.'
(the convention for "being written, renamed when complete"). The content is emitted; only
then is the file moved to the ``done`` directory (or deleted). The dedupe key names the path,
size and mtime, so a crash between the emit and the move does not emit the file twice. A file
larger than ``max_bytes`` is moved to the ``error`` directory next to a ``.reason`` file and
logged, never dropped silently.

Sink: each message is written to a temporary file, fsynced, renamed to its final name and
the directory fsynced, so a reader sees a complete file or none, and a crash never leaves
half a file under the final name.
"""

from __future__ import annotations

import asyncio
import errno
import fnmatch
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sampan.bus.base import OutgoingMessage
from sampan.flows.connectors._support import Backoff, cancel_task, log, resolve, wait_or_stop
from sampan.flows.endpoint import Emit, EndpointContext, EndpointKind, Sink, Source
from sampan.flows.expressions import BraceTemplate, brace_renderer
from sampan.flows.message import FlowMessage
from sampan.units import ByteSize, Duration

HEADER_FILE_NAME: Final = "flow-file-name"
HEADER_FILE_SIZE: Final = "flow-file-size"
HEADER_FILE_MTIME: Final = "flow-file-mtime"
MAX_NAME_BYTES: Final = 255


class FileNameError(ValueError):
    """A file name (from a template) would leave the directory or is not a plain name."""


def check_file_name(name: str) -> str:
    """``name`` if it is one plain path component; raises `FileNameError` otherwise.

    Refused: empty, '.', '..', anything with '/', '\\\\' or NUL, names starting with '.'
    (reserved for temporary files, which the files source also skips) and names over 255
    bytes."""
    if not name:
        raise FileNameError("the file name is empty")
    for bad, why in (("/", "a '/'"), ("\\", "a '\\'"), ("\0", "a NUL character")):
        if bad in name:
            raise FileNameError(
                f"file name {name!r} contains {why}: names must stay inside the directory"
            )
    if name.startswith("."):
        raise FileNameError(
            f"file name {name!r} starts with '.': such names are reserved for temporary files "
            "(and '..' would leave the directory)"
        )
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise FileNameError(f"file name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    return name


# --------------------------------------------------------------------------------- source


class FilesSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: str = Field(description="Directory to watch (relative to the config file's directory).")
    pattern: str = Field("*", description="Glob the file names must match, e.g. `*.json`.")
    poll: Duration = Field(
        1.0,
        gt=0,
        description="How often the directory is listed. A file is taken once its size and "
        "mtime are unchanged over one poll.",
    )
    done: str | None = Field(
        None,
        description="Directory emitted files are moved to (relative to the config file's "
        "directory; default `<files>/.done`). Keep it on the same file system: the move is "
        "then an atomic rename.",
    )
    delete: bool = Field(
        False, description="Delete emitted files instead of moving them to `done`."
    )
    error: str | None = Field(
        None,
        description="Directory refused files (too large, unreadable) are moved to, each next "
        "to a `<name>.reason` file (relative to the config file's directory; default "
        "`<files>/.error`).",
    )
    max_bytes: ByteSize = Field(
        8 * 1024 * 1024, gt=0, description="Largest file emitted; larger ones go to `error`."
    )
    batch: int = Field(100, ge=1, le=10_000, description="Most files emitted in one publish.")

    @field_validator("pattern")
    @classmethod
    def _plain_pattern(cls, value: str) -> str:
        if "/" in value or "\\" in value or not value:
            raise ValueError("the pattern matches file names: it cannot be empty or hold '/'")
        return value

    @model_validator(mode="after")
    def _done_or_delete(self) -> FilesSourceConfig:
        if self.delete and self.done is not None:
            raise ValueError("give either `done` (move emitted files) or `delete: true`, not both")
        return self


@dataclass(frozen=True, slots=True)
class _Seen:
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class _Picked:
    path: Path
    size: int
    mtime_ns: int
    content: bytes | None
    """None when the file was refused (``reason`` says why)."""
    reason: str = ""


class FilesSource(Source):
    def __init__(self, config: FilesSourceConfig, ctx: EndpointContext) -> None:
        self._config = config
        self._ctx = ctx
        self._dir = resolve(ctx.base_dir, config.files)
        self._done: Path | None = None
        if not config.delete:
            self._done = resolve(ctx.base_dir, config.done) if config.done else self._dir / ".done"
        self._error_dir = (
            resolve(ctx.base_dir, config.error) if config.error else self._dir / ".error"
        )
        self._seen: dict[str, _Seen] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        labels = {"flow": ctx.flow}
        self._emitted = ctx.metrics.counter(
            "sampan_flow_files_emitted", "Files emitted by files sources.", **labels
        )
        self._refused = ctx.metrics.counter(
            "sampan_flow_files_refused", "Files moved to the error directory.", **labels
        )

    @property
    def directory(self) -> Path:
        return self._dir

    async def start(self, emit: Emit) -> None:
        await asyncio.to_thread(self._prepare)
        self._stop.clear()
        self._task = asyncio.create_task(self._run(emit), name=f"files:{self._ctx.flow}")

    def _prepare(self) -> None:
        if not self._dir.is_dir():
            raise FileNotFoundError(
                f"files source of flow {self._ctx.flow!r}: {self._dir} is not a directory"
            )
        for extra in (self._done, self._error_dir):
            if extra is not None:
                extra.mkdir(parents=True, exist_ok=True)

    async def stop(self) -> None:
        self._stop.set()
        await cancel_task(self._task)
        self._task = None

    async def _run(self, emit: Emit) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                more = await self.poll_once(emit)
            except Exception as exc:
                log.error("files source of flow %r: %s (will retry)", self._ctx.flow, exc)
                await backoff.wait(self._stop)
                continue
            backoff.reset()
            if not more and await wait_or_stop(self._stop, self._config.poll):
                return

    async def poll_once(self, emit: Emit) -> bool:
        """One poll: emit the stable files, then move them away. True when more stable files
        are waiting than one batch took. Raises when the emit fails (files stay)."""
        picked, more = await asyncio.to_thread(self._scan)
        refused = [p for p in picked if p.content is None]
        accepted = [p for p in picked if p.content is not None]
        for item in refused:
            await asyncio.to_thread(self._refuse, item)
        if not accepted:
            return more
        messages = [self._message(p) for p in accepted]
        await emit(messages)
        self._emitted.inc(len(accepted))
        for item in accepted:
            await asyncio.to_thread(self._finish, item)
        return more

    def _message(self, item: _Picked) -> OutgoingMessage:
        assert item.content is not None
        name = item.path.name
        return OutgoingMessage(
            item.content,
            headers={
                HEADER_FILE_NAME: name,
                HEADER_FILE_SIZE: str(item.size),
                HEADER_FILE_MTIME: str(item.mtime_ns),
            },
            dedupe_key=f"file:{item.path}:{item.size}:{item.mtime_ns}",
        )

    def _scan(self) -> tuple[list[_Picked], bool]:
        pattern = self._config.pattern
        current: dict[str, _Seen] = {}
        stable: list[tuple[str, _Seen]] = []
        with os.scandir(self._dir) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or not fnmatch.fnmatchcase(name, pattern):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                seen = _Seen(st.st_size, st.st_mtime_ns)
                current[name] = seen
                if self._seen.get(name) == seen:
                    stable.append((name, seen))
        self._seen = current
        stable.sort(key=lambda item: (item[1].mtime_ns, item[0]))  # oldest first
        batch = stable[: self._config.batch]
        picked = [self._read(name, seen) for name, seen in batch]
        return [p for p in picked if p is not None], len(stable) > len(batch)

    def _read(self, name: str, seen: _Seen) -> _Picked | None:
        path = self._dir / name
        if seen.size > self._config.max_bytes:
            return _Picked(
                path,
                seen.size,
                seen.mtime_ns,
                None,
                f"{seen.size} bytes is more than max_bytes ({self._config.max_bytes})",
            )
        try:
            with open(path, "rb") as handle:
                content = handle.read(self._config.max_bytes + 1)
                st = os.fstat(handle.fileno())
        except FileNotFoundError:
            return None  # taken by another node meanwhile
        except OSError as exc:
            return _Picked(path, seen.size, seen.mtime_ns, None, f"cannot read: {exc}")
        if st.st_size != seen.size or st.st_mtime_ns != seen.mtime_ns or len(content) != seen.size:
            self._seen.pop(name, None)  # changed after all: wait for two more quiet polls
            return None
        return _Picked(path, seen.size, seen.mtime_ns, content)

    def _finish(self, item: _Picked) -> None:
        self._seen.pop(item.path.name, None)
        try:
            if self._done is None:
                item.path.unlink()
            else:
                _move(item.path, _free_name(self._done, item.path.name))
        except FileNotFoundError:
            pass  # another node finished it; its emit had the same dedupe key
        except OSError as exc:
            # Emitted but still here: the next poll emits it again and the dedupe key makes
            # that a no-op, so this only logs.
            log.error(
                "files source of flow %r: emitted %s but could not move it: %s",
                self._ctx.flow,
                item.path,
                exc,
            )

    def _refuse(self, item: _Picked) -> None:
        self._seen.pop(item.path.name, None)
        target = _free_name(self._error_dir, item.path.name)
        try:
            _move(item.path, target)
            _write_atomic(target.with_name(target.name + ".reason"), (item.reason + "\n").encode())
        except FileNotFoundError:
            return
        self._refused.inc()
        log.error(
            "files source of flow %r: %s refused (%s); moved to %s",
            self._ctx.flow,
            item.path,
            item.reason,
            target,
        )


def _free_name(directory: Path, name: str) -> Path:
    """``directory/name``, or ``name`` with a time suffix when that is taken."""
    target = directory / name
    if not target.exists():
        return target
    return directory / f"{name}.{time.time_ns()}"


def _move(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(source, target)  # another file system: copy then delete


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` so ``target`` is either absent/old or complete, also after a crash."""
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


# ----------------------------------------------------------------------------------- sink


def _check_name_template(value: str | None) -> str | None:
    if value is None:
        return None
    literal = "".join(part for i, part in enumerate(_split_braces(value)) if i % 2 == 0)
    if "/" in literal or "\\" in literal or "\0" in literal:
        raise ValueError(
            f"name template {value!r} contains a path separator: it names a file inside the "
            "directory; put sub-directories in `files`"
        )
    if value.startswith("."):
        raise ValueError(f"name template {value!r} starts with '.' (reserved for temp files)")
    return value


def _split_braces(text: str) -> list[str]:
    """Literal and placeholder parts alternating: ``a{b}c`` → ``['a', 'b', 'c']``."""
    parts: list[str] = []
    rest = text
    while True:
        start = rest.find("{")
        end = rest.find("}", start + 1) if start >= 0 else -1
        if start < 0 or end < 0:
            parts.append(rest)
            return parts
        parts.extend((rest[:start], rest[start + 1 : end]))
        rest = rest[end + 1 :]


class FilesSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: str = Field(
        description="Directory the files are written to (relative to the config file's "
        "directory); created if missing."
    )
    name: BraceTemplate | None = Field(
        None,
        description='File name template, e.g. `{key}-{headers."flow-id"}.json`. Must '
        "produce one plain name (no '/', no leading '.'). Default: a random UUID. A name that "
        "exists is replaced, so a retried message rewrites the same file.",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        return _check_name_template(value)


class FilesSink(Sink):
    def __init__(self, config: FilesSinkConfig, ctx: EndpointContext) -> None:
        self._dir = resolve(ctx.base_dir, config.files)
        self._name: Callable[[FlowMessage], str] = (
            brace_renderer(config.name) if config.name is not None else _random_name
        )

    @property
    def directory(self) -> Path:
        return self._dir

    async def start(self) -> None:
        await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)

    async def send(self, message: FlowMessage) -> None:
        name = check_file_name(self._name(message))
        await asyncio.to_thread(_write_atomic, self._dir / name, message.body())


def _random_name(_message: FlowMessage) -> str:
    return str(uuid.uuid4())


def _build_source(config: FilesSourceConfig, ctx: EndpointContext) -> Source:
    return FilesSource(config, ctx)


def _build_sink(config: FilesSinkConfig, ctx: EndpointContext) -> Sink:
    return FilesSink(config, ctx)


SOURCE: EndpointKind[FilesSourceConfig, Source] = EndpointKind(
    key="files",
    config=FilesSourceConfig,
    build=_build_source,
    summary="Emits complete files dropped in a directory, then moves them to done.",
)

SINK: EndpointKind[FilesSinkConfig, Sink] = EndpointKind(
    key="files",
    config=FilesSinkConfig,
    build=_build_sink,
    summary="Writes each message as a file, atomically (temp, fsync, rename, fsync dir).",
)
