"""Packaged SQL query library (installed as telemetry.queries)."""
