"""Unit tests for the CloudEvents envelope: both modes, every validation message."""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
import pytest

from sampan.event import (
    STRUCTURED_CONTENT_TYPE,
    CloudEvent,
    InvalidEvent,
    encode_data,
    from_bus_message,
    from_http,
    from_http_binary,
    from_json,
    new_event_id,
    now_rfc3339,
    to_bus_headers,
    to_bus_message,
    to_http_binary,
    to_json,
)

VIETNAMESE = "Đơn hàng mới của Nguyễn Văn Ánh"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def minimal(**changes: Any) -> CloudEvent:
    return replace(
        CloudEvent(id="evt-1", source="/shop/orders", type="vn.shop.order.created"), **changes
    )


def full(**changes: Any) -> CloudEvent:
    event = CloudEvent(
        id="evt-42",
        source="https://shop.example.vn/orders",
        type="vn.shop.order.created",
        subject=VIETNAMESE,
        time="2024-11-11T00:00:00.123456+07:00",
        datacontenttype="application/json",
        dataschema="https://schemas.example.vn/order/v1.json",
        data={"order": 1111, "khách": VIETNAMESE, "items": [1, 2.5, None, True]},
        traceparent=TRACEPARENT,
        partitionkey="customer-84",
        residency="vn",
        classification=("personal", "sensitive"),
        extensions={"tenant": "acme", "priority": 5, "replay": False},
    )
    return replace(event, **changes)


def roundtrip_binary(event: CloudEvent) -> CloudEvent:
    return from_http_binary(*to_http_binary(event))


