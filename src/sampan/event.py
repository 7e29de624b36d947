"""The message envelope: CloudEvents 1.0 attributes + data, in JSON and HTTP binary modes.

Every layer (gateway, bus, flows, inference) passes the same :class:`CloudEvent`, so the
envelope is a plain frozen slotted dataclass with explicit, cheap validation and orjson
on the encode/decode path. Construction does not validate (it is on the hot path and
decoders build events from already-checked parts); :meth:`CloudEvent.create`, the
decoders and the encoders do.

Spec: CloudEvents 1.0 core, JSON event format and HTTP protocol binding. Extensions
sampan defines: ``traceparent`` (W3C), ``partitionkey`` (CloudEvents partitioning),
``residency`` and ``classification`` (sampan's data-protection labels).
"""

from __future__ import annotations

import binascii
import os
import re
import time as _time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

__all__ = [
    "STRUCTURED_CONTENT_TYPE",
    "CloudEvent",
    "InvalidEvent",
    "encode_data",
    "from_bus_message",
    "from_http",
    "from_http_binary",
    "from_json",
    "new_event_id",
    "now_rfc3339",
    "to_bus_headers",
    "to_bus_message",
    "to_http_binary",
    "to_json",
]

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
SPECVERSION = "1.0"

ExtensionValue = str | int | bool

# --- rules (compiled once; all immutable) -------------------------------------------------

_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}", re.ASCII)
# W3C Trace Context, version 00 only; all-zero trace-id / parent-id are invalid.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}", re.ASCII)
_RESIDENCY = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*", re.ASCII)
_RESIDENCY_MAX = 32
_TAG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*", re.ASCII)
_TAG_MAX = 64
# Field ranges live in the regex; only days 29-31 need a calendar check.
_RFC3339 = re.compile(
    r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]"
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?"  # 60: leap second
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])",
    re.ASCII,
)
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
# RFC 9110 media type; printable ASCII only, so it can go into Content-Type verbatim.
_MEDIA_TYPE = re.compile(
    rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*[ \t]*", re.ASCII
)
# '%' is allowed here; _BAD_PERCENT then checks every '%' starts a %HH escape.
_URI_CHAR = r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?\[\]%]"
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*:"
# RFC 3986 URI-reference: with a scheme, or a relative ref whose first segment has no ':'.
_URI_REFERENCE = re.compile(
    rf"(?:{_SCHEME}|(?=[^:/?#]*(?:[/?#]|\Z))){_URI_CHAR}*(?:#{_URI_CHAR}*)?", re.ASCII
)
_ABSOLUTE_URI = re.compile(rf"{_SCHEME}{_URI_CHAR}*(?:#{_URI_CHAR}*)?", re.ASCII)
# CloudEvents String: no control characters, surrogates or noncharacters.
_FORBIDDEN_CHAR = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff"
    + "".join(chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(1, 17))
    + "]"
)
# HTTP binding: percent-encode space, '"', '%' and everything outside U+0021..U+007E.
_NEEDS_PERCENT = re.compile(r"[^!#$&-~]")
_PERCENT_TABLE = tuple(
    chr(b) if 0x21 <= b <= 0x7E and b not in (0x22, 0x25) else f"%{b:02X}" for b in range(256)
)

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_VALUE_SHOWN = 80

_NAMED_ATTRIBUTES = frozenset(
    {
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "dataschema",
        "traceparent",
        "partitionkey",
        "residency",
        "classification",
    }
)
# Names an extension may never take: attributes with their own field, and JSON members.
_RESERVED_NAMES = _NAMED_ATTRIBUTES | {"data", "data_base64"}
_JSON_MEMBERS = _RESERVED_NAMES
_OPTIONAL_STRINGS = (
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "traceparent",
    "partitionkey",
    "residency",
)
# Binary mode: these attributes become ce-* headers (datacontenttype is Content-Type).
_HEADER_ATTRIBUTES = (
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "dataschema",
    "traceparent",
    "partitionkey",
    "residency",
)
_TEXT_MEDIA_TYPES = frozenset(
    {"application/xml", "application/x-www-form-urlencoded", "application/yaml"}
)
_OCTET_STREAM = "application/octet-stream"


