"""The wire: our API's shapes and nothing else. Errors and their bodies, request schemas,
limits and their checks, stream frames, HTTP helpers. Imports no other room of the server."""
