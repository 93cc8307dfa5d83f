"""α / α′ ablation on ViT-Ti, CIFAR-100 (spec §4): α and α′ set independently.
Same recipe as configs/vit_cifar.py (it builds on it).

  python -m mha_jax.main --config=configs/ablation_alpha.py:alpha=0.5,alpha_hidden=0.2 \\
      --workdir=runs/abl_a05_h02

Paper rows (top-1 %): α=0.5 fixed: best α′=0.2 → 72.29, α′=1 → 66.10;
α′=0.5 fixed: best α=0.6 → 72.66, α=1 → 1.00 (attention removed: chance),
α=0 → 69.89, α′=0 → 71.16. Sweep α′ ∈ {0, 0.1, …, 1} at α=0.5 and α ∈ {0, …, 1}
at α′=0.5 to draw both curves. `residual=convex` runs the spec's reading of the
residual; the default scaled branch is the one that reproduced this pattern at
CPU scale (RESULTS.md row k). `smoke` as in vit_cifar.
"""

import os

from mha_jax import config_util


# `:key=value` arguments of this config and their defaults (typed by them).
ARGUMENTS = dict(alpha=0.5, alpha_hidden=0.5, residual=config_util.DEFAULT_RESIDUAL, smoke=False)


def get_config(arg=None):
  a = config_util.parse_arg(arg, **ARGUMENTS)
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vit_cifar.py")
  return config_util.load_config(
      f"{base}:size=Ti,dataset=cifar100,attention=hopfield,alpha={a.alpha},"
      f"alpha_hidden={a.alpha_hidden},residual={a.residual},smoke={a.smoke}")
