"""Worked examples on real data: ``python -m stdiff.examples.<name>``."""
