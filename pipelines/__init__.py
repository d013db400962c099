"""What uses the library: the morphogenetic environment, policies, generation, training, experiments.

Layers, each a subpackage that imports only the layers above it in this list (and the library,
`telemetry`, through its public surface: `telemetry`, `telemetry.packs`, `telemetry.cli`):

    environment  <-  policies  <-  generation, training  <-  experiment

`pipelines/cli.py` assembles the `esper` command from every layer. tests/test_layering.py checks
these rules on the source.
"""
