"""Linear-probe transfer of an ImageNet-1k ViT-B/16 (configs/vit_imagenet.py) to
Oxford Flowers-102, Food-101, Stanford Dogs, Stanford Cars (spec §4): the
backbone is frozen (`optim.trainable` = the head only) and a new head is trained.

  python -m mha_jax.main --config=configs/transfer.py:dataset=food101,attention=hopfield,alpha=0.7 \\
      --config.init_from=runs/vit_b16_i1k_mha07 --workdir=runs/probe_food_mha07

`attention` must match the checkpoint's model. Paper: MHA better on 3 of the 4
datasets (numbers not recovered). `smoke` trains a 2-layer ViT on the offline digits
(all parameters: a fresh backbone has nothing to probe).
"""

from mha_jax import config_util


# `:key=value` arguments of this config and their defaults (typed by them).
ARGUMENTS = dict(dataset="oxford_flowers102", variant="B/16", attention="standard", alpha=0.5,
                 alpha_hidden=None, residual=config_util.DEFAULT_RESIDUAL, steps=5000, smoke=False)


def get_config(arg=None):
  a = config_util.parse_arg(arg, **ARGUMENTS)
  config = config_util.base_config()
  config.update(total_steps=a.steps, batch_size=512, eval_batch_size=512, log_every=50,
                eval_every=1000, checkpoint_every=1000, init_from="",
                init_from_exclude="^head/")   # a new head for the new classes
  config.data = config_util.data_config(a.dataset, image_size=224, crop="random_resized_crop")
  config.model = dict(name="vit", variant=a.variant, dtype="bfloat16",
                      attention=config_util.attention_config(a.attention, a.alpha,
                                                             a.alpha_hidden, a.residual))
  config.optim.update(learning_rate=1e-2, warmup_steps=200, weight_decay=0.0,
                      trainable="^head/")
  if a.smoke:
    config_util.shrink_to_smoke(config)
  return config
