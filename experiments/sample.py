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

Without --prompt / --prompt_ids the sample starts from the end-of-text token (a new
document); --max_new_tokens defaults to as many as fit in the model's max_len, at
most 64. A bad invocation (a missing checkpoint, a ViT run, an empty prompt, ids
outside the vocabulary, characters outside the tokenizer, a prompt too long for
max_len) ends in one `error:` line and exit 1; --debug shows the traceback.
"""

import json
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mha_jax import data, decode, script_cli
from mha_jax.data import tokenizers
from mha_jax.train import checkpoint, tasks
from mha_jax.train import train as train_lib

FLAGS = flags.FLAGS
DEFAULT_NEW_TOKENS = 64
TEXT_FAMILIES = ("gpt2", "llama")
flags.DEFINE_string("checkpoint", None, "training workdir or Hugging Face / PyTorch directory")
flags.DEFINE_string("prompt", None, "prompt text (needs a tokenizer)")
flags.DEFINE_list("prompt_ids", None, "prompt token ids, comma-separated")
flags.DEFINE_integer("max_new_tokens", None, "tokens to generate after the prompt; default: "
                     f"as many as fit in the model's max_len, at most {DEFAULT_NEW_TOKENS}")
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
  check_text_family(config.get("model", {}).get("name"), workdir)
  config.eval_batch_size = 1
  info = train_lib.make_input(config, train=False).info
  model = train_lib.make_model(config.model, tasks.make_task(config, info))
  return (model, checkpoint.load_init_params(workdir, model), run_tokenizer(config.data),
          info.eos_id)


def check_text_family(name, path):
  if name not in TEXT_FAMILIES:
    raise script_cli.ScriptError(f"--checkpoint={path} holds a {name!r} model; sample.py "
                                 f"generates text from {' or '.join(TEXT_FAMILIES)} models only")


def load_pretrained_directory(directory):
  """(model, params, tokenizer, end-of-text id) of a Hugging Face / PyTorch directory."""
  from mha_jax import interop  # torch is optional: import only when asked for
  from mha_jax.interop import checkpoint_io
  config = checkpoint_io.read_config(directory)
  check_text_family(config.get("model_type", "").removeprefix("mha_"), directory)
  overrides = {}
  if "mha_jax_attention" in config:
    overrides["attention"] = config["mha_jax_attention"]
  model = interop.model_from_pretrained(directory, **overrides)
  params = interop.load_pretrained(directory, model)
  return model, params, pretrained_tokenizer(directory, config), config.get("eos_token_id")


def pretrained_tokenizer(directory, config):
  """Its own tokenizer files, else GPT-2 BPE for a 50257-token GPT-2, else None."""
  if os.path.exists(os.path.join(directory, "tokenizer.json")):
    import transformers   # the tokenizer alone: no custom code runs (the model is JAX's)
    return HFTokenizer(transformers.PreTrainedTokenizerFast.from_pretrained(directory))
  if any(os.path.exists(os.path.join(directory, f)) for f in TOKENIZER_FILES):
    import transformers
    return HFTokenizer(transformers.AutoTokenizer.from_pretrained(directory))
  if config.get("model_type") == "gpt2" and config.get("vocab_size") == 50257:
    return tokenizers.gpt2_tokenizer("")
  return None


def load(path):
  if not os.path.exists(path):
    raise script_cli.ScriptError(f"--checkpoint={path}: no such file or directory")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return load_workdir(path)
  if os.path.exists(os.path.join(path, "config.json")):
    return load_pretrained_directory(path)
  raise ValueError(f"--checkpoint={path!r} is neither a training workdir (config.json + "
                   "checkpoints/) nor a checkpoint directory with a config.json")


def prompt_tokens(tokenizer, prompt, prompt_ids, vocab_size, eos_id):
  """The prompt's ids; no prompt at all starts a new document (the end-of-text id)."""
  if prompt is not None and prompt_ids is not None:
    raise script_cli.ScriptError("give one of --prompt and --prompt_ids, not both")
  if prompt is not None:
    ids = text_ids(tokenizer, prompt)
  elif prompt_ids is not None:
    ids = parse_ids(prompt_ids)
  else:
    first_eos = eos_id[0] if isinstance(eos_id, (list, tuple)) and eos_id else eos_id
    if not isinstance(first_eos, int):
      raise script_cli.ScriptError("this checkpoint has no end-of-text token to start from: "
                                   "give --prompt or --prompt_ids")
    ids = [first_eos]
  outside = sorted({i for i in ids if not 0 <= i < vocab_size})
  if outside:
    raise script_cli.ScriptError(f"prompt ids {outside} are outside the vocabulary: "
                                 f"ids must be in [0, {vocab_size})")
  return ids


