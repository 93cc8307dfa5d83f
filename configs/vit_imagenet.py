"""ViT-B/16 from scratch on ImageNet-1k (spec §4), DeiT recipe: batch 1024,
AdamW lr 1e-3, wd 0.05, 300 epochs (5 warmup), label smoothing 0.1,
RandAugment 2/9, mixup 0.8 / cutmix 1.0, random-resized crops, eval at 0.875.

  python -m mha_jax.main --config=configs/vit_imagenet.py:attention=hopfield,alpha=0.7 \\
      --workdir=runs/vit_b16_i1k_mha07

Paper top-1 % (standard / α=α′=0.5 / α=α′=0.7): 76.07 / 76.43 / 77.06.
Expected: MHA ≥ standard by a few tenths to one point. ~300 epochs is on the
order of a thousand accelerator-hours; `mesh.fsdp` / `remat_policy` are the
knobs for memory (H adds B·heads·T²·4 bytes per layer). `smoke` as in vit_cifar.
"""

from mha_jax import config_util

TRAIN_EXAMPLES = 1_281_167


# `:key=value` arguments of this config and their defaults (typed by them).
ARGUMENTS = dict(variant="B/16", attention="standard", alpha=0.5, alpha_hidden=None,
                 residual=config_util.DEFAULT_RESIDUAL, epochs=300, batch_size=1024, smoke=False)


def get_config(arg=None):
  a = config_util.parse_arg(arg, **ARGUMENTS)
  config = config_util.base_config()
  steps_per_epoch = TRAIN_EXAMPLES // a.batch_size
  config.total_steps = a.epochs * steps_per_epoch
  config.batch_size = config.eval_batch_size = a.batch_size
  config.label_smoothing = 0.1
  config.log_every, config.eval_every = 100, 5 * steps_per_epoch
  config.checkpoint_every = 2000
  config.data = config_util.data_config("imagenet2012", image_size=224, randaugment_layers=2,
                                        mixup_alpha=0.8, cutmix_alpha=1.0)
  config.model = dict(name="vit", variant=a.variant, dtype="bfloat16",
                      attention=config_util.attention_config(a.attention, a.alpha,
                                                             a.alpha_hidden, a.residual))
  config.optim.update(learning_rate=1e-3 * a.batch_size / 1024,
                      warmup_steps=5 * steps_per_epoch, weight_decay=0.05)
  if a.smoke:
    config_util.shrink_to_smoke(config)
  return config
