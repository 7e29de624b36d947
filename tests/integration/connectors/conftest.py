"""The connector fixtures (see tests/support/connector_fixtures.py)."""

from connector_fixtures import bus, ctx, emitter

__all__ = ["bus", "ctx", "emitter"]
