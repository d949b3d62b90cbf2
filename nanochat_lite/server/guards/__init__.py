"""Guards in front of the routes: keys and Host/Origin (security), connection and per-client
limits (connlimits), token quotas (quotas). They speak the wire's error vocabulary."""
