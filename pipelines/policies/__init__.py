"""Policies that choose actions from feature rows: the heuristic Tamiyo and learned policies.

May import: environment, and the library.
"""
