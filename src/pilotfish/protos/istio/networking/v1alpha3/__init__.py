"""Generated types for networking.istio.io v1alpha3 (also served as v1beta1 and v1)."""
