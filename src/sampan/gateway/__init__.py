"""The API gateway: the HTTP data plane, routing, plugins and targets."""
