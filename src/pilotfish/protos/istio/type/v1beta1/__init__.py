"""istio.type.v1beta1: WorkloadSelector, PolicyTargetReference (generated)."""
