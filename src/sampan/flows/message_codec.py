"""A flow message as bytes, for the state store (aggregation groups, resequencing buffers)."""

from __future__ import annotations

import orjson

from sampan.flows.message import FlowMessage


def encode_message(message: FlowMessage) -> bytes:
    # orjson never writes a raw newline, so the first newline ends the envelope.
    envelope = orjson.dumps({"h": message.headers, "k": message.key, "o": message.origin})
    return envelope + b"\n" + message.body()


def decode_message(stored: bytes) -> FlowMessage:
    envelope, _, body = stored.partition(b"\n")
    meta = orjson.loads(envelope)
    return FlowMessage(raw=body, headers=dict(meta["h"]), key=meta["k"], origin=meta["o"])