def error(fn: Any, *args: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        fn(*args)
    return info.value


# --- structured mode ---------------------------------------------------------------------


class TestStructured:
    def test_minimal_wire_form(self) -> None:
        assert orjson.loads(to_json(minimal())) == {
            "specversion": "1.0",
            "id": "evt-1",
            "source": "/shop/orders",
            "type": "vn.shop.order.created",
        }

    def test_full_roundtrip(self) -> None:
        event = full()
        assert from_json(to_json(event)) == event

    def test_accepts_str_input(self) -> None:
        assert from_json(to_json(full()).decode()) == full()

    def test_sampan_extensions_on_the_wire(self) -> None:
        wire = orjson.loads(to_json(full()))
        assert wire["classification"] == "personal,sensitive"
        assert wire["residency"] == "vn"
        assert wire["traceparent"] == TRACEPARENT
        assert wire["partitionkey"] == "customer-84"
        assert wire["tenant"] == "acme"
        assert wire["priority"] == 5
        assert wire["replay"] is False

    @pytest.mark.parametrize("ctype", [None, "application/json", "application/vnd.order+json"])
    def test_json_data_is_embedded(self, ctype: str | None) -> None:
        event = minimal(datacontenttype=ctype, data={"a": [1, "b"]})
        assert orjson.loads(to_json(event))["data"] == {"a": [1, "b"]}
        assert from_json(to_json(event)) == event

    def test_json_string_data_is_a_json_string(self) -> None:
        event = minimal(data="xin chào")
        assert orjson.loads(to_json(event))["data"] == "xin chào"
        assert from_json(to_json(event)) == event

    def test_text_data_goes_in_data(self) -> None:
        event = minimal(datacontenttype="text/plain; charset=utf-8", data=VIETNAMESE)
        wire = orjson.loads(to_json(event))
        assert wire["data"] == VIETNAMESE
        assert "data_base64" not in wire
        assert from_json(to_json(event)) == event

    @pytest.mark.parametrize("ctype", [None, "application/json", "image/png"])
    def test_bytes_go_in_data_base64(self, ctype: str | None) -> None:
        payload = bytes(range(256))
        event = minimal(datacontenttype=ctype, data=payload)
        wire = orjson.loads(to_json(event))
        assert "data" not in wire
        assert base64.b64decode(wire["data_base64"]) == payload
        assert from_json(to_json(event)) == event

    def test_vietnamese_everywhere(self) -> None:
        event = minimal(
            subject=VIETNAMESE,
            partitionkey="khách-hàng-Ánh",
            extensions={"ghichu": VIETNAMESE},
            data={"tên": VIETNAMESE},
        )
        assert from_json(to_json(event)) == event

    def test_unknown_extensions_preserved(self) -> None:
        raw = orjson.dumps(
            {
                "specversion": "1.0",
                "id": "1",
                "source": "urn:sensor:hcm-01",
                "type": "t",
                "tracestate": "congo=t61rcWkgMzE",
                "comexampleextension1": "value",
                "count": -7,
                "flag": True,
            }
        )
        event = from_json(raw)
        assert event.extensions == {
            "tracestate": "congo=t61rcWkgMzE",
            "comexampleextension1": "value",
            "count": -7,
            "flag": True,
        }
        assert orjson.loads(to_json(event)) == orjson.loads(raw)

    def test_null_attributes_are_absent(self) -> None:
        raw = (
            b'{"specversion":"1.0","id":"1","source":"/s","type":"t",'
            b'"subject":null,"x":null,"data":null}'
        )
        assert from_json(raw) == CloudEvent(id="1", source="/s", type="t")

    def test_data_base64_null_falls_back_to_data(self) -> None:
        raw = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":null,"data":3}'
        assert from_json(raw).data == 3

    def test_data_absent_is_none(self) -> None:
        assert from_json(to_json(minimal(datacontenttype="text/plain"))).data is None


class TestStructuredErrors:
    BASE: ClassVar[dict[str, Any]] = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}

    def decode(self, **members: Any) -> InvalidEvent:
        obj = {**self.BASE, **members}
        obj = {k: v for k, v in obj.items() if v is not ...}
        return error(from_json, orjson.dumps(obj))

    @pytest.mark.parametrize("name", ["specversion", "id", "source", "type"])
    def test_required(self, name: str) -> None:
        exc = self.decode(**{name: ...})
        assert str(exc) == f"invalid CloudEvent: attribute {name!r} is required"
        assert exc.attribute == name

    def test_wrong_specversion(self) -> None:
        exc = self.decode(specversion="0.3")
        assert str(exc) == "invalid CloudEvent: attribute 'specversion' must be '1.0', got '0.3'"
        assert exc.attribute == "specversion"

    @pytest.mark.parametrize(
        ("name", "value", "kind"),
        [
            ("id", 5, "integer"),
            ("source", ["a"], "array"),
            ("subject", {"a": 1}, "object"),
            ("time", 1.5, "number"),
            ("traceparent", True, "boolean"),
            ("classification", ["personal"], "array"),
        ],
    )
    def test_attribute_must_be_string(self, name: str, value: Any, kind: str) -> None:
        exc = self.decode(**{name: value})
        assert str(exc) == f"invalid CloudEvent: attribute {name!r} must be a string, got {kind}"
        assert exc.attribute == name

    def test_bad_time(self) -> None:
        exc = self.decode(time="yesterday")
        assert str(exc) == (
            "invalid CloudEvent: attribute 'time' must be an RFC 3339 timestamp, got 'yesterday'"
        )
        assert exc.attribute == "time"

    def test_bad_extension_name(self) -> None:
        exc = self.decode(**{"Trace-Parent": "x"})
        assert str(exc) == (
            "invalid CloudEvent: extension name 'Trace-Parent' must be lowercase a-z0-9 "
            "and at most 20 characters"
        )
        assert exc.attribute == "Trace-Parent"

    @pytest.mark.parametrize("value", [1.5, [1], {"a": 1}])
    def test_bad_extension_value(self, value: Any) -> None:
        exc = self.decode(ext=value)
        assert "extension 'ext' must be a string, integer or boolean" in str(exc)
        assert exc.attribute == "ext"

    def test_extension_int_range(self) -> None:
        exc = self.decode(ext=2**31)
        assert "extension 'ext' must be a 32-bit signed integer" in str(exc)
        assert self.decode(ext=-(2**31) - 1).attribute == "ext"
        assert from_json(orjson.dumps({**self.BASE, "ext": -(2**31)})).extensions["ext"] == -(2**31)

    def test_data_and_data_base64(self) -> None:
        exc = self.decode(data="a", data_base64="YQ==")
        assert "'data' and 'data_base64' are mutually exclusive" in str(exc)
        assert exc.attribute == "data"

    @pytest.mark.parametrize("value", ["not base64!", "YQ", 5])
    def test_bad_base64(self, value: Any) -> None:
        exc = self.decode(data_base64=value)
        assert "member 'data_base64'" in str(exc)
        assert exc.attribute == "data_base64"

    def test_structured_data_needs_json_type(self) -> None:
        exc = self.decode(datacontenttype="text/plain", data={"a": 1})
        assert "attribute 'data' must be a JSON string when datacontenttype is 'text/plain'" in str(
            exc
        )
        assert exc.attribute == "data"

    @pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b'{"a":1}x', "{\ud800}"])
    def test_not_json(self, raw: bytes | str) -> None:
        exc = error(from_json, raw)
        assert str(exc).startswith("invalid CloudEvent: not valid JSON")
        assert exc.attribute is None

    @pytest.mark.parametrize("raw", [b"[]", b"1", b'"x"', b"null"])
    def test_not_object(self, raw: bytes) -> None:
        assert "must be a JSON object" in str(error(from_json, raw))

    def test_unserialisable_data(self) -> None:
        exc = error(to_json, minimal(data={"x": object()}))
        assert "attribute 'data' is not JSON-serialisable" in str(exc)
        assert exc.attribute == "data"