def text_ids(tokenizer, prompt):
  if tokenizer is None:
    raise script_cli.ScriptError("--prompt needs a tokenizer, and this checkpoint has none: "
                                 "use --prompt_ids")
  if not prompt:
    raise script_cli.ScriptError("--prompt='' is empty: give some text, or leave --prompt out "
                                 "to start from the end-of-text token")
  alphabet = getattr(tokenizer, "chars", None)   # a character tokenizer knows its alphabet
  if alphabet is not None:
    unknown = sorted(set(prompt) - set(alphabet))
    if unknown:
      raise script_cli.ScriptError(f"--prompt has characters outside the tokenizer: {unknown!r}; "
                                   f"allowed: {''.join(alphabet)!r}")
  ids = tokenizer.encode_batch([prompt])[0]
  if not ids:
    raise script_cli.ScriptError(f"--prompt={prompt!r} encodes to no tokens")
  return ids


def parse_ids(prompt_ids):
  if not prompt_ids:
    raise script_cli.ScriptError("--prompt_ids is empty: give comma-separated token ids")
  try:
    return [int(i) for i in prompt_ids]
  except ValueError:
    raise script_cli.ScriptError(f"--prompt_ids={','.join(prompt_ids)}: ids must be "
                                 "integers, comma-separated") from None


def new_token_count(max_new_tokens, prompt_length, max_len):
  """--max_new_tokens, checked against max_len; None: as many as fit, at most 64."""
  room = max_len - prompt_length
  if max_new_tokens is None:
    if room < 1:
      raise script_cli.ScriptError(f"the prompt has {prompt_length} tokens, which leaves no "
                                   f"room to generate within the model's max_len={max_len}")
    return min(DEFAULT_NEW_TOKENS, room)
  if max_new_tokens < 1 or max_new_tokens > room:
    raise script_cli.ScriptError(
        f"--max_new_tokens={max_new_tokens} with a {prompt_length}-token prompt: allowed "
        f"1..{room} (prompt + new tokens <= the model's max_len={max_len})")
  return max_new_tokens


def until_eos(ids, eos_id):
  """Generated ids up to and including the first end-of-text token (`eos_id`: an id,
  a list of ids as some config.json files give, or None)."""
  stops = set(eos_id) if isinstance(eos_id, (list, tuple)) else {eos_id}
  for position, token in enumerate(ids):
    if token in stops:
      return ids[:position + 1]
  return ids


def sample(checkpoint_path, *, prompt=None, prompt_ids=None, max_new_tokens=None,
           temperature=0.8, top_k=0, top_p=1.0, seed=0):
  """{"tokens": generated ids, "text": their text or None, "prompt_tokens": ids}."""
  sampling = decode.Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
  model, params, tokenizer, eos_id = load(checkpoint_path)
  ids = prompt_tokens(tokenizer, prompt, prompt_ids, model.vocab_size, eos_id)
  max_new_tokens = new_token_count(max_new_tokens, len(ids), model.max_len)
  tokens_1xN, _ = decode.generate(model, jax.tree.map(jnp.asarray, params),
                                  np.asarray([ids], np.int32), max_new_tokens=max_new_tokens,
                                  sampling=sampling, key=jax.random.key(seed))
  new = until_eos(np.asarray(tokens_1xN[0]).tolist(), eos_id)
  return {"tokens": new, "text": None if tokenizer is None else tokenizer.decode(new),
          "prompt_tokens": ids}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.checkpoint is None:
    raise app.UsageError("--checkpoint is required: a training workdir or a Hugging Face "
                         "directory")
  result = sample(FLAGS.checkpoint, prompt=FLAGS.prompt, prompt_ids=FLAGS.prompt_ids,
                  max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                  top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed)
  print(result["text"] if result["text"] is not None else result["tokens"])
  if FLAGS.json:
    print(json.dumps({"tokens": result["tokens"], "text": result["text"]}))


script_cli.define_debug_flag()

if __name__ == "__main__":
  app.run(script_cli.guarded(main))
