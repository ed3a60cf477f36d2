r"""The `make demo` run: JIMA on the built-in phantom corpus, about 10 CPU-minutes.

  python -m jima_jax.main --config configs/demo.py --workdir runs/demo
  python -m jima_jax.main --config configs/demo.py:long --workdir runs/demo_long

The recipe was chosen by measurement (experiments/reading_sweep.py and the demo runs in the README,
"Models that read the radiograph"): 3,000 studies, f_R first pre-trained on the labels the labeler
reads from the training reports (`pretrain.steps`), then Algorithm 1 at constant learning rates
2e-3 (alpha) / 1e-3 (beta), with a ResNet-18 of a quarter of torchvision's width
(`model.backbone_width=16`, about 1/16 of its FLOPs): its steps cost a third as much, so the
10 minutes buy 900 pre-training and 2,618 training steps instead of 300 + 748, and the model
reads its images clearly. Since the evening of 2026-12-07 f_R is frozen after pre-training
(`optim.task1.visual_lr=0`): the step skips f_R's backward pass, so 20 epochs (3,740 steps) take
less time than the 14 with f_R trained, and the report model names more of the findings.
':long' (width 64, 400 + 3,200 steps, about 25-30 minutes on 2 CPU
cores) is the full-width run the README quotes; ':wide' is the demo of 2026-12-04 to 12-07
(width 64, 300 + 748 steps, at the onset of reading); ':tiny' is the former 3-minute demo (480
studies, 180 steps), which writes one report for every study. ':more_pretraining' (about 12
minutes) pre-trains f_R four times as long, on all 16 findings the labeler reads
(`pretrain.targets='findings'`): the README's best measured phantom-truth F1 per CPU minute.
"""
from jima_jax.configs import default


def get_config(arg=None):
    if arg not in (None, '', 'long', 'wide', 'tiny', 'more_pretraining'):
        raise ValueError(f"configs/demo.py:{arg}: expected no variant, ':long', ':wide', "
                         "':tiny' or ':more_pretraining'.")
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
    c.pretrain.steps = 900
    c.pretrain.batch_size = 32
    c.optim.task1.lr = 2e-3
    c.optim.task2.lr = 1e-3
    c.optim.task1.decay_rate = c.optim.task2.decay_rate = 1.0
    # f_R frozen after pre-training: Task 1 trains f_E alone, the step skips f_R's backward pass
    # (about half the step), and the pre-trained features are kept (README: better phantom-truth
    # F1 in both seeds measured, in less time than 14 epochs with f_R trained)
    c.optim.task1.visual_lr = 0.0
    c.train.num_epochs = 20  # 3,740 steps
    c.train.log_every_steps = 50
    c.decode.max_len = 48
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
    if arg == 'more_pretraining':  # the demo's recipe with a backbone that sees more
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