class InvalidEvent(ValueError):
    """An event that breaks a CloudEvents (or sampan) rule; ``attribute`` names the culprit.

    Callers turn it into a 400 problem+json or a dead letter, so the message must say
    exactly which attribute is wrong and why.
    """

    def __init__(self, detail: str, attribute: str | None = None) -> None:
        super().__init__(f"invalid CloudEvent: {detail}")
        self.detail = detail
        self.attribute = attribute


def _show(value: object) -> str:
    """Repr of a bad value, truncated so a huge header cannot flood logs."""
    text = repr(value)
    return text if len(text) <= _VALUE_SHOWN else text[: _VALUE_SHOWN - 3] + "..."


def _type_name(value: object) -> str:
    return type(value).__name__


def now_rfc3339() -> str:
    """Current UTC time as RFC 3339 with microseconds and 'Z', the form ``time`` expects."""
    return datetime.now(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def new_event_id() -> str:
    """A UUIDv7-layout id: time-ordered (ms) so ids sort roughly by creation, 74 random bits."""
    millis = _time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (millis & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 68) << 64
        | 0b10 << 62
        | rand & ((1 << 62) - 1)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(slots=True, frozen=True)
class CloudEvent:
    """A CloudEvents 1.0 event.

    ``data`` is a JSON-able value, ``str`` or ``bytes``; non-JSON ``datacontenttype``
    values carry only ``str`` or ``bytes``. ``extensions`` holds every extension other
    than the four sampan names as fields; treat it as read-only. Events holding a dict
    (data or extensions) are not hashable.
    """

    id: str
    source: str
    type: str
    specversion: str = SPECVERSION
    subject: str | None = None
    time: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: Any = None
    traceparent: str | None = None
    partitionkey: str | None = None
    residency: str | None = None
    classification: tuple[str, ...] = ()
    extensions: Mapping[str, ExtensionValue] = field(default_factory=dict)

    @classmethod
    def create(cls, *, source: str, type: str, data: Any = None, **attrs: Any) -> CloudEvent:
        """Build and validate a new event, filling ``id`` (time-ordered) and ``time`` (now)."""
        if "id" not in attrs:
            attrs["id"] = new_event_id()
        if "time" not in attrs:
            attrs["time"] = now_rfc3339()
        event = cls(source=source, type=type, data=data, **attrs)
        event.validate()
        return event

    def validate(self) -> None:
        """Raise :class:`InvalidEvent` naming the first attribute that breaks a rule."""
        # Inline fast paths (this runs on every encode/decode); _check_string diagnoses.
        if self.specversion != SPECVERSION:
            _check_string("specversion", self.specversion, required=True)
            raise InvalidEvent(
                f"attribute 'specversion' must be '1.0', got {_show(self.specversion)}",
                "specversion",
            )
        v = self.id
        if type(v) is not str or not v or not v.isprintable():
            _check_string("id", v, required=True)
        v = self.source
        if type(v) is not str or not v or not v.isprintable():
            _check_string("source", v, required=True)
        v = self.type
        if type(v) is not str or not v or not v.isprintable():
            _check_string("type", v, required=True)
        for name in _OPTIONAL_STRINGS:
            v = getattr(self, name)
            if v is not None and (type(v) is not str or not v or not v.isprintable()):
                _check_string(name, v, required=False)
        if _URI_REFERENCE.fullmatch(self.source) is None or (
            "%" in self.source and _BAD_PERCENT.search(self.source) is not None
        ):
            raise InvalidEvent(
                f"attribute 'source' must be a URI-reference, got {_show(self.source)}", "source"
            )
        if self.time is not None and not _is_rfc3339(self.time):
            raise InvalidEvent(
                f"attribute 'time' must be an RFC 3339 timestamp, got {_show(self.time)}", "time"
            )
        if self.datacontenttype is not None and _MEDIA_TYPE.fullmatch(self.datacontenttype) is None:
            raise InvalidEvent(
                "attribute 'datacontenttype' must be a media type like 'application/json', "
                f"got {_show(self.datacontenttype)}",
                "datacontenttype",
            )
        if self.dataschema is not None and (
            _ABSOLUTE_URI.fullmatch(self.dataschema) is None
            or _BAD_PERCENT.search(self.dataschema) is not None
        ):
            raise InvalidEvent(
                f"attribute 'dataschema' must be an absolute URI, got {_show(self.dataschema)}",
                "dataschema",
            )
        if self.traceparent is not None and _TRACEPARENT.fullmatch(self.traceparent) is None:
            raise InvalidEvent(
                "attribute 'traceparent' must be a W3C traceparent "
                "'00-<32 hex>-<16 hex>-<2 hex>' (lowercase, non-zero ids), "
                f"got {_show(self.traceparent)}",
                "traceparent",
            )
        if self.residency is not None and (
            len(self.residency) > _RESIDENCY_MAX or _RESIDENCY.fullmatch(self.residency) is None
        ):
            raise InvalidEvent(
                "attribute 'residency' must be a lowercase region code like 'vn' or 'eu-west' "
                f"(a-z, 0-9, '-', at most {_RESIDENCY_MAX} characters), "
                f"got {_show(self.residency)}",
                "residency",
            )
        if self.classification:
            _check_classification(self.classification)
        elif type(self.classification) is not tuple:
            raise InvalidEvent(
                "attribute 'classification' must be a tuple of tags, "
                f"got {_type_name(self.classification)}",
                "classification",
            )
        if self.extensions:
            _check_extensions(self.extensions)
        if self.data is not None:
            _check_data(self.data, self.datacontenttype)


def _check_string(name: str, value: object, *, required: bool) -> None:
    """Slow path of validate(): say why a string attribute failed (or return if it is fine)."""
    if value is None:
        if required:
            raise InvalidEvent(f"attribute {name!r} is required", name)
        return
    if type(value) is not str:
        raise InvalidEvent(f"attribute {name!r} must be a string, got {_type_name(value)}", name)
    if not value:
        raise InvalidEvent(f"attribute {name!r} must be a non-empty string", name)
    _check_chars(name, value)


def _check_chars(name: str, value: str) -> None:
    if value.isprintable():  # fast path: no Cc/Cs/Cn (Cn covers noncharacters)
        return
    bad = _FORBIDDEN_CHAR.search(value)
    if bad is not None:
        raise InvalidEvent(
            f"attribute {name!r} contains a control character, surrogate or noncharacter "
            f"(U+{ord(bad.group()):04X} at index {bad.start()})",
            name,
        )


def _is_rfc3339(value: str) -> bool:
    m = _RFC3339.fullmatch(value)
    if m is None:
        return False
    year, month, day = m.groups()
    if day < "29":
        return True
    try:
        date(int(year), int(month), int(day))
    except ValueError:
        return False
    return True


def _check_classification(tags: object) -> None:
    if type(tags) is not tuple:
        raise InvalidEvent(
            f"attribute 'classification' must be a tuple of tags, got {_type_name(tags)}",
            "classification",
        )
    for tag in tags:
        if type(tag) is not str or len(tag) > _TAG_MAX or _TAG.fullmatch(tag) is None:
            raise InvalidEvent(
                f"attribute 'classification' tag {_show(tag)} must be a lowercase token "
                f"of a-z, 0-9 and inner '-' (at most {_TAG_MAX} characters)",
                "classification",
            )


def _check_extension_name(name: object) -> None:
    if type(name) is not str or _EXTENSION_NAME.fullmatch(name) is None:
        raise InvalidEvent(
            f"extension name {_show(name)} must be lowercase a-z0-9 and at most 20 characters",
            name if isinstance(name, str) else None,
        )
    if name in _RESERVED_NAMES:
        raise InvalidEvent(
            f"extension name {name!r} is reserved: set the CloudEvent field {name!r} instead"
            if name in _NAMED_ATTRIBUTES
            else f"extension name {name!r} is reserved by the JSON event format",
            name,
        )


def _check_extension_value(name: str, value: object) -> None:
    if isinstance(value, str):
        _check_chars(name, value)
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if not _INT32_MIN <= value <= _INT32_MAX:
            raise InvalidEvent(
                f"extension {name!r} must be a 32-bit signed integer, got {_show(value)}", name
            )
    else:
        raise InvalidEvent(
            f"extension {name!r} must be a string, integer or boolean, got {_type_name(value)}",
            name,
        )


def _check_extensions(extensions: object) -> None:
    if type(extensions) is not dict and not isinstance(extensions, Mapping):
        raise InvalidEvent(
            f"attribute 'extensions' must be a mapping, got {_type_name(extensions)}",
            "extensions",
        )
    for name, value in extensions.items():
        _check_extension_name(name)
        _check_extension_value(name, value)


def _media_type(content_type: str | None) -> tuple[str, str | None]:
    """(lowercase essence, charset) of a Content-Type; absent means JSON (CloudEvents rule)."""
    if content_type is None:
        return "application/json", None
    if ";" not in content_type:
        return content_type.strip().lower(), None
    essence, *params = content_type.split(";")
    charset = None
    for param in params:
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset":
            charset = val.strip().strip('"')
    return essence.strip().lower(), charset


def _is_json(essence: str) -> bool:
    return essence == "application/json" or essence.endswith("+json")


def _is_text(essence: str) -> bool:
    return essence.startswith("text/") or essence.endswith("+xml") or essence in _TEXT_MEDIA_TYPES


def _check_data(data: object, content_type: str | None) -> None:
    kind = type(data)
    if kind is str or kind is bytes or _is_json(_media_type(content_type)[0]):
        return
    if isinstance(data, bytearray | memoryview):
        return
    raise InvalidEvent(
        f"attribute 'data' must be str or bytes when datacontenttype is {content_type!r} "
        f"(only JSON content types carry structured data), got {_type_name(data)}",
        "data",
    )


def _bytes_of(data: bytes | bytearray | memoryview) -> bytes:
    return data if type(data) is bytes else bytes(data)


# --- structured mode (application/cloudevents+json) ---------------------------------------


def to_json(event: CloudEvent) -> bytes:
    """Encode ``event`` in JSON structured mode (validates first)."""
    event.validate()
    out: dict[str, Any] = {
        "specversion": event.specversion,
        "id": event.id,
        "source": event.source,
        "type": event.type,
    }
    if event.subject is not None:
        out["subject"] = event.subject
    if event.time is not None:
        out["time"] = event.time
    if event.datacontenttype is not None:
        out["datacontenttype"] = event.datacontenttype
    if event.dataschema is not None:
        out["dataschema"] = event.dataschema
    if event.traceparent is not None:
        out["traceparent"] = event.traceparent
    if event.partitionkey is not None:
        out["partitionkey"] = event.partitionkey
    if event.residency is not None:
        out["residency"] = event.residency
    if event.classification:
        out["classification"] = ",".join(event.classification)
    if event.extensions:
        out.update(event.extensions)
    data = event.data
    if data is not None:
        if isinstance(data, bytes | bytearray | memoryview):
            out["data_base64"] = binascii.b2a_base64(data, newline=False).decode("ascii")
        else:
            out["data"] = data
    try:
        return orjson.dumps(out)
    except TypeError as exc:  # orjson.JSONEncodeError
        raise InvalidEvent(f"attribute 'data' is not JSON-serialisable: {exc}", "data") from exc


def _json_string(obj: Mapping[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None or type(value) is str:
        return value
    raise InvalidEvent(f"attribute {name!r} must be a string, got {_json_type(value)}", name)


def _required(attrs: Mapping[str, Any], name: str) -> str:
    """Fetch a required attribute, so the constructor never sees None for id/source/type."""
    value = attrs.get(name)
    if value is None:
        raise InvalidEvent(f"attribute {name!r} is required", name)
    if type(value) is not str:
        raise InvalidEvent(f"attribute {name!r} must be a string, got {_json_type(value)}", name)
    return value


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", float: "number"}
    return names.get(type(value), "integer" if type(value) is int else _type_name(value))


def _split_classification(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(tag.strip() for tag in value.split(","))


def from_json(raw: bytes | bytearray | memoryview | str) -> CloudEvent:
    """Decode and validate a JSON structured-mode event; any problem is :class:`InvalidEvent`."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from exc
    if type(obj) is not dict:
        raise InvalidEvent(f"a structured-mode event must be a JSON object, got {_json_type(obj)}")
    return _from_json_object(obj)


def _from_json_object(obj: dict[str, Any]) -> CloudEvent:
    extensions: dict[str, ExtensionValue] = {}
    for name, value in obj.items():
        if name in _JSON_MEMBERS or value is None:
            continue
        _check_extension_name(name)
        _check_extension_value(name, value)
        extensions[name] = value
    datacontenttype = _json_string(obj, "datacontenttype")
    data: Any = None
    encoded = obj.get("data_base64")
    if encoded is not None:
        if obj.get("data") is not None:
            raise InvalidEvent("members 'data' and 'data_base64' are mutually exclusive", "data")
        if type(encoded) is not str:
            raise InvalidEvent(
                f"member 'data_base64' must be a base64 string, got {_json_type(encoded)}",
                "data_base64",
            )
        try:
            data = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidEvent(
                f"member 'data_base64' is not valid base64: {exc}", "data_base64"
            ) from exc
    else:
        data = obj.get("data")
        if (
            data is not None
            and type(data) is not str
            and not _is_json(_media_type(datacontenttype)[0])
        ):
            raise InvalidEvent(
                f"attribute 'data' must be a JSON string when datacontenttype is "
                f"{datacontenttype!r}, got {_json_type(data)}",
                "data",
            )
    event = CloudEvent(
        id=_required(obj, "id"),
        source=_required(obj, "source"),
        type=_required(obj, "type"),
        specversion=_required(obj, "specversion"),
        subject=_json_string(obj, "subject"),
        time=_json_string(obj, "time"),
        datacontenttype=datacontenttype,
        dataschema=_json_string(obj, "dataschema"),
        data=data,
        traceparent=_json_string(obj, "traceparent"),
        partitionkey=_json_string(obj, "partitionkey"),
        residency=_json_string(obj, "residency"),
        classification=_split_classification(_json_string(obj, "classification")),
        extensions=extensions,
    )
    event.validate()
    return event


# --- binary mode (HTTP ce-* headers, bus message headers) ---------------------------------


def _percent_encode(value: str) -> str:
    if _NEEDS_PERCENT.search(value) is None:
        return value
    return "".join(map(_PERCENT_TABLE.__getitem__, value.encode()))


def _percent_decode(header: str, value: str) -> str:
    if "%" not in value:
        return value
    try:
        return unquote_to_bytes(value).decode()
    except UnicodeDecodeError as exc:
        raise InvalidEvent(
            f"header {header!r} is not percent-encoded UTF-8: {_show(value)}", header[3:]
        ) from exc


def _extension_text(value: ExtensionValue) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value if type(value) is str else str(value)


def _binary_headers(event: CloudEvent) -> Iterator[tuple[str, str]]:
    for name in _HEADER_ATTRIBUTES:
        value = getattr(event, name)
        if value is not None:
            yield "ce-" + name, _percent_encode(value)
    if event.classification:
        yield "ce-classification", ",".join(event.classification)
    for name, ext in event.extensions.items():
        yield "ce-" + name, _percent_encode(_extension_text(ext))
    if event.datacontenttype is not None:
        yield "content-type", event.datacontenttype
    elif event.data is not None and isinstance(event.data, bytes | bytearray | memoryview):
        # An unlabelled body reads back as JSON, so raw bytes must say what they are.
        yield "content-type", _OCTET_STREAM


def _binary_body(event: CloudEvent) -> bytes:
    data = event.data
    if data is None:
        return b""
    if isinstance(data, bytes | bytearray | memoryview):
        return _bytes_of(data)
    essence, charset = _media_type(event.datacontenttype)
    if _is_json(essence):
        try:
            return orjson.dumps(data)
        except TypeError as exc:
            raise InvalidEvent(f"attribute 'data' is not JSON-serialisable: {exc}", "data") from exc
    try:
        return str(data).encode(charset or "utf-8")
    except (LookupError, ValueError) as exc:  # unknown codec, unencodable, UnicodeError
        raise InvalidEvent(
            f"attribute 'data' cannot be encoded as {charset!r}: {exc}", "data"
        ) from exc


def encode_data(event: CloudEvent) -> bytes:
    """The binary-mode body for ``event``: JSON data via orjson, text encoded, bytes as-is."""
    _check_data(event.data, event.datacontenttype)
    return _binary_body(event)


def to_http_binary(event: CloudEvent) -> tuple[list[tuple[str, str]], bytes]:
    """Encode ``event`` in HTTP binary mode: lowercase ``ce-*`` headers + Content-Type, body."""
    event.validate()
    return list(_binary_headers(event)), _binary_body(event)


def to_bus_headers(event: CloudEvent) -> dict[str, str]:
    """Binary-mode headers as a dict, for bus messages whose value is :func:`encode_data`."""
    event.validate()
    return dict(_binary_headers(event))


def to_bus_message(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Headers and value for a bus message, validating once (the bus's write path)."""
    event.validate()
    return dict(_binary_headers(event)), _binary_body(event)


def _header_pairs(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> Iterable[tuple[str, str]]:
    return headers.items() if isinstance(headers, Mapping) else headers


def from_http_binary(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes | bytearray | memoryview,
) -> CloudEvent:
    """Decode and validate an HTTP binary-mode event; header names are case-insensitive."""
    attrs: dict[str, str] = {}
    content_type: str | None = None
    for raw_name, value in _header_pairs(headers):
        name = raw_name.lower()
        if name.startswith("ce-"):
            attr = name[3:]
            if attr in attrs:
                raise InvalidEvent(f"header {name!r} appears more than once", attr)
            attrs[attr] = _percent_decode(name, value)
        elif name == "content-type":
            if content_type is not None:
                raise InvalidEvent(
                    "header 'content-type' appears more than once", "datacontenttype"
                )
            content_type = value.strip()
    if "datacontenttype" in attrs:
        raise InvalidEvent(
            "header 'ce-datacontenttype' is not allowed in binary mode: "
            "datacontenttype travels as Content-Type",
            "datacontenttype",
        )
    if "specversion" not in attrs and content_type is not None:
        essence = _media_type(content_type)[0]
        if essence.startswith("application/cloudevents"):
            raise InvalidEvent(
                f"attribute 'specversion' is required (Content-Type {essence!r} means "
                "structured mode: use from_http or from_json)",
                "specversion",
            )
    extensions: dict[str, ExtensionValue] = {}
    for name, value in attrs.items():
        if name not in _NAMED_ATTRIBUTES:
            _check_extension_name(name)
            extensions[name] = value
    event = CloudEvent(
        id=_required(attrs, "id"),
        source=_required(attrs, "source"),
        type=_required(attrs, "type"),
        specversion=_required(attrs, "specversion"),
        subject=attrs.get("subject"),
        time=attrs.get("time"),
        datacontenttype=content_type,
        dataschema=attrs.get("dataschema"),
        data=_decode_body(body, content_type),
        traceparent=attrs.get("traceparent"),
        partitionkey=attrs.get("partitionkey"),
        residency=attrs.get("residency"),
        classification=_split_classification(attrs.get("classification")),
        extensions=extensions,
    )
    event.validate()
    return event


def _decode_body(body: bytes | bytearray | memoryview, content_type: str | None) -> Any:
    if not body:
        return None  # an empty body means no data
    essence, charset = _media_type(content_type)
    if _is_json(essence):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(
                f"attribute 'data' is not valid JSON for content type {essence!r}: {exc}", "data"
            ) from exc
    if charset is not None or _is_text(essence):
        try:
            return bytes(body).decode(charset or "utf-8")
        except (LookupError, ValueError) as exc:  # unknown codec, undecodable, UnicodeError
            raise InvalidEvent(
                f"attribute 'data' is not valid {charset or 'utf-8'} text for content type "
                f"{essence!r}: {exc}",
                "data",
            ) from exc
    return _bytes_of(body)


def from_bus_message(headers: Mapping[str, str], value: bytes) -> CloudEvent:
    """Decode a bus message written by :func:`to_bus_message` (binary mode, same rules)."""
    return from_http_binary(headers, value)


def from_http(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes | bytearray | memoryview,
) -> CloudEvent:
    """Decode an HTTP request/response in whichever mode its Content-Type says."""
    pairs = list(_header_pairs(headers))
    for name, value in pairs:
        if name.lower() == "content-type":
            essence = _media_type(value)[0]
            if essence.startswith("application/cloudevents-batch"):
                raise InvalidEvent(f"batched mode ({essence!r}) is not supported")
            if essence == STRUCTURED_CONTENT_TYPE:
                return from_json(body)
            if essence.startswith("application/cloudevents"):
                raise InvalidEvent(
                    f"structured mode with format {essence!r} is not supported; "
                    f"use {STRUCTURED_CONTENT_TYPE!r}"
                )
            break
    return from_http_binary(pairs, body)
