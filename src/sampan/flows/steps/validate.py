"""Validate the payload against a JSON Schema; an invalid message is dead-lettered at once
(no retry makes it valid), with the schema's complaint as the reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import fastjsonschema
import msgspec
import orjson
import yaml
from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from sampan.flows.errors import InvalidMessage
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.step import BuildContext, Step, StepKind
from sampan.flows.steps.schema_types import schema_type


def load_schema(path: Path) -> dict[str, Any]:
    text = path.read_bytes()
    schema = orjson.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(schema, dict):
        raise ValueError("a JSON Schema is an object")
    return schema


def compile_schema(path: Path) -> Callable[[Any], Any]:
    return fastjsonschema.compile(load_schema(path))


class ValidateOptions(Options):
    shorthand: ClassVar[str] = "schema"
    schema_file: str = Field(
        alias="schema",
        description="JSON Schema file (.json, or YAML), relative to the config file.",
    )

    @field_validator("schema_file")
    @classmethod
    def _loads(cls, value: str, info: ValidationInfo) -> str:
        base = (info.context or {}).get("base_dir")
        path = Path(value)
        if not path.is_absolute() and isinstance(base, Path):
            path = base / path
        try:
            compile_schema(path)
        except OSError as exc:
            raise PydanticCustomError(
                "schema_file",
                "cannot read schema file {path}: {error}",
                {"path": str(path), "error": exc.strerror or str(exc)},
            ) from None
        except (ValueError, yaml.YAMLError, fastjsonschema.JsonSchemaDefinitionException) as exc:
            raise PydanticCustomError(
                "schema_file",
                "{path} is not a usable JSON Schema: {error}",
                {"path": str(path), "error": " ".join(str(exc).split())[:300]},
            ) from None
        return str(path)


class ValidateStep(Step):
    def __init__(self, options: ValidateOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        schema = load_schema(Path(options.schema_file))
        self._check = fastjsonschema.compile(schema)
        self._fast = schema_type(schema)
        """The schema as a msgspec type, when it translates exactly (``schema_types.py``)."""
        self._convert = msgspec.convert
        self._schema = Path(options.schema_file).name

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        return self.process_now(message)

    def process_now(self, message: FlowMessage) -> list[FlowMessage]:
        fast = self._fast
        if fast is not None and message.undecoded:  # plain JSON values only
            try:
                self._convert(message.data, fast)
            except (msgspec.ValidationError, TypeError):
                pass  # fastjsonschema has the last word, and words the error
            else:
                return [message]
        try:
            self._check(message.data)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise InvalidMessage(f"fails {self._schema}: {exc.message}") from None
        return [message]


KIND = StepKind(
    "validate",
    ValidateOptions,
    ValidateStep,
    "Check the payload against a JSON Schema; invalid messages are dead-lettered at once.",
    {"schema": "schemas/order.json"},
)
