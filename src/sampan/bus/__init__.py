"""The event bus: durable topics, consumer groups, retries, dead letters, replay."""
