"""Generate text from a trained GPT-2 / LLaMA run or a Hugging Face checkpoint directory.

    python experiments/sample.py --checkpoint=runs/llama_smoke --prompt="ROMEO:"
    python experiments/sample.py --checkpoint=gpt2-local --prompt_ids=464,3290 \\
        --max_new_tokens=20 --temperature=0 --json

--checkpoint is a training workdir (config.json + checkpoints/, latest step; its
dataset's tokenizer, BPE or characters) or a PyTorch checkpoint directory with a
config.json (GPT-2 or LLaMA; text through its own tokenizer files, or GPT-2 BPE for
a 50257-token GPT-2). An export of an MHA-trained model runs with the attention it
records in config.json ("mha_jax_attention"). Decoding uses the K/V cache
(mha_jax.decode); generation stops after the end-of-text token if one is produced.
With --json the last stdout line is {"tokens": [ids after the prompt], "text": ...}
(text is null without a tokenizer).
"""

import json
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mha_jax import data, decode
from mha_jax.data import tokenizers
from mha_jax.train import checkpoint, tasks
from mha_jax.train import train as train_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "training workdir or Hugging Face / PyTorch directory")
flags.DEFINE_string("prompt", None, "prompt text (needs a tokenizer)")
flags.DEFINE_list("prompt_ids", None, "prompt token ids, comma-separated")
flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate after the prompt")
flags.DEFINE_float("temperature", 0.8, "softmax temperature; 0 = greedy")
flags.DEFINE_integer("top_k", 0, "keep the k most likely tokens (0 = all)")
flags.DEFINE_float("top_p", 1.0, "nucleus sampling: keep the most likely tokens up to mass p")
flags.DEFINE_integer("seed", 0, "sampling seed")
flags.DEFINE_bool("json", False, 'last stdout line: {"tokens": [...], "text": ...}')


class HFTokenizer:
  """A `transformers` tokenizer behind the project's tokenizer interface."""

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer
    self.eos_id = tokenizer.eos_token_id

  def encode_batch(self, texts):
    return [self._tokenizer.encode(t, add_special_tokens=False) for t in texts]

  def decode(self, ids):
    return self._tokenizer.decode(list(ids))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def run_tokenizer(data_config):
  """The tokenizer a training run's dataset was tokenised with (as mha_jax.data
  builds it), or None for synthetic ids."""
  return data.dataset_tokenizer(data_config)


def load_workdir(workdir):
  """(model, params, tokenizer, end-of-text id) of a training run's latest checkpoint."""
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.eval_batch_size = 1
  info = train_lib.make_input(config, train=False).info
  model = train_lib.make_model(config.model, tasks.make_task(config, info))
  return (model, checkpoint.load_init_params(workdir, model), run_tokenizer(config.data),
          info.eos_id)


def load_pretrained_directory(directory):
  """(model, params, tokenizer, end-of-text id) of a Hugging Face / PyTorch directory."""
  from mha_jax import interop  # torch is optional: import only when asked for
  from mha_jax.interop import checkpoint_io
  config = checkpoint_io.read_config(directory)
  overrides = {}
  if "mha_jax_attention" in config:
    overrides["attention"] = config["mha_jax_attention"]
  model = interop.model_from_pretrained(directory, **overrides)
  params = interop.load_pretrained(directory, model)
  return model, params, pretrained_tokenizer(directory, config), config.get("eos_token_id")


def pretrained_tokenizer(directory, config):
  """Its own tokenizer files, else GPT-2 BPE for a 50257-token GPT-2, else None."""
  if any(os.path.exists(os.path.join(directory, f)) for f in TOKENIZER_FILES):
    import transformers
    return HFTokenizer(transformers.AutoTokenizer.from_pretrained(directory))
  if config.get("model_type") == "gpt2" and config.get("vocab_size") == 50257:
    return tokenizers.gpt2_tokenizer("")
  return None


def load(path):
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return load_workdir(path)
  if os.path.exists(os.path.join(path, "config.json")):
    return load_pretrained_directory(path)
  raise ValueError(f"--checkpoint={path!r} is neither a training workdir (config.json + "
                   "checkpoints/) nor a checkpoint directory with a config.json")


def prompt_tokens(tokenizer, prompt, prompt_ids, vocab_size):
  if (prompt is None) == (prompt_ids is None):
    raise ValueError("give exactly one of --prompt and --prompt_ids")
  if prompt is not None:
    if tokenizer is None:
      raise ValueError("--prompt needs a tokenizer, and this checkpoint has none: "
                       "use --prompt_ids")
    ids = tokenizer.encode_batch([prompt])[0]
  else:
    ids = [int(i) for i in prompt_ids]
  if not ids or min(ids) < 0 or max(ids) >= vocab_size:
    raise ValueError(f"prompt ids {ids} must be non-empty and within [0, {vocab_size})")
  return ids


def until_eos(ids, eos_id):
  """Generated ids up to and including the first end-of-text token (`eos_id`: an id,
  a list of ids as some config.json files give, or None)."""
  stops = set(eos_id) if isinstance(eos_id, (list, tuple)) else {eos_id}
  for position, token in enumerate(ids):
    if token in stops:
      return ids[:position + 1]
  return ids


def sample(checkpoint_path, *, prompt=None, prompt_ids=None, max_new_tokens=64,
           temperature=0.8, top_k=0, top_p=1.0, seed=0):
  """{"tokens": generated ids, "text": their text or None, "prompt_tokens": ids}."""
  model, params, tokenizer, eos_id = load(checkpoint_path)
  ids = prompt_tokens(tokenizer, prompt, prompt_ids, model.vocab_size)
  if len(ids) + max_new_tokens > model.max_len:
    raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens={max_new_tokens} exceeds "
                     f"the model's max_len={model.max_len}")
  sampling = decode.Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
  tokens_1xN, _ = decode.generate(model, jax.tree.map(jnp.asarray, params),
                                  np.asarray([ids], np.int32), max_new_tokens=max_new_tokens,
                                  sampling=sampling, key=jax.random.key(seed))
  new = until_eos(np.asarray(tokens_1xN[0]).tolist(), eos_id)
  return {"tokens": new, "text": None if tokenizer is None else tokenizer.decode(new),
          "prompt_tokens": ids}


def main(argv):
  del argv
  if FLAGS.checkpoint is None:
    raise app.UsageError("--checkpoint is required")
  result = sample(FLAGS.checkpoint, prompt=FLAGS.prompt, prompt_ids=FLAGS.prompt_ids,
                  max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                  top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed)
  print(result["text"] if result["text"] is not None else result["tokens"])
  if FLAGS.json:
    print(json.dumps({"tokens": result["tokens"], "text": result["text"]}))


if __name__ == "__main__":
  app.run(main)
