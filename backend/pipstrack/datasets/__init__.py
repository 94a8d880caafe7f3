"""Clips with exact ground truth: procedural training clips, photo clips, the bundled sample."""
