"""Synthetic cities with ground truth, for tests, demos and evaluation."""
