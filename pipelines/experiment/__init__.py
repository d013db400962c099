"""Experiments: the control check, the baseline-vs-candidate comparison, pooling and reports.

May import: generation, training, policies, environment, and the library.
"""