# --- validation rules (shared by every mode) ----------------------------------------------


def check(event: CloudEvent, attribute: str | None, fragment: str) -> None:
    exc = error(event.validate)
    assert exc.attribute == attribute
    assert str(exc).startswith("invalid CloudEvent: ")
    assert fragment in str(exc)
    if attribute:
        assert repr(attribute) in str(exc)  # the message names the attribute
    # Encoders refuse the same event with the same message.
    for encode in (to_json, to_http_binary, to_bus_headers, to_bus_message):
        assert str(error(encode, event)) == str(exc)


class TestValidation:
    def test_full_event_is_valid(self) -> None:
        full().validate()
        minimal().validate()

    @pytest.mark.parametrize("name", ["id", "source", "type", "subject", "partitionkey"])
    def test_empty_strings(self, name: str) -> None:
        check(minimal(**{name: ""}), name, f"attribute {name!r} must be a non-empty string")

    @pytest.mark.parametrize("name", ["id", "source", "type", "specversion"])
    def test_required_none(self, name: str) -> None:
        check(minimal(**{name: None}), name, f"attribute {name!r} is required")

    def test_non_string_attribute(self) -> None:
        check(minimal(id=5), "id", "attribute 'id' must be a string, got int")

    @pytest.mark.parametrize("value", ["0.3", "1", "1.0 ", "2.0"])
    def test_specversion(self, value: str) -> None:
        check(minimal(specversion=value), "specversion", "attribute 'specversion' must be '1.0'")

    @pytest.mark.parametrize(
        "value",
        [
            "/cloudevents/spec/pull/123",
            "https://github.com/cloudevents",
            "mailto:cncf-wg-serverless@lists.cncf.io",
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "1-555-123-4567",
            "cloudevents/spec?x=1#frag",
            "https://vi.example/%C4%90%C6%A1n",
            "//host:8080/path",
        ],
    )
    def test_source_accepts_uri_references(self, value: str) -> None:
        minimal(source=value).validate()

    @pytest.mark.parametrize(
        "value", ["has space", "bad%zz", "1:2", "http://x/<y>", "Đơn", "a#b#c", "ht tp://x"]
    )
    def test_source_rejects(self, value: str) -> None:
        check(minimal(source=value), "source", "attribute 'source' must be a URI-reference, got")

    @pytest.mark.parametrize(
        "value",
        [
            "2018-04-05T17:31:00Z",
            "1985-04-12T23:20:50.52Z",
            "1996-12-19T16:39:57-08:00",
            "1990-12-31T23:59:60Z",
            "2024-02-29t10:00:00.000000001+07:00",
            "2024-11-11T00:00:00z",
        ],
    )
    def test_time_accepts_rfc3339(self, value: str) -> None:
        minimal(time=value).validate()

    @pytest.mark.parametrize(
        "value",
        [
            "yesterday",
            "2018-04-05",
            "2018-04-05T17:31:00",
            "2018-04-05 17:31:00Z",
            "2023-02-29T00:00:00Z",
            "2018-13-05T17:31:00Z",
            "2018-04-05T24:00:00Z",
            "2018-04-05T17:61:00Z",
            "2018-04-05T17:31:00+24:00",
            "2018-04-05T17:31:00.Z",
            "٢٠١٨-04-05T17:31:00Z",
        ],
    )
    def test_time_rejects(self, value: str) -> None:
        check(
            minimal(time=value),
            "time",
            f"attribute 'time' must be an RFC 3339 timestamp, got {value!r}",
        )

    @pytest.mark.parametrize(
        "value",
        ["application/json", "text/plain; charset=utf-8", 'text/plain;format="a b"', "image/png"],
    )
    def test_datacontenttype_accepts(self, value: str) -> None:
        minimal(datacontenttype=value).validate()

    @pytest.mark.parametrize("value", ["json", "text/", "text/plain; charset", "tëxt/plain"])
    def test_datacontenttype_rejects(self, value: str) -> None:
        check(minimal(datacontenttype=value), "datacontenttype", "must be a media type")

    @pytest.mark.parametrize("value", ["/relative/schema", "schema.json", "http://x y"])
    def test_dataschema_must_be_absolute(self, value: str) -> None:
        check(
            minimal(dataschema=value),
            "dataschema",
            "attribute 'dataschema' must be an absolute URI",
        )

    @pytest.mark.parametrize(
        "value",
        [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        ],
    )
    def test_traceparent(self, value: str) -> None:
        check(minimal(traceparent=value), "traceparent", "must be a W3C traceparent")

    @pytest.mark.parametrize("value", ["vn", "sg", "eu-west", "ap-southeast-1", "global"])
    def test_residency_accepts(self, value: str) -> None:
        minimal(residency=value).validate()

    @pytest.mark.parametrize("value", ["VN", "v n", "-vn", "vn-", "1vn", "eu--west", "a" * 33])
    def test_residency_rejects(self, value: str) -> None:
        check(minimal(residency=value), "residency", "must be a lowercase region code")

    @pytest.mark.parametrize(
        "tags", [("personal", "Sensitive"), ("",), ("a b",), ("-x",), ("x" * 65,), (5,)]
    )
    def test_classification_tags(self, tags: tuple[Any, ...]) -> None:
        check(minimal(classification=tags), "classification", "attribute 'classification' tag")

    def test_classification_must_be_tuple(self) -> None:
        check(
            minimal(classification=["personal"]),
            "classification",
            "attribute 'classification' must be a tuple of tags, got list",
        )
        check(minimal(classification="personal"), "classification", "got str")

    @pytest.mark.parametrize(
        ("name", "value"),
        [("subject", "a\nb"), ("id", "a\x00"), ("type", "a\x85"), ("partitionkey", "\ufffe")],
    )
    def test_forbidden_characters(self, name: str, value: str) -> None:
        check(minimal(**{name: value}), name, "contains a control character")

    @pytest.mark.parametrize("name", ["Trace-Parent", "UPPER", "under_score", "a" * 21, "", "dấu"])
    def test_extension_names(self, name: str) -> None:
        check(
            minimal(extensions={name: "x"}),
            name,
            f"extension name {name!r} must be lowercase a-z0-9 and at most 20 characters",
        )

    def test_extension_name_max_length_ok(self) -> None:
        minimal(extensions={"a" * 20: "x", "0": 1}).validate()

    @pytest.mark.parametrize("name", ["traceparent", "source", "classification", "residency"])
    def test_extension_cannot_shadow_fields(self, name: str) -> None:
        check(minimal(extensions={name: "x"}), name, f"extension name {name!r} is reserved")

    def test_extension_data_reserved(self) -> None:
        check(minimal(extensions={"data": "x"}), "data", "reserved by the JSON event format")

    def test_extension_values(self) -> None:
        check(minimal(extensions={"x": 1.5}), "x", "must be a string, integer or boolean")
        check(minimal(extensions={"x": 2**40}), "x", "must be a 32-bit signed integer")
        check(minimal(extensions={"x": "a\rb"}), "x", "contains a control character")

    def test_extensions_must_be_mapping(self) -> None:
        check(minimal(extensions=[("a", "b")]), "extensions", "must be a mapping")

    def test_structured_data_needs_json_content_type(self) -> None:
        check(
            minimal(datacontenttype="text/plain", data={"a": 1}),
            "data",
            "attribute 'data' must be str or bytes when datacontenttype is 'text/plain'",
        )

    def test_long_values_are_truncated_in_messages(self) -> None:
        exc = error(minimal(time="x" * 10_000).validate)
        assert len(str(exc)) < 200


