"""The steps of a flow, one Enterprise Integration Pattern per file."""
