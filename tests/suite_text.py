"""[settings] blocks for the small suites tests write: each case samples for milliseconds, on one thread.

FAST keeps a few samples (enough for a median and a spread); QUICK is the least a row needs.
`two_decode_cases(name)` is a whole suite of two quick MHA decode cases, for tests about the
sweep's handling rather than its numbers.
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


def two_decode_cases(name: str) -> str:
    """A suite named `name`: tiny MHA, eager, decode, at 16 and 32 tokens, QUICK settings."""
    return f"""
name = "{name}"
""" + QUICK_SETTINGS + """[[grid]]
model = "tiny"
variant = ["mha"]
backend = "eager"
mode = "decode"
seq_len = [16, 32]
"""