# --- binary mode --------------------------------------------------------------------------


class TestBinary:
    def test_headers_and_body(self) -> None:
        headers, body = to_http_binary(full())
        names = [name for name, _ in headers]
        assert all(name == name.lower() for name in names)
        assert names[:4] == ["ce-specversion", "ce-id", "ce-source", "ce-type"]
        assert "ce-datacontenttype" not in names
        hdrs = dict(headers)
        assert hdrs["content-type"] == "application/json"
        assert hdrs["ce-classification"] == "personal,sensitive"
        assert hdrs["ce-residency"] == "vn"
        assert hdrs["ce-priority"] == "5"
        assert hdrs["ce-replay"] == "false"
        assert orjson.loads(body) == full().data

    def test_full_roundtrip_stringifies_extension_values(self) -> None:
        # Binary mode carries every extension as a string (CloudEvents canonical form).
        decoded = roundtrip_binary(full())
        assert decoded == full(extensions={"tenant": "acme", "priority": "5", "replay": "false"})

    def test_vietnamese_subject_is_percent_encoded(self) -> None:
        headers, _ = to_http_binary(minimal(subject=VIETNAMESE))
        value = dict(headers)["ce-subject"]
        assert value == (
            "%C4%90%C6%A1n%20h%C3%A0ng%20m%E1%BB%9Bi%20c%E1%BB%A7a%20Nguy%E1%BB%85n%20V%C4%83n%20%C3%81nh"
        )
        assert value.isascii()
        assert roundtrip_binary(minimal(subject=VIETNAMESE)).subject == VIETNAMESE

    def test_percent_encoding_rules(self) -> None:
        # Space, '"' and '%' are encoded; other printable ASCII passes through.
        subject = "a b\"c%d!#$&'()*+,-./:;<=>?@[\\]^_`{|}~"
        headers, _ = to_http_binary(minimal(subject=subject))
        assert dict(headers)["ce-subject"] == "a%20b%22c%25d!#$&'()*+,-./:;<=>?@[\\]^_`{|}~"
        assert roundtrip_binary(minimal(subject=subject)).subject == subject

    def test_percent_decoding_on_read(self) -> None:
        headers = {
            "ce-specversion": "1.0",
            "ce-id": "1",
            "ce-source": "/s",
            "ce-type": "t",
            "ce-subject": "Nguy%E1%BB%85n%20V%c4%83n%20%C3%81nh",
            "ce-note": "100%25",
        }
        event = from_http_binary(headers, b"")
        assert event.subject == "Nguyễn Văn Ánh"
        assert event.extensions == {"note": "100%"}

    def test_bad_percent_encoding(self) -> None:
        headers = {
            "ce-specversion": "1.0",
            "ce-id": "1",
            "ce-source": "/s",
            "ce-type": "t",
            "ce-subject": "%C4",
        }
        exc = error(from_http_binary, headers, b"")
        assert "header 'ce-subject' is not percent-encoded UTF-8" in str(exc)
        assert exc.attribute == "subject"

    def test_header_names_case_insensitive(self) -> None:
        headers = [
            ("CE-SpecVersion", "1.0"),
            ("Ce-Id", "1"),
            ("CE-SOURCE", "/s"),
            ("ce-Type", "t"),
            ("Ce-Residency", "sg"),
            ("CE-TENANT", "acme"),
            ("Content-Type", "text/plain"),
            ("Host", "example.vn"),
        ]
        event = from_http_binary(headers, b"hello")
        assert event == minimal(
            id="1",
            source="/s",
            type="t",
            residency="sg",
            extensions={"tenant": "acme"},
            datacontenttype="text/plain",
            data="hello",
        )

    def test_mapping_headers(self) -> None:
        headers, body = to_http_binary(full())
        assert from_http_binary(dict(headers), body) == roundtrip_binary(full())

    def test_duplicate_headers(self) -> None:
        headers = [("ce-specversion", "1.0"), ("ce-id", "1"), ("CE-ID", "2")]
        exc = error(from_http_binary, headers, b"")
        assert "header 'ce-id' appears more than once" in str(exc)
        assert exc.attribute == "id"
        headers = [("content-type", "a/b"), ("Content-Type", "a/b")]
        assert error(from_http_binary, headers, b"").attribute == "datacontenttype"

    def test_ce_datacontenttype_rejected(self) -> None:
        headers, body = to_http_binary(minimal())
        exc = error(from_http_binary, [*headers, ("ce-datacontenttype", "text/plain")], body)
        assert exc.attribute == "datacontenttype"
        assert "datacontenttype travels as Content-Type" in str(exc)

    def test_required_headers(self) -> None:
        exc = error(from_http_binary, [("ce-specversion", "1.0"), ("ce-id", "1")], b"")
        assert str(exc) == "invalid CloudEvent: attribute 'source' is required"

    def test_structured_body_to_binary_decoder_gives_hint(self) -> None:
        exc = error(
            from_http_binary, [("content-type", STRUCTURED_CONTENT_TYPE)], to_json(minimal())
        )
        assert exc.attribute == "specversion"
        assert "structured mode" in str(exc)

    def test_bad_extension_header_name(self) -> None:
        headers, body = to_http_binary(minimal())
        exc = error(from_http_binary, [*headers, ("Ce-Trace-Parent", TRACEPARENT)], body)
        assert exc.attribute == "trace-parent"
        assert "extension name 'trace-parent' must be lowercase a-z0-9" in str(exc)

    def test_invalid_json_body(self) -> None:
        headers, _ = to_http_binary(minimal(datacontenttype="application/json"))
        exc = error(from_http_binary, headers, b"{not json")
        assert exc.attribute == "data"
        assert "attribute 'data' is not valid JSON" in str(exc)

    def test_absent_content_type_means_json(self) -> None:
        headers, body = to_http_binary(minimal(data={"a": 1}))
        assert "content-type" not in dict(headers)
        assert body == b'{"a":1}'
        assert roundtrip_binary(minimal(data={"a": 1})) == minimal(data={"a": 1})

    def test_json_string_data(self) -> None:
        event = minimal(datacontenttype="application/json", data="chào")
        assert to_http_binary(event)[1] == orjson.dumps("chào")
        assert roundtrip_binary(event) == event

    def test_text_data(self) -> None:
        event = minimal(datacontenttype="text/plain; charset=utf-8", data=VIETNAMESE)
        headers, body = to_http_binary(event)
        assert dict(headers)["content-type"] == "text/plain; charset=utf-8"
        assert body == VIETNAMESE.encode()
        assert roundtrip_binary(event) == event

    def test_text_charset(self) -> None:
        event = minimal(datacontenttype="text/plain; charset=iso-8859-1", data="café")
        assert to_http_binary(event)[1] == "café".encode("latin-1")
        assert roundtrip_binary(event) == event
        exc = error(to_http_binary, replace(event, data=VIETNAMESE))
        assert exc.attribute == "data"

    def test_bad_text_body(self) -> None:
        exc = error(
            from_http_binary,
            [*to_http_binary(minimal())[0], ("content-type", "text/plain")],
            b"\xff",
        )
        assert exc.attribute == "data"
        assert "not valid utf-8 text" in str(exc)

    def test_bytes_data(self) -> None:
        event = minimal(datacontenttype="image/png", data=b"\x89PNG\r\n\x1a\n\x00")
        body = to_http_binary(event)[1]
        assert body == event.data
        assert roundtrip_binary(event) == event

    def test_unlabelled_bytes_become_octet_stream(self) -> None:
        event = minimal(data=b"\x00\x01")
        headers = to_http_binary(event)[0]
        assert dict(headers)["content-type"] == "application/octet-stream"
        assert roundtrip_binary(event) == replace(event, datacontenttype="application/octet-stream")

    def test_empty_body_means_no_data(self) -> None:
        assert roundtrip_binary(minimal(datacontenttype="text/plain")).data is None

    def test_memoryview_body(self) -> None:
        headers, body = to_http_binary(minimal(datacontenttype="image/png", data=b"ab"))
        decoded = from_http_binary(headers, memoryview(body))
        assert type(decoded.data) is bytes
        assert decoded.data == b"ab"

    def test_classification_header_tolerates_spaces(self) -> None:
        headers, body = to_http_binary(minimal())
        event = from_http_binary([*headers, ("ce-classification", "personal,%20sensitive")], body)
        assert event.classification == ("personal", "sensitive")

    def test_empty_classification_header_rejected(self) -> None:
        headers, body = to_http_binary(minimal())
        exc = error(from_http_binary, [*headers, ("ce-classification", "")], body)
        assert exc.attribute == "classification"

    def test_header_injection_is_impossible(self) -> None:
        event = minimal(extensions={"note": "a\r\nx-evil: 1"})
        assert error(to_http_binary, event).attribute == "note"


