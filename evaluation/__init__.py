"""Scoring the detectors offline on simulated or recorded files, and the detection report."""
