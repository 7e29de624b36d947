"""Property tests: the interpolation parser and the duration/size round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sampan.config import ConfigError, parse_config_text
from sampan.config_loader import InterpolationError, escape_interpolation, interpolate
from sampan.units import format_byte_size, format_duration, parse_byte_size, parse_duration

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
VALUES = st.text(max_size=20)
ENVS = st.dictionaries(NAMES, VALUES, max_size=5)
DEFAULTS = st.text(max_size=20).filter(lambda s: "}" not in s)


@given(st.text().filter(lambda s: "$" not in s), ENVS)
def test_text_without_dollar_is_unchanged(text: str, env: dict[str, str]) -> None:
    assert interpolate(text, env) == text


@given(st.text(), ENVS)
def test_escaped_text_round_trips_to_a_literal(text: str, env: dict[str, str]) -> None:
    assert interpolate(escape_interpolation(text), env) == text


@given(NAMES, ENVS)
def test_escaped_reference_is_never_expanded(name: str, env: dict[str, str]) -> None:
    assert interpolate(f"$${{{name}}}", env) == f"${{{name}}}"


@given(NAMES, DEFAULTS, ENVS, st.text(max_size=10), st.text(max_size=10))
def test_default_used_iff_variable_missing_or_empty(
    name: str, default: str, env: dict[str, str], before: str, after: str
) -> None:
    before, after = escape_interpolation(before), escape_interpolation(after)
    # A trailing "$" would make "$" + "${" read as an escape; keep the reference intact.
    assume(not before.endswith("$"))
    result = interpolate(f"{before}${{{name}:-{default}}}{after}", env)
    expected_value = env[name] if env.get(name) else default
    assert result == interpolate(before, env) + expected_value + interpolate(after, env)


@given(NAMES, ENVS)
def test_reference_without_default_expands_or_fails(name: str, env: dict[str, str]) -> None:
    if name in env:
        assert interpolate(f"<${{{name}}}>", env) == f"<{env[name]}>"
    else:
        with pytest.raises(InterpolationError, match=name):
            interpolate(f"<${{{name}}}>", env)


@given(st.lists(st.tuples(NAMES, VALUES), min_size=1, max_size=4, unique_by=lambda t: t[0]))
def test_several_references_expand_independently(pairs: list[tuple[str, str]]) -> None:
    env = dict(pairs)
    template = "-".join(f"${{{name}}}" for name, _ in pairs)
    assert interpolate(template, env) == "-".join(value for _, value in pairs)


@given(NAMES, st.integers(min_value=0, max_value=65535))
def test_unquoted_interpolated_numbers_become_ints(name: str, port: int) -> None:
    config = parse_config_text(f"node:\n  admin:\n    port: ${{{name}}}\n", env={name: str(port)})
    assert config.node.admin.port == port


@given(NAMES)
def test_missing_variable_is_reported_not_raised_raw(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(f"node:\n  name: ${{{name}}}\n", env={})
    (issue,) = info.value.issues
    assert (issue.line, issue.column, issue.path) == (2, 9, "node.name")
    assert name in issue.message


DURATIONS = st.one_of(
    st.integers(min_value=0, max_value=10**7).map(lambda ms: ms / 1000),
    st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=10**6).map(float),
)


@given(DURATIONS)
def test_duration_format_parse_round_trip(seconds: float) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    config = parse_config_text(f"node: {{shutdown_grace: {text}}}", env={})
    assert config.node.shutdown_grace == seconds


@given(
    st.integers(min_value=0, max_value=1000),
    st.sampled_from([("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]),
)
def test_duration_units(count: int, unit: tuple[str, float]) -> None:
    suffix, factor = unit
    assert math.isclose(parse_duration(f"{count}{suffix}"), count * factor)


@given(st.integers(min_value=0, max_value=2**62))
def test_size_format_parse_round_trip(size: int) -> None:
    text = format_byte_size(size)
    assert parse_byte_size(text) == size
    config = parse_config_text(f"bus: {{retention: {{max_bytes: {text}}}}}", env={})
    assert config.bus.retention.max_bytes == size


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["B", "kB", "MB", "GB", "KiB", "MiB", "GiB", "TiB"]),
)
def test_size_units(count: int, unit: str) -> None:
    factor = {
        "B": 1,
        "kB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "KiB": 2**10,
        "MiB": 2**20,
        "GiB": 2**30,
        "TiB": 2**40,
    }[unit]
    assert parse_byte_size(f"{count}{unit}") == count * factor