class TestBus:
    def test_bus_roundtrip(self) -> None:
        event = full(extensions={"tenant": "acme"})
        headers, value = to_bus_message(event)
        assert headers == to_bus_headers(event)
        assert value == encode_data(event)
        assert from_bus_message(headers, value) == event

    def test_bus_value_is_not_double_encoded(self) -> None:
        event = minimal(data={"a": "b"})
        headers, value = to_bus_message(event)
        assert value == b'{"a":"b"}'
        assert all(isinstance(v, str) for v in headers.values())

    def test_encode_data_checks_data(self) -> None:
        assert error(encode_data, minimal(datacontenttype="text/csv", data=[1])).attribute == "data"


class TestFromHttp:
    def test_structured(self) -> None:
        headers = [("Content-Type", STRUCTURED_CONTENT_TYPE + "; charset=utf-8")]
        assert from_http(headers, to_json(full())) == full()

    def test_binary(self) -> None:
        assert from_http(*to_http_binary(full())) == roundtrip_binary(full())

    def test_batch_rejected(self) -> None:
        headers = {"content-type": "application/cloudevents-batch+json"}
        assert "batched mode" in str(error(from_http, headers, b"[]"))

    def test_other_format_rejected(self) -> None:
        headers = {"content-type": "application/cloudevents+avro"}
        assert "not supported" in str(error(from_http, headers, b""))


