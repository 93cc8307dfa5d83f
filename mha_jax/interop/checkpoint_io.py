"""Reading and writing PyTorch checkpoints in a local directory, Hugging Face layout:
config.json beside model.safetensors (or shards with an index), pytorch_model.bin,
or a single *.safetensors / *.bin / *.pt / *.pth (timm). Never downloads.

Tensors come back as float32 (or integer) NumPy arrays, whatever they were stored
as: bfloat16 has no NumPy dtype, and the model casts to its own param_dtype.
torch is needed only for .bin/.pt files and for bfloat16 safetensors.
"""

from __future__ import annotations

import json
import os

import numpy as np

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def find_weights(directory):
  """The weights file of a checkpoint directory (or the file itself)."""
  if os.path.isfile(directory):
    return directory
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory {directory!r}")
  for name in WEIGHT_FILES:
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  candidates = sorted(n for n in os.listdir(directory) if n.endswith(WEIGHT_SUFFIXES))
  if len(candidates) != 1:
    raise FileNotFoundError(f"{directory}: expected one weights file ({', '.join(WEIGHT_FILES)} "
                            f"or a single *{'/*'.join(WEIGHT_SUFFIXES)}), found {candidates}")
  return os.path.join(directory, candidates[0])


def read_config(directory):
  """config.json as a dict, or {} when there is none (a bare timm weights file)."""
  root = directory if os.path.isdir(directory) else os.path.dirname(directory)
  path = os.path.join(root, "config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def read_checkpoint(directory):
  """(config dict, {name: np.ndarray}) from a local checkpoint directory or file."""
  path = find_weights(directory)
  if path.endswith(".index.json"):
    with open(path) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    state_dict = {}
    for shard in shards:
      state_dict.update(_read_file(os.path.join(os.path.dirname(path), shard)))
  else:
    state_dict = _read_file(path)
  return read_config(directory), state_dict


def _read_file(path):
  if path.endswith(".safetensors"):
    try:
      import safetensors.torch
    except ImportError:  # no torch: fine unless the file holds bfloat16
      import safetensors.numpy
      return dict(safetensors.numpy.load_file(path))
    return _to_numpy(safetensors.torch.load_file(path))
  import torch
  loaded = torch.load(path, map_location="cpu", weights_only=True)
  for wrapper in ("state_dict", "model"):  # training checkpoints wrap the weights
    if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
      loaded = loaded[wrapper]
  return _to_numpy(loaded)


def _to_numpy(tensors):
  import torch
  return {k: (t.detach().to(torch.float32) if t.is_floating_point() else t.detach()).numpy()
          for k, t in tensors.items()}


def write_checkpoint(directory, config, state_dict, weights_format="safetensors"):
  """config.json plus model.safetensors (or pytorch_model.bin) into `directory`."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
  if weights_format == "safetensors":
    import safetensors.numpy
    # "format": "pt" is what transformers' loader asks of a safetensors file.
    safetensors.numpy.save_file(arrays, os.path.join(directory, "model.safetensors"),
                                metadata={"format": "pt"})
  elif weights_format == "bin":
    import torch
    torch.save({k: torch.from_numpy(v.copy()) for k, v in arrays.items()},
               os.path.join(directory, "pytorch_model.bin"))
  else:
    raise ValueError(f"weights_format={weights_format!r}; allowed: 'safetensors', 'bin'")
