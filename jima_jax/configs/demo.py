r"""The `make demo` run: JIMA on the built-in phantom corpus, about 10 CPU-minutes.

  python -m jima_jax.main --config configs/demo.py --workdir runs/demo
  python -m jima_jax.main --config configs/demo.py:long --workdir runs/demo_long

The recipe was chosen by measurement (experiments/reading_sweep.py and the demo runs in the README,
"Models that read the radiograph"): 3,000 studies, f_R first pre-trained on the labels the labeler
reads from the training reports (`pretrain.steps`, all 16 findings: `pretrain.targets`), then
frozen (`optim.task1.visual_lr=0`) while Algorithm 1 trains f_E and the report model at constant
learning rates 2e-3 (alpha) / 1e-3 (beta), on a ResNet-18 of a quarter of torchvision's width
(`model.backbone_width=16`, about 1/16 of its FLOPs). The frozen f_R's features are computed once
and read from a table (`train.feature_cache`): a training step then costs about half as much, and
the minutes saved buy 1,800 pre-training steps instead of 900, a backbone that sees more. 18
epochs (3,366 steps): both 20-epoch runs measured chose their best checkpoint at that step.
':uncached' is the demo of the evening of 2026-12-07 (900 pre-training steps on the 13 CheXpert
findings, f_R run on every batch); ':more_pretraining' is that recipe with 3,600 pre-training
steps on the 16 findings (about 12 minutes on an AMD EPYC). ':long' (width 64, 400 + 3,200
steps, about 25-30 minutes on 2 CPU cores, f_R trained in Task 1) is the full-width run the
README quotes; ':wide' is the demo of 2026-12-04 to 12-07 (width 64, 300 + 748 steps, at the
onset of reading); ':tiny' is the former 3-minute demo (480 studies, 180 steps), which writes
one report for every study.
"""
from jima_jax.configs import default

VARIANTS = (None, '', 'uncached', 'more_pretraining', 'long', 'wide', 'tiny')


def get_config(arg=None):
    if arg not in VARIANTS:
        raise ValueError(f"configs/demo.py:{arg}: expected no variant, ':uncached', "
                         "':more_pretraining', ':long', ':wide' or ':tiny'.")
    c = default.get_config()
    c.data.name = 'phantom'
    c.data.image_size = 72
    c.data.max_len = 48
    c.data.max_entities = 24
    c.data.phantom.num_train = 3000  # with 480 studies the model memorises instead of reading
    c.data.phantom.num_val = 64
    c.data.phantom.num_test = 96
    c.input.batch_size = 16
    c.input.eval_batch_size = 32
    c.input.image_size = 64
    default.use_cpu_minutes_model(c)
    c.model.backbone_width = 16  # a third of the step time of width 64: more steps per minute
    c.pretrain.steps = 1800
    c.pretrain.batch_size = 32
    c.pretrain.targets = 'findings'  # with 1,800+ steps f_R also learns granuloma, spine, hernia
    c.optim.task1.lr = 2e-3
    c.optim.task2.lr = 1e-3
    c.optim.task1.decay_rate = c.optim.task2.decay_rate = 1.0
    # f_R frozen after pre-training: Task 1 trains f_E alone, the step skips f_R's backward pass
    # (about half the step), and the pre-trained features are kept (README: better phantom-truth
    # F1 in both seeds measured, in less time than 14 epochs with f_R trained)
    c.optim.task1.visual_lr = 0.0
    # the frozen f_R's features once, in a table: the step runs f_E and the report model only
    c.train.feature_cache = True
    # 18 epochs, 3,366 steps: the best checkpoint by validation loss of the 20-epoch runs
    # measured (both seeds), so the same model in less time
    c.train.num_epochs = 18
    c.train.log_every_steps = 50
    c.decode.max_len = 48
    if arg in ('uncached', 'more_pretraining', 'long', 'wide', 'tiny'):  # measured uncached
        c.train.feature_cache = False
        c.pretrain.steps = 900
        c.pretrain.targets = 'chexpert'
        c.train.num_epochs = 20  # 3,740 steps
    if arg in ('long', 'wide', 'tiny'):
        c.model.backbone_width = 64
        c.optim.task1.visual_lr = -1.0  # f_R trained in Task 1, as measured for these variants
        c.pretrain.steps = 300
        c.train.num_epochs = 4
        c.train.log_every_steps = 25
    if arg == 'long':
        c.pretrain.steps = 400
        c.train.num_epochs = 18
        c.train.max_steps = 3200
        c.train.log_every_steps = 50
    if arg == 'more_pretraining':  # ':uncached' with a backbone that sees more
        c.pretrain.steps = 3600
        c.pretrain.targets = 'findings'
    if arg == 'tiny':  # the demo before 2026-12-04
        c.data.phantom.num_train = 480
        c.pretrain.steps = 0
        c.optim.task1.lr = c.optim.task2.lr = 5e-4
        c.optim.task1.decay_rate = c.optim.task2.decay_rate = 0.9
        c.train.num_epochs = 6
        c.train.log_every_steps = 10
    return c
