"""HTTP/1.1 wire code shared by the gateway and the mesh: server protocol, upstream client."""
