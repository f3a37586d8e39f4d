"""The recipe's warning thresholds (DESIGN.md section 1): the callbacks warn at them, report.html draws them.

A module of its own, importing nothing, so the report can be drawn without loading transformers.
"""

GRAD_NORM_HIGH = 10.0
GRAD_NORM_LOW = 1e-6
SPIKE_FACTOR = 2.0  # a logged loss this many times the running mean is a spike
TOKENS_DROP = 0.5  # tokens/s below this share of the median is a drop
