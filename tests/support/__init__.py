"""Helpers shared by the tests (no tests here): independent references, synthetic data, a small model."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
