"""The three expression languages of flows, compiled once when the config loads.

* JMESPath selects and tests (``data.amount > `10000000```): predictable, side-effect free,
  the language AWS and Azure users already know.
* Jinja2, sandboxed, builds text payloads; the sandbox keeps a config author from reaching
  Python internals through a template.
* Brace templates (``/customers/{data.customer_id}``) fill paths, topic names and file
  names; each brace holds a JMESPath expression.

The annotated types below validate the syntax inside pydantic, so a bad expression is a
config error located at its key, not a failure on the first message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final
from urllib.parse import quote

import jmespath
import jmespath.exceptions
import jmespath.parser
from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from sampan.flows.jmespath_codegen import generated_or_compiled
from sampan.flows.jmespath_compiler import Root, identity
from sampan.flows.message import FlowMessage

_BRACE_RE: Final = re.compile(r"\{([^{}]+)\}")


def compile_jmespath(text: str) -> jmespath.parser.ParsedResult:
    try:
        return jmespath.compile(text)
    except jmespath.exceptions.JMESPathError as exc:
        raise PydanticCustomError(
            "jmespath", "not a valid JMESPath expression: {error}", {"error": _one_line(exc)}
        ) from None


def _check_jmespath(text: str) -> str:
    compile_jmespath(text)
    return text


def _check_template(text: str) -> str:
    try:
        template_environment().parse(text)
    except TemplateSyntaxError as exc:
        raise PydanticCustomError(
            "template",
            "not a valid Jinja2 template (line {line}): {error}",
            {"line": exc.lineno, "error": exc.message or ""},
        ) from None
    return text


def _check_brace_template(text: str) -> str:
    if text.count("{") != text.count("}"):
        raise PydanticCustomError(
            "brace_template", "unbalanced braces in {value!r}", {"value": text}
        )
    for match in _BRACE_RE.finditer(text):
        compile_jmespath(match.group(1).strip())
    return text


Expression = Annotated[
    str,
    AfterValidator(_check_jmespath),
    WithJsonSchema({"type": "string", "description": "A JMESPath expression."}),
]
"""A JMESPath expression over ``{data, headers, key}``."""

Template = Annotated[
    str,
    AfterValidator(_check_template),
    WithJsonSchema({"type": "string", "description": "A sandboxed Jinja2 template."}),
]
"""A sandboxed Jinja2 template; ``data``, ``headers`` and ``key`` are its variables."""

BraceTemplate = Annotated[
    str,
    AfterValidator(_check_brace_template),
    WithJsonSchema({"type": "string", "description": "Text with {jmespath} placeholders."}),
]
"""Text with ``{jmespath}`` placeholders, e.g. ``/customers/{data.customer_id}``."""


def template_environment() -> ImmutableSandboxedEnvironment:
    """A fresh sandbox per use site: no environment is shared between flows."""
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "sort_keys": False}
    return env


_OPTIONS: Final = jmespath.Options(dict_cls=dict)


def evaluator(text: str) -> Callable[[FlowMessage], Any]:
    """A function evaluating the JMESPath expression against a message."""
    parsed = compile_jmespath(text)
    search = parsed.search
    # The common case, a plain ``data.a.b`` path, skips the context dict and the interpreter.
    fields = _plain_data_path(text)
    if fields is not None:

        def by_path(message: FlowMessage) -> Any:
            value = message.data
            for name in fields:
                if not isinstance(value, dict):
                    return None
                value = value.get(name)
            return value

        return by_path
    compiled = _on_message(parsed.parsed)
    if compiled is not None:
        return compiled

    def evaluate(message: FlowMessage) -> Any:
        return search(message.context(), _OPTIONS)

    return evaluate


def _message_data(message: FlowMessage) -> Any:
    return message.data


def _message_headers(message: FlowMessage) -> Any:
    return message.headers


def _message_key(message: FlowMessage) -> Any:
    return message.key


_ROOTS: Final[dict[str, Callable[[FlowMessage], Any]]] = {
    "data": _message_data,
    "headers": _message_headers,
    "key": _message_key,
}


def _on_message(node: Mapping[str, Any]) -> Callable[[FlowMessage], Any] | None:
    """The expression compiled (see `sampan.flows.jmespath_codegen` and
    `sampan.flows.jmespath_compiler`), None when it needs the interpreter.
    ``data``/``headers``/``key`` at the top are read straight off the message, so
    ``headers.x`` neither builds the context dict nor decodes the payload."""
    return generated_or_compiled(node, _MESSAGE_ROOT)


def _nothing(_message: FlowMessage) -> Any:
    return None


def _root_field(name: str) -> Callable[[FlowMessage], Any]:
    return _ROOTS.get(name, _nothing)


def _context(message: FlowMessage) -> Any:
    return message.context()


_MESSAGE_ROOT: Final = Root(_root_field, _context)


def predicate(text: str) -> Callable[[FlowMessage], bool]:
    """JMESPath truthiness: false, null, empty string/list/object are false."""
    evaluate = evaluator(text)

    def test(message: FlowMessage) -> bool:
        return is_truthy(evaluate(message))

    return test


def is_truthy(value: Any) -> bool:
    """JMESPath's truthiness (0 is true, unlike Python)."""
    return not (value is None or value is False or value in ("", [], {}))


