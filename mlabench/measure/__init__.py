"""Measurement: timing, memory, accuracy, roofline peaks and the environment fingerprint."""
