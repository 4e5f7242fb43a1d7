"""How the shipper is watched: every metric, the /healthz /readyz /metrics endpoints, log set-up."""