def searcher(text: str) -> Callable[[Any], Any]:
    """Evaluate a JMESPath expression against any document (not a message)."""
    parsed = compile_jmespath(text)
    compiled = generated_or_compiled(parsed.parsed)
    if compiled is not None:
        return compiled
    return lambda document: parsed.search(document, _OPTIONS)


def renderer(text: str) -> Callable[[FlowMessage], str]:
    """A function rendering the Jinja2 template for a message."""
    template = template_environment().from_string(text)
    render = template.render

    def run(message: FlowMessage) -> str:
        return render(data=message.data, headers=message.headers, key=message.key)

    return run


def brace_renderer(text: str, *, url_quote: bool = False) -> Callable[[FlowMessage], str]:
    """Fill ``{expr}`` placeholders; ``url_quote`` escapes each value for a URL path."""
    literals: list[str] = []
    placeholders: list[Callable[[FlowMessage], Any]] = []
    last = 0
    for match in _BRACE_RE.finditer(text):
        literals.append(text[last : match.start()])
        placeholders.append(evaluator(match.group(1).strip()))
        last = match.end()
    literals.append(text[last:])
    if not placeholders:
        constant = text
        return lambda _message: constant
    escape = _quote_segment if url_quote else identity

    def piece(value: Any) -> str:
        if value is None:
            raise ValueError(f"placeholder in {text!r} is null for this message")
        return escape(value if isinstance(value, str) else _scalar_text(value))

    if len(placeholders) == 1:  # "/customers/{data.customer_id}": no loop, no list
        (evaluate,) = placeholders
        before, after = literals

        def fill_one(message: FlowMessage) -> str:
            return before + piece(evaluate(message)) + after

        return fill_one
    pairs = list(zip(literals, placeholders, strict=False))
    tail = literals[-1]

    def fill(message: FlowMessage) -> str:
        out = []
        for literal, evaluate in pairs:
            out.append(literal)
            out.append(piece(evaluate(message)))
        out.append(tail)
        return "".join(out)

    return fill


_UNRESERVED: Final = re.compile(r"[A-Za-z0-9_.~-]*")
"""What ``quote(text, safe="")`` leaves as it is."""


def _quote_segment(text: str) -> str:
    if _UNRESERVED.fullmatch(text):  # an id, a code: nothing to escape (and 4x faster)
        return text
    return quote(text, safe="")


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_PLAIN_PATH_RE: Final = re.compile(r"data(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _plain_data_path(text: str) -> tuple[str, ...] | None:
    stripped = text.strip()
    if not _PLAIN_PATH_RE.fullmatch(stripped):
        return None
    return tuple(stripped.split(".")[1:])


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
