"""[settings] blocks for the small suites tests write: each case samples for milliseconds, on one thread.

FAST keeps a few samples (enough for a median and a spread); QUICK is the least a row needs.
"""

FAST_SETTINGS = """[settings]
budget_s = 0.005
warmup_s = 0.001
min_samples = 3
threads = 1
"""

QUICK_SETTINGS = """[settings]
budget_s = 0.002
warmup_s = 0.0
min_samples = 2
threads = 1
"""
