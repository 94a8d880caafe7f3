"""Scoring trackers against ground truth: TAP-Vid metrics, baselines (OpenCV, Blender), the eval table."""
