"""Statistics over seeds (``seeds``): the study's and the report's one home for them."""

from nnexp.stats.seeds import AGGS, band, includes_zero, mean_std, paired_difference, paired_interval, per_seed

__all__ = ["AGGS", "band", "includes_zero", "mean_std", "paired_difference", "paired_interval", "per_seed"]
