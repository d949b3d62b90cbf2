"""Observation: request and generation counters (stats), Prometheus text and the access
log (metrics). Reads what the guards count; knows nothing of chat turns or routes."""
