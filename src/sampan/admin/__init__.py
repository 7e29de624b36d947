"""The node's admin API (not on the data path)."""
