"""Measures of rank collapse and token uniformity (spec §3), as pure functions."""

from mha_jax.analysis.measures import (attention_only_network, composite_minimum, composite_norm,
                                       pairwise_token_cosine, relative_rank_residual,
                                       summarize)

__all__ = ["attention_only_network", "composite_minimum", "composite_norm", "pairwise_token_cosine",
           "relative_rank_residual", "summarize"]
