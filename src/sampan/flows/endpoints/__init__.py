"""The endpoints every flow has without a connector: bus topics, gateway routes, services."""
