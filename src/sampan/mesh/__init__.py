"""The service mesh: discovery, balancing, resilience and identity for every outbound call."""
