"""Flows: declarative pipelines of Enterprise Integration Patterns, `from` an endpoint,
through steps, `to` endpoints."""
