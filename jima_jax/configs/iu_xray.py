r"""IU X-ray with the paper's hyper-parameters (spec sections 3, 4, 6); ':release' = the authors'
code.

  python -m jima_jax.main --config configs/iu_xray.py --mode prepare \
      --config.data.source_dir=/data/iu_xray
  python -m jima_jax.main --config configs/iu_xray.py --workdir runs/iu_xray \
      --config.data.source_dir=/data/iu_xray --config.model.pretrained=/weights/resnet101.pth
  python -m jima_jax.main --config configs/iu_xray.py:release --workdir runs/iu_xray_release ...

`data.source_dir` is the R2Gen layout (annotation.json + images/<id>/0.png, 1.png); the raw OpenI
archives under `--config.data.manual_dir` work too (`--download` fetches them). ImageNet weights
are a local torchvision file (`resnet101-*.pth` or `.safetensors`); nothing is downloaded.
"""

from jima_jax.configs import default


def get_config(arg=None):
    variant = arg or 'paper'
    if variant not in ('paper', 'release'):
        raise ValueError(f"configs/iu_xray.py:{arg}: expected ':paper' (default) or ':release'.")
    c = default.get_config()
    c.data.name = 'iu_xray'
    c.data.num_views = 2
    c.data.min_count = 3
    c.data.max_len = 60
    c.data.resize = 'short_side'  # the release's aspect-preserving resize, then crop
    c.data.abnormal_from = 'dataset'  # MeSH "normal" from the OpenI XML
    c.input.batch_size = 16
    c.input.flip = True  # R2Gen's RandomHorizontalFlip, for parity with published numbers
    c.model.backbone = 'resnet101'
    c.model.fusion_dropout = 0.5  # R2Gen's and the release's; the paper gives none
    c.train.num_epochs = 100
    c.decode.beam_size = 3
    c.decode.max_len = 60
    c.curriculum.schedule = 'jima'
    c.curriculum.warmup_epochs = 30  # 30 regular + 70 curriculum epochs
    default.select_by_val_bleu4(c)  # best by val BLEU-4, as R2Gen and the release pick it
    if variant == 'release':
        default.use_release_recipe(c, decay_rate=0.1, decay_every_epochs=50)
    return c
