"""The environment: host network, seed slots and lifecycle, blueprints, causes, datasets, the env.

May import: the library only.
"""
