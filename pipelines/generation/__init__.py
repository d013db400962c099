"""Generation: episodes played by a policy, annotated (context, hindsight, counterfactuals), into packs.

May import: policies, environment, and the library.
"""
