"""security.istio.io/v1beta1: PeerAuthentication, AuthorizationPolicy (generated)."""
