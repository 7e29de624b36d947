"""Property tests: both modes round-trip every valid event; decoders fail only with InvalidEvent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sampan.event import (
    CloudEvent,
    InvalidEvent,
    from_bus_message,
    from_http,
    from_http_binary,
    from_json,
    to_bus_message,
    to_http_binary,
    to_json,
)

RESERVED = {
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "traceparent",
    "partitionkey",
    "residency",
    "classification",
}

# CloudEvents String: no control characters, surrogates or noncharacters (Cn covers them).
attr_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Cn")), min_size=1, max_size=40
)
vietnamese = st.sampled_from(
    ["Đơn hàng mới của Nguyễn Văn Ánh", "Hà Nội", "Thành phố Hồ Chí Minh", "giao hàng 100%"]
)
attr_string = st.one_of(attr_text, vietnamese)
segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=1, max_size=12)
uri_reference = st.one_of(
    st.builds(lambda a, b: f"/{a}/{b}", segment, segment),
    st.builds(lambda host, path: f"https://{host}.example.vn/{path}", segment, segment),
    st.builds(lambda nss: f"urn:sampan:{nss}", segment),
    segment,
)
absolute_uri = st.builds(lambda host, path: f"https://{host}.vn/{path}.json", segment, segment)


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    moment = draw(
        st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1))
    ).replace(tzinfo=UTC)
    offset_minutes = draw(st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59))
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    text = local.isoformat(
        timespec=draw(st.sampled_from(["seconds", "milliseconds", "microseconds"]))
    )
    if offset_minutes == 0 and draw(st.booleans()):
        text = text[:-6] + "Z"
    return text


traceparent = st.builds(
    lambda trace, parent, flags: f"00-{trace:032x}-{parent:016x}-{flags:02x}",
    st.integers(min_value=1, max_value=2**128 - 1),
    st.integers(min_value=1, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=255),
)
residency = st.from_regex(r"[a-z]{2}(-[a-z0-9]{1,6}){0,2}", fullmatch=True)
tag = st.from_regex(r"[a-z0-9]{1,10}(-[a-z0-9]{1,10})?", fullmatch=True)
extension_name = st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).filter(
    lambda n: n not in RESERVED
)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
json_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(json_text, children, max_size=5)
    ),
    max_leaves=20,
)
json_types = st.sampled_from([None, "application/json", "application/vnd.sampan.order+json"])
text_types = st.sampled_from(["text/plain", "text/plain; charset=utf-8", "text/csv", "text/xml"])
binary_types = st.sampled_from(["application/octet-stream", "image/png", "application/pdf"])
nonempty_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1)


@st.composite
def content(draw: st.DrawFn) -> tuple[str | None, Any]:
    """A (datacontenttype, data) pair that every mode carries losslessly."""
    kind = draw(st.sampled_from(["json", "text", "binary", "none"]))
    if kind == "json":
        value = draw(json_value.filter(lambda v: v is not None))
        return draw(json_types), value
    if kind == "text":
        return draw(text_types), draw(nonempty_text | vietnamese)
    if kind == "binary":
        return draw(binary_types), draw(st.binary(min_size=1, max_size=64))
    return draw(st.none() | text_types | json_types), None


@st.composite
def events(draw: st.DrawFn, extension_values: st.SearchStrategy[Any]) -> CloudEvent:
    ctype, data = draw(content())
    optional = st.none
    return CloudEvent(
        id=draw(attr_string),
        source=draw(uri_reference),
        type=draw(attr_string),
        subject=draw(optional() | attr_string),
        time=draw(optional() | rfc3339()),
        datacontenttype=ctype,
        dataschema=draw(optional() | absolute_uri),
        data=data,
        traceparent=draw(optional() | traceparent),
        partitionkey=draw(optional() | attr_string),
        residency=draw(optional() | residency),
        classification=tuple(draw(st.lists(tag, max_size=3))),
        extensions=draw(st.dictionaries(extension_name, extension_values, max_size=4)),
    )


# JSON carries typed extension values; binary mode carries strings only.
json_events = events(st.one_of(attr_string, int32, st.booleans()))
binary_events = events(attr_string)


@given(json_events)
def test_structured_roundtrip(event: CloudEvent) -> None:
    event.validate()
    assert from_json(to_json(event)) == event


@given(binary_events)
def test_binary_roundtrip(event: CloudEvent) -> None:
    headers, body = to_http_binary(event)
    assert all(name == name.lower() and value.isascii() for name, value in headers)
    assert from_http_binary(headers, body) == event
    assert from_http(headers, body) == event


@given(binary_events)
def test_bus_roundtrip(event: CloudEvent) -> None:
    assert from_bus_message(*to_bus_message(event)) == event


@given(binary_events, st.randoms())
def test_binary_header_case_does_not_matter(event: CloudEvent, rnd: Any) -> None:
    headers, body = to_http_binary(event)
    shuffled = [
        ("".join(c.upper() if rnd.random() < 0.5 else c for c in name), value)
        for name, value in headers
    ]
    assert from_http_binary(shuffled, body) == event


def _decodes_or_rejects(raw: bytes | str) -> None:
    try:
        event = from_json(raw)
    except InvalidEvent:
        return
    event.validate()
    assert from_json(to_json(event)) == event


@settings(max_examples=300)
@given(st.binary())
def test_from_json_arbitrary_bytes(raw: bytes) -> None:
    _decodes_or_rejects(raw)


member_names = st.sampled_from(
    [*sorted(RESERVED), "data_base64", "Trace-Parent", "ext", "a" * 21]
) | st.text(max_size=8)
member_values = st.one_of(
    json_value,
    st.sampled_from(["1.0", "/s", "2024-01-01T00:00:00Z", "YQ==", "text/plain", "", "vn"]),
)


@settings(max_examples=300)
@given(st.dictionaries(member_names, member_values))
def test_from_json_arbitrary_objects(obj: dict[str, Any]) -> None:
    base = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
    _decodes_or_rejects(orjson.dumps(obj))
    _decodes_or_rejects(orjson.dumps({**base, **obj}))


@settings(max_examples=300)
@given(st.text())
def test_from_json_arbitrary_text(raw: str) -> None:
    _decodes_or_rejects(raw)


header_names = st.sampled_from(
    [
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-time",
        "ce-classification",
        "content-type",
        "ce-x",
        "CE-X",
        "ce-",
        "ce-datacontenttype",
    ]
) | st.text(max_size=10)

header_values = st.sampled_from(
    [
        "text/plain; charset=idna",
        "text/plain; charset=utf-16",
        "text/x; charset=nope",
        "application/json",
        "application/cloudevents+json",
        "%C4",
        "1.0",
    ]
) | st.text(max_size=20)


@settings(max_examples=300)
@given(st.lists(st.tuples(header_names, header_values)), st.binary(max_size=32))
def test_from_http_binary_arbitrary_input(headers: list[tuple[str, str]], body: bytes) -> None:
    base = [("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "/s"), ("ce-type", "t")]
    for candidate in (headers, base + headers):
        try:
            event = from_http(candidate, body)
        except InvalidEvent:
            continue
        event.validate()
