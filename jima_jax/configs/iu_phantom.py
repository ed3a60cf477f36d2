r"""The IU-phantom benchmark: real IU X-ray report text, phantom images (docs/phantom.md).

  python -m jima_jax.main --config configs/iu_phantom.py --workdir runs/iu_phantom
  python -m jima_jax.main --config configs/iu_phantom.py:small --workdir runs/iu_phantom_small \
      --config.curriculum.schedule=jima --config.seed=1
  python -m jima_jax.main --config configs/iu_phantom.py:cpu --workdir runs/iu_phantom_cpu
  python -m jima_jax.main --config configs/iu_phantom.py:cpu --workdir runs/iu_phantom_cpu \
      --mode eval --checkpoint latest

':paper' (default) keeps the paper's IU X-ray hyper-parameters (spec sections 3, 6): ResNet-101 at
224 px, the 3-layer Transformer, alpha 4e-4 / beta 1e-5 decayed x0.8 per epoch, batch 16, 100
epochs of which 30 are warm-up, the `jima` curriculum, beam 3. ':small' is sized for a few CPU
cores (the curriculum experiment's first runs): the frontal view only at 48 px, ResNet-18, a
2-layer width-128 Transformer, 5 epochs of which 2 are warm-up, larger learning rates so that a
few epochs learn something; it never reads its images. ':cpu' is the measured recipe of 22-26
CPU-minutes on 2 cores (README, "Models that read the radiograph"): a quarter-width ResNet-18,
both views at 64 px, 1,200 label pre-training steps, constant rates 2e-3 / 1e-3, 4,800 steps, no
curriculum, and 10 drawings of every training study (`data.phantom.train_renders`). Score its
last checkpoint (`--checkpoint latest`): on IU-phantom the validation loss is lowest before the
model starts to read, so the best-by-loss checkpoint is a blind one. Horizontal flips stay off:
the phantom draws laterality, and a flip would make "left" and "right" unpredictable. The reports
come from the shared IU X-ray annotation.json (JIMA_SHARED_DATA, or --config.data.source_dir).
"""

from jima_jax.configs import default


def get_config(arg=None):
    variant = arg or 'paper'
    if variant not in ('paper', 'small', 'cpu'):
        raise ValueError(f"configs/iu_phantom.py:{arg}: expected ':paper' (default), ':small' or "
                         "':cpu'.")
    c = default.get_config()
    c.data.name = 'iu_phantom'
    c.data.num_views = 2
    c.data.min_count = 3
    c.data.max_len = 60
    c.data.abnormal_from = 'dataset'  # the phantom's findings (the images are drawn from them)
    c.input.batch_size = 16
    c.model.backbone = 'resnet101'
    c.train.num_epochs = 100
    c.decode.beam_size = 3
    c.decode.max_len = 60
    c.curriculum.schedule = 'jima'
    c.curriculum.warmup_epochs = 30
    if variant == 'paper':
        default.select_by_val_bleu4(c)  # best by val BLEU-4, as R2Gen and the release pick it
    if variant in ('small', 'cpu'):
        c.data.num_views = 1  # the frontal view
        c.data.image_size = 56
        c.input.image_size = 48
        c.input.eval_batch_size = 64
        default.use_cpu_minutes_model(c)
        c.train.num_epochs = 5
        c.train.log_every_steps = 20
        c.curriculum.warmup_epochs = 2
    if variant == 'cpu':
        c.model.backbone_width = 16
        c.data.num_views = 2
        c.data.image_size = 72
        c.input.image_size = 64
        c.data.phantom.train_renders = 10
        c.pretrain.steps = 1200
        c.pretrain.batch_size = 32
        c.optim.task1.lr = 2e-3
        c.optim.task2.lr = 1e-3
        c.optim.task1.decay_rate = c.optim.task2.decay_rate = 1.0
        c.curriculum.schedule = 'none'
        c.train.num_epochs = 100
        c.train.max_steps = 4800
        c.train.log_every_steps = 100
    return c
