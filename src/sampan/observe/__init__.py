"""Observability shared by every layer: the metrics quartet."""
