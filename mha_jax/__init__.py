"""mha_jax: Modern Hopfield Attention in JAX/Flax."""
