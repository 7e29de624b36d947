"""The node's state store: where stateful flow steps keep what must survive a crash."""
