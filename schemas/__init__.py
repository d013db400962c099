"""Packaged data: telemetry profiles and the manifest JSON Schema (installed as telemetry.schemas)."""
