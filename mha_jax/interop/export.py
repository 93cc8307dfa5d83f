"""python -m mha_jax.interop.export --workdir=runs/x --out=exports/x [--timm] \
[--weights_format=safetensors|bin] [--debug]

A training run's latest checkpoint as a Hugging Face / PyTorch directory:
config.json and the weights (`export_pretrained`: stock classes for standard
attention, custom code for MHA, RealFormer or a non-default score scale), the
tokenizer the run's data used (characters or GPT-2 BPE, as HF tokenizer files) and
its end-of-text id as bos/eos/pad_token_id. A run on synthetic ids has no
tokenizer: the ids stay null. `--out` must not exist yet (or be empty); the export
is written beside it and renamed, so a failure leaves nothing behind. Every
expected failure is one `error:` line and exit 1; `--debug` shows the traceback.

Like `mha_jax.main` this is a command line, above `mha_jax.train` (which rebuilds
the run's model and reads its checkpoint); it imports train only when it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

USAGE = ("usage: python -m mha_jax.interop.export --workdir=RUN --out=DIR [--timm] "
         "[--weights_format=safetensors|bin] [--debug]")


def load_run(workdir):
  """(its data config, model, params, tokenizer or None, end-of-text id or None) of
  a run's latest checkpoint."""
  import ml_collections

  from mha_jax import data
  from mha_jax.train import checkpoint, tasks
  from mha_jax.train import train as train_lib
  for name in ("config.json", "checkpoints"):
    if not os.path.exists(os.path.join(workdir, name)):
      raise ValueError(f"--workdir={workdir} has no {name}: not a training workdir, or one "
                       "that has not saved a checkpoint yet")
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.eval_batch_size = 1
  info = train_lib.make_input(config, train=False).info
  model = train_lib.make_model(config.model, tasks.make_task(config, info))
  params = checkpoint.load_init_params(workdir, model)
  tokenizer = data.dataset_tokenizer(config.data) if info.modality == "text" else None
  return config.data, model, params, tokenizer, info.eos_id if info.modality == "text" else None


def hf_tokenizer_for(tokenizer, cache_dir=""):
  """The run's tokenizer as HF tokenizer files' source (None: synthetic ids)."""
  from mha_jax.data import offline, tokenizers
  from mha_jax.interop import hf_tokenizer
  if tokenizer is None:
    return None
  if tokenizer.name == "char":
    return hf_tokenizer.char_tokenizer(tokenizer)
  if tokenizer.name == "gpt2":
    return hf_tokenizer.bpe_tokenizer(offline.gpt2_tiktoken_path(cache_dir),
                                      tokenizers.GPT2_PATTERN)
  raise ValueError(f"tokenizer {tokenizer.name!r} has no Hugging Face form; known: char, gpt2")


def check_out(out):
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ValueError(f"--out={out} exists and is not an empty directory: choose a new one")
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise ValueError(f"--out={out}: its parent folder {parent} does not exist")


def export_workdir(workdir, out, *, timm=False, weights_format="safetensors"):
  """Writes the export into `out`; returns a one-line summary."""
  from mha_jax import interop
  from mha_jax.interop import hf_tokenizer
  check_out(out)
  data_config, model, params, tokenizer, eos_id = load_run(workdir)
  hf_tok = hf_tokenizer_for(tokenizer, data_config.get("cache_dir", ""))
  partial = f"{os.path.abspath(out)}.partial-{os.getpid()}"
  try:
    interop.export_pretrained(params, model, partial, timm=timm, weights_format=weights_format,
                              eos_id=eos_id)
    if hf_tok is not None:
      hf_tokenizer.save_tokenizer(hf_tok, eos_id, partial)
    if os.path.isdir(out):
      os.rmdir(out)   # empty (check_out)
    os.rename(partial, out)
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    custom = "auto_map" in json.load(f)
  tokens = (f"tokenizer {tokenizer.name} ({tokenizer.vocab_size} ids, end-of-text {eos_id})"
            if tokenizer is not None else "no tokenizer (synthetic ids)")
  load = " (custom code: from_pretrained(..., trust_remote_code=True))" if custom else ""
  return f"exported {workdir} to {out}: {model.stack.describe_attention()}, {tokens}{load}"


def parse(argv):
  from absl import flags
  values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "training workdir (config.json + checkpoints/)",
                      flag_values=values)
  flags.DEFINE_string("out", None, "new directory for the export", flag_values=values)
  flags.DEFINE_bool("timm", False, "ViT: timm naming and hub config", flag_values=values)
  flags.DEFINE_enum("weights_format", "safetensors", ["safetensors", "bin"],
                    "model.safetensors or pytorch_model.bin", flag_values=values)
  flags.DEFINE_bool("debug", False, "tracebacks instead of one-line errors", flag_values=values)
  try:
    rest = values(argv)
  except flags.Error as e:
    raise ValueError(f"{str(e).splitlines()[0]}; {USAGE}") from e
  if len(rest) > 1:
    raise ValueError(f"unexpected arguments: {rest[1:]}; {USAGE}")
  if not values.workdir or not values.out:
    raise ValueError(f"--workdir and --out are required; {USAGE}")
  return values


def main(argv):
  """Exit status of one command line (tests call it in-process)."""
  if any(a in ("--help", "-h") for a in argv[1:]):
    print(__doc__)
    return 0
  debug = "--debug" in argv
  try:
    values = parse(argv)
    from absl import logging
    logging.set_verbosity(logging.WARNING if debug else logging.ERROR)   # orbax's INFO lines
    print(export_workdir(values.workdir, values.out, timm=values.timm,
                         weights_format=values.weights_format))
  except Exception as e:  # noqa: BLE001 — expected failures become one line below
    from mha_jax import script_cli
    if debug or not script_cli.expected(e):
      raise
    print(f"error: {script_cli.one_line(e)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
