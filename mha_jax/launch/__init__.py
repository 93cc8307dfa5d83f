"""Launchers: `python -m mha_jax.launch local|tpu|slurm|gke` (see __main__.py)."""
