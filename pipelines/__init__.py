"""What uses the telemetry library: the morphogenetic host and environment, policies, experiments."""
