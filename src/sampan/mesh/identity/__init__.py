"""Mesh identity: a trust-domain CA, short-lived SPIFFE certificates, their rotation, the
TLS contexts that use them, and the policy that authorises a peer by its SPIFFE ID.

- ``ca``: ``init_ca`` creates the trust domain's CA (ECDSA P-256, name-constrained to
  ``spiffe://<trust domain>``); ``load_ca`` reads it back.
- ``certs``: ``issue_certificate`` signs a short-lived leaf for one service, whose only URI
  SAN is ``spiffe://<trust domain>/svc/<service>``; ``spiffe_id``/``parse_spiffe_id``.
- ``tls``: ``server_context``/``client_context`` (mutual TLS against the CA bundle) and
  ``peer_spiffe_id`` (the identity a handshake proved).
- ``rotation``: ``CertificateRotator`` renews a node's certificate before it expires and
  loads it into the live ``SSLContext`` objects (new handshakes only; open connections stay).
- ``authz``: ``AuthorizationPolicy`` (``svc/orders -> svc/payments``) and the
  ``AuthorizationGate`` that answers 403 and counts a denied call.

See docs/mesh.md, "Identity and mTLS".
"""
