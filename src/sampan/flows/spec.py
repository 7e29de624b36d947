"""How steps and endpoints appear in the config, and how they are validated.

A step is a mapping with one key, the step's name (``{filter: "data.ok"}``), plus an optional
``on_error``; an endpoint is a mapping whose keys name its kind (``{topic: orders.review}``,
``{service: customers, path: /x}``). Each kind's options are checked by its own model, and
errors keep their full key path (``flows[0].steps[2].enrich.path``), so the config file
points at the exact line.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from sampan.config_loader import relocated
from sampan.units import Duration


def _error(
    kind: str, message: str, loc: tuple[str | int, ...], given: Any, **ctx: Any
) -> ValidationError:
    return ValidationError.from_exception_data(
        "flow",
        [InitErrorDetails(type=PydanticCustomError(kind, message, ctx), loc=loc, input=given)],
    )


def _options_of(model: type[BaseModel], value: Any, info: ValidationInfo, key: str) -> BaseModel:
    shorthand: str | None = getattr(model, "shorthand", None)
    short = shorthand is not None and not isinstance(value, dict)
    if short:
        value = {shorthand: value}
    try:
        return model.model_validate(value, context=info.context)
    except ValidationError as exc:
        raise relocated("flow", exc, (key,), unwrap=shorthand if short else None) from None


class StepSpec(BaseModel):
    """One step: ``{<step name>: <options>, on_error: ...}``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"description": "A step: a mapping with one step name as key."},
    )

    kind: str = Field(description="The step's name (the key it is written under).")
    options: Any = Field(description="The step's options (see docs/flows.md).")
    on_error: OnErrorConfig | None = Field(None, description="What to do when the step fails.")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any, info: ValidationInfo) -> Any:
        from sampan.flows.kinds import step_kinds

        if isinstance(value, dict) and "kind" in value and "options" in value:
            return value  # already parsed (a model being copied)
        if not isinstance(value, dict) or not value:
            raise _error(
                "step_shape",
                "a step is a mapping with one step name as its key, e.g. {{filter: 'data.ok'}};"
                " got {value}",
                (),
                value,
                value=repr(value),
            )
        names = [key for key in value if key != "on_error"]
        kinds = step_kinds()
        if len(names) != 1:
            raise _error(
                "step_shape",
                "a step names exactly one step (plus an optional on_error); got {names}",
                (),
                value,
                names=", ".join(map(str, names)) or "none",
            )
        name = names[0]
        kind = kinds.get(name)
        if kind is None:
            raise _error(
                "unknown_step",
                "unknown step '{name}' (expected one of: {known})",
                (name,),
                name,
                name=name,
                known=", ".join(sorted(kinds)),
            )
        options = _options_of(kind.options, value[name], info, name)
        return {"kind": name, "options": options, "on_error": value.get("on_error")}


class EndpointSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: ClassVar[Literal["source", "sink"]]
    kind: str = Field(description="The endpoint's kind (the key that names it).")
    options: Any = Field(description="The endpoint's options (see docs/flows.md).")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any, info: ValidationInfo) -> Any:
        from sampan.flows.kinds import sink_kinds, source_kinds

        if isinstance(value, dict) and "kind" in value and "options" in value:
            return value
        kinds = source_kinds() if cls.role == "source" else sink_kinds()
        where = "from" if cls.role == "source" else "to"
        if not isinstance(value, dict):
            raise _error(
                "endpoint_shape",
                "`{where}` is a mapping naming one endpoint kind ({known}); got {value}",
                (),
                value,
                where=where,
                known=", ".join(sorted(kinds)),
                value=repr(value),
            )
        present = [key for key in value if key in kinds]
        # ``topic`` is also an option of other kinds (an MQTT topic): it names the kind only
        # when nothing else does.
        if len(present) > 1 and "topic" in present:
            present.remove("topic")
        if len(present) != 1:
            raise _error(
                "endpoint_kind",
                "`{where}` needs exactly one of: {known}; got {found}",
                (),
                value,
                where=where,
                known=", ".join(sorted(kinds)),
                found=", ".join(present) or "none",
            )
        name = present[0]
        try:
            options = kinds[name].config.model_validate(value, context=info.context)
        except ValidationError as exc:
            raise relocated("flow", exc, ()) from None
        return {"kind": name, "options": options}


class SourceSpec(EndpointSpec):
    """Where a flow's messages come from."""

    role: ClassVar[Literal["source", "sink"]] = "source"


class SinkSpec(EndpointSpec):
    """Where a ``to`` step sends messages."""

    role: ClassVar[Literal["source", "sink"]] = "sink"


class OnErrorConfig(BaseModel):
    """What a step does when it fails. The default fails the message: the source retries it
    with backoff, then dead-letters it naming the step and the error."""

    model_config = ConfigDict(extra="forbid")
    shorthand: ClassVar[str] = "action"

    action: Literal["fail", "dead_letter", "skip", "continue"] = Field(
        "fail",
        description="`fail`: retry the whole message, then dead-letter it; `dead_letter`: "
        "dead-letter it now; `skip`: drop it (counted and logged); `continue`: go on with the "
        "message as it was before the step.",
    )
    to: SinkSpec | None = Field(
        None,
        description="Send the failed message here (headers `flow-error` and "
        "`flow-error-step` added) and stop it, instead of `action`.",
    )
    attempts: int = Field(1, ge=1, le=100, description="Tries of this step before giving up.")
    backoff: Duration = Field(0.1, ge=0, description="Delay between tries of this step.")

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return {"action": value} if isinstance(value, str) else value


StepSpec.model_rebuild()
