"""Depth study without skip connections (spec §4): ViT on CIFAR-10/100 at depth
1, 2, 4, 8, 12, standard attention vs MHA. Recipe of configs/vit_cifar.py.

  python -m mha_jax.main --config=configs/noskip_depth.py:depth=4,attention=hopfield \\
      --workdir=runs/noskip_d4_mha

Paper (CIFAR-10 / CIFAR-100 top-1 % at depth 1, 2, 4, 8, 12):
  standard 55.08/30.90, 63.72/40.06, 57.38/32.25, 48.59/17.19, 10/1
  MHA      65.41/40.08, 79.75/56.94, 85.74/64.39, 80.34/49.90, 10/1
`skip_connections=False` in the model: x ← Attn(Norm x), then x ← MLP(Norm x)
(MHA keeps its hidden state H, which is the point of the study).
"""

import os

from mha_jax import config_util


# `:key=value` arguments of this config and their defaults (typed by them).
ARGUMENTS = dict(depth=4, dataset="cifar10", attention="standard", alpha=0.5, epochs=100,
                 smoke=False)


def get_config(arg=None):
  a = config_util.parse_arg(arg, **ARGUMENTS)
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vit_cifar.py")
  return config_util.load_config(
      f"{base}:size=Ti,dataset={a.dataset},attention={a.attention},alpha={a.alpha},"
      f"depth={a.depth},epochs={a.epochs},skip=False,smoke={a.smoke}")
