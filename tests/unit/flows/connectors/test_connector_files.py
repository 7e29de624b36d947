from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sampan.flows.connectors import files
from sampan.flows.connectors.files import (
    HEADER_FILE_NAME,
    FileNameError,
    FilesSink,
    FilesSinkConfig,
    FilesSource,
    FilesSourceConfig,
    check_file_name,
)
from sampan.flows.message import FlowMessage


def source(ctx, **options: object) -> FilesSource:
    config = FilesSourceConfig.model_validate({"files": "in", "poll": "50ms", **options})
    built = files.SOURCE.build(config, ctx)
    assert isinstance(built, FilesSource)
    return built


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    return tmp_path / "in"


async def prepared(ctx, **options: object) -> FilesSource:
    src = source(ctx, **options)
    await asyncio.to_thread(src._prepare)
    return src


async def test_stable_files_emitted_then_moved(ctx, emitter, inbox: Path) -> None:
    (inbox / "a.json").write_bytes(b'{"a": 1}')
    (inbox / "b.txt").write_bytes(b"skip: pattern")
    (inbox / ".c.json").write_bytes(b"skip: being written")
    src = await prepared(ctx, pattern="*.json")
    await src.poll_once(emitter)
    assert emitter.calls == 0  # seen once: not yet known to be complete
    await src.poll_once(emitter)
    published = await emitter.published()
    assert [orjson.loads(d.value) for d in published] == [{"a": 1}]
    (sent,) = emitter.messages
    assert sent.headers is not None and sent.headers[HEADER_FILE_NAME] == "a.json"
    assert sent.dedupe_key is not None and str(inbox / "a.json") in sent.dedupe_key
    assert not (inbox / "a.json").exists()
    assert (inbox / ".done" / "a.json").read_bytes() == b'{"a": 1}'
    assert (inbox / "b.txt").exists() and (inbox / ".c.json").exists()


async def test_growing_file_waits(ctx, emitter, inbox: Path) -> None:
    path = inbox / "big.csv"
    path.write_bytes(b"1\n")
    src = await prepared(ctx)
    await src.poll_once(emitter)
    path.write_bytes(b"1\n2\n")  # still growing
    await src.poll_once(emitter)
    assert emitter.calls == 0
    await src.poll_once(emitter)
    assert [d.value for d in await emitter.published()] == [b"1\n2\n"]


async def test_failed_emit_leaves_the_file(ctx, emitter, inbox: Path) -> None:
    (inbox / "x").write_bytes(b"x")
    src = await prepared(ctx)
    await src.poll_once(emitter)
    emitter.fail = 1
    with pytest.raises(RuntimeError):
        await src.poll_once(emitter)
    assert (inbox / "x").exists()
    assert await emitter.published() == []
    await src.poll_once(emitter)
    assert len(await emitter.published()) == 1
    assert not (inbox / "x").exists()


async def test_crash_between_emit_and_move_does_not_duplicate(ctx, emitter, inbox: Path) -> None:
    (inbox / "x").write_bytes(b"x")
    src = await prepared(ctx)
    await src.poll_once(emitter)
    emitter.fail, emitter.after = 1, True  # published, then "crashed" before the move
    with pytest.raises(RuntimeError):
        await src.poll_once(emitter)
    assert (inbox / "x").exists()
    restarted = await prepared(ctx)
    await restarted.poll_once(emitter)
    await restarted.poll_once(emitter)
    assert len(await emitter.published()) == 1
    assert emitter.calls == 2
    assert not (inbox / "x").exists()


async def test_delete_and_done_collisions(ctx, emitter, inbox: Path, tmp_path: Path) -> None:
    src = await prepared(ctx, delete=True)
    (inbox / "d").write_bytes(b"1")
    await src.poll_once(emitter)
    await src.poll_once(emitter)
    assert not (inbox / "d").exists() and not (inbox / ".done").exists()

    done = await prepared(ctx, done="archive")
    for content in (b"first", b"second"):
        (inbox / "same").write_bytes(content)
        os.utime(inbox / "same", ns=(1, len(content)))
        await done.poll_once(emitter)
        await done.poll_once(emitter)
    archived = sorted(p.read_bytes() for p in (tmp_path / "archive").iterdir())
    assert archived == [b"first", b"second"]


