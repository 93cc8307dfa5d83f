"""Ahead-of-time fit checks: `python -m mha_jax.aot` (see __main__.py)."""
