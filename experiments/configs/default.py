r"""Default: full NHL (DPN, weighting + distillation) on the offline MNIST-5k.

    python experiments/run.py --method=dpn

trains 8/16/32/64/128-bit codes in ONE run of the small CNN on 2,000 MNIST
training images (protocol in nhl_jax/data: 100 query images per class, the
other 4,000 are the database, 200 training images per class drawn from the
database, seed 0), evaluating mAP@all on the 1,000 queries every 5 epochs.

Any field can be overridden, e.g. ``--config.learning_rate=3e-4``, and the
flags of run.py (``--method``, ``--bits``, ...) override these fields.
"""

import ml_collections


def get_config():
    """Returns the default configuration."""
    config = ml_collections.ConfigDict()
    # What to train.
    config.method = 'dpn'  # a key of nhl_jax.losses.LOSSES, or 'mah' / 'odh'
    config.head = 'nested'  # 'nested' | 'flat' | 'cascade' (flat/cascade: MAH)
    config.loss_kwargs = ml_collections.ConfigDict()  # e.g. {'margin': 1.0}
    config.dataset = 'mnist5k'  # a key of nhl_jax.data.DATASETS
    # CIFAR-10: the tfds data directory; list-file datasets: their root.
    config.data_dir = ml_collections.config_dict.placeholder(str)
    config.data_workers = 0  # processes decoding image files (0: inline)
    config.backbone = ml_collections.config_dict.placeholder(str)  # None: the dataset's
    config.backbone_kwargs = ml_collections.ConfigDict()  # e.g. input_size
    # Local pretrained weights (torchvision .npz/.pth for resnet18/50).
    config.pretrained = ml_collections.config_dict.placeholder(str)
    config.bits = (8, 16, 32, 64, 128)
    config.single_length = False  # True: one run per length (the baseline)
    # The NHL objective.
    config.weighting = 'paper'  # 'none' | 'paper' | 'released'
    config.distill_weight = 0.1  # lambda of the cascade distillation
    config.topology = 'adjacent'  # distillation teachers
    # Optimisation (torch Adam with coupled weight decay, as the NHL code).
    config.learning_rate = 1e-3
    config.weight_decay = 1e-5
    # The backbone's own rate (None: learning_rate), e.g. lower when fine-
    # tuning a pretrained network; or freeze it (features only).
    config.backbone_learning_rate = ml_collections.config_dict.placeholder(
        float)
    config.freeze_backbone = False
    config.compute_dtype = 'float32'  # 'bfloat16': mixed precision forward
    config.batch_size = 64
    config.epochs = 40
    config.seed = 0
    # Data parallelism: devices of the ('data',) mesh; None means all of them
    # (of every process). The global batch must split evenly over them.
    config.devices = ml_collections.config_dict.placeholder(int)
    # Evaluation and early stopping (NHL: stop after `patience` evaluations
    # in which no length improved).
    config.eval_every = 5
    config.patience = 4
    config.eval_batch_size = 500
    config.top_k = ml_collections.config_dict.placeholder(int)  # None: dataset's
    # Settings of the other systems (used only with --method=mah / odh).
    config.mah = ml_collections.ConfigDict()
    config.odh = ml_collections.ConfigDict()
    return config