async def test_too_large_goes_to_error_with_reason(ctx, emitter, inbox: Path) -> None:
    (inbox / "huge.bin").write_bytes(b"x" * 2048)
    (inbox / "ok.bin").write_bytes(b"x")
    src = await prepared(ctx, max_bytes="1KiB")
    await src.poll_once(emitter)
    await src.poll_once(emitter)
    assert [d.value for d in await emitter.published()] == [b"x"]
    assert (inbox / ".error" / "huge.bin").stat().st_size == 2048
    reason = (inbox / ".error" / "huge.bin.reason").read_text()
    assert "2048 bytes" in reason and "max_bytes" in reason
    assert not (inbox / "huge.bin").exists()
    metrics = ctx.metrics.render().decode()
    assert 'sampan_flow_files_refused_total{flow="f1"} 1' in metrics


async def test_running_source_picks_up_files(ctx, emitter, inbox: Path) -> None:
    src = source(ctx)
    await src.start(emitter)
    try:
        for i in range(5):
            (inbox / f"m{i}").write_bytes(b"%d" % i)
        for _ in range(200):
            await asyncio.sleep(0.05)
            moved = not [n for n in os.listdir(inbox) if n.startswith("m")]
            if len(await emitter.published()) == 5 and moved:
                break
    finally:
        await src.stop()
    assert sorted(d.value for d in await emitter.published()) == [b"0", b"1", b"2", b"3", b"4"]
    assert [n for n in os.listdir(inbox) if n.startswith("m")] == []


async def test_missing_directory_fails_start(ctx, emitter) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        await source(ctx, files="nope").start(emitter)


def test_source_config_errors() -> None:
    with pytest.raises(ValidationError, match="not both"):
        FilesSourceConfig.model_validate({"files": "in", "delete": True, "done": "d"})
    with pytest.raises(ValidationError):
        FilesSourceConfig.model_validate({"files": "in", "pattern": "a/*.json"})
    with pytest.raises(ValidationError):
        FilesSourceConfig.model_validate({"files": "in", "poll": 0})


# --------------------------------------------------------------------------------- sink


def sink(ctx, **options: object) -> FilesSink:
    config = FilesSinkConfig.model_validate({"files": "out", **options})
    built = files.SINK.build(config, ctx)
    assert isinstance(built, FilesSink)
    return built


async def test_sink_writes_named_files_atomically(ctx, tmp_path: Path) -> None:
    out = sink(ctx, name='{key}-{headers."sampan-id"}.json')
    await out.start()
    message = FlowMessage({"n": 1}, headers={"sampan-id": "42"}, key="order")
    await out.send(message)
    await out.send(message)  # a retry rewrites the same file
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["order-42.json"]
    assert orjson.loads((tmp_path / "out" / "order-42.json").read_bytes()) == {"n": 1}


async def test_sink_default_name_is_a_uuid(ctx, tmp_path: Path) -> None:
    out = sink(ctx)
    await out.start()
    await out.send(FlowMessage(raw=b"a"))
    await out.send(FlowMessage(raw=b"b"))
    names = [p.name for p in (tmp_path / "out").iterdir()]
    assert len(names) == 2 and all(len(n) == 36 for n in names)


@pytest.mark.parametrize("key", ["..", "../etc/passwd", "a/b", "/abs", ".hidden", "", "a\\b"])
async def test_sink_refuses_escaping_names(ctx, tmp_path: Path, key: str) -> None:
    out = sink(ctx, name="{key}")
    await out.start()
    with pytest.raises(FileNameError):
        await out.send(FlowMessage(raw=b"x", key=key))
    assert list((tmp_path / "out").iterdir()) == []


async def test_sink_null_placeholder_is_an_error(ctx) -> None:
    out = sink(ctx, name="{data.missing}")
    await out.start()
    with pytest.raises(ValueError, match="null"):
        await out.send(FlowMessage({"a": 1}))


@pytest.mark.parametrize("name", ["dir/{key}", "../{key}", ".{key}", "{key}\\x", "{data.a"])
def test_sink_template_checked_at_load(name: str) -> None:
    with pytest.raises(ValidationError):
        FilesSinkConfig.model_validate({"files": "out", "name": name})


@given(st.text(max_size=300))
def test_accepted_names_stay_in_the_directory(name: str) -> None:
    base = Path("/srv/out")
    try:
        checked = check_file_name(name)
    except FileNameError:
        return
    target = base / checked
    assert target.parent == base
    assert target.name == checked
    assert not checked.startswith(".")
    assert len(checked.encode("utf-8", "surrogatepass")) <= 255


@given(st.lists(st.sampled_from(["a", "..", ".", "/", "\\", "b", "\0", "é"]), max_size=12))
def test_names_built_from_path_pieces(pieces: list[str]) -> None:
    name = "".join(pieces)
    try:
        check_file_name(name)
    except FileNameError:
        assert not name or name.startswith(".") or any(c in name for c in "/\\\0")
    else:
        assert (Path("/srv/out") / name).resolve().parent == Path("/srv/out")
