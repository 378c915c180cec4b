"""Network safety helpers shared by the gateway (submission checks) and the worker (fetching)."""
