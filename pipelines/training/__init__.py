"""Training: policies fitted on a pack's decision steps, and the metrics that score them.

May import: policies, environment, and the library.
"""