# --- construction helpers -----------------------------------------------------------------


class TestCreate:
    def test_fills_id_and_time(self) -> None:
        event = CloudEvent.create(source="/s", type="t", data={"a": 1}, residency="vn")
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", event.id
        )
        assert event.time is not None
        assert event.time.endswith("Z")
        assert event.residency == "vn"
        assert event.data == {"a": 1}

    def test_keeps_given_id_and_time(self) -> None:
        event = CloudEvent.create(source="/s", type="t", id="x", time="2024-01-01T00:00:00Z")
        assert (event.id, event.time) == ("x", "2024-01-01T00:00:00Z")

    def test_validates(self) -> None:
        exc = error(lambda: CloudEvent.create(source="", type="t"))
        assert exc.attribute == "source"

    def test_ids_are_unique_and_time_ordered(self) -> None:
        ids = [new_event_id() for _ in range(1000)]
        assert len(set(ids)) == len(ids)
        prefixes = [i[:13] for i in ids]  # 48-bit millisecond timestamp
        assert prefixes == sorted(prefixes)

    def test_now_rfc3339(self) -> None:
        stamp = now_rfc3339()
        minimal(time=stamp).validate()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert abs((datetime.now(UTC) - parsed).total_seconds()) < 5

    def test_frozen_and_slotted(self) -> None:
        event = minimal()
        with pytest.raises(AttributeError):
            event.id = "other"  # type: ignore[misc]
        assert not hasattr(event, "__dict__")

    def test_equality(self) -> None:
        assert minimal() == minimal()
        assert minimal() != minimal(id="evt-2")
