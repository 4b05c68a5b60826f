r"""ODH (one-bit deep hashing): binary backbone, semantic centres, two stages.

Offline (the default argument, ``mnist5k``; minutes on a CPU)::

    nhl-jax train --config=odh \
        --backbone=bnn_cnn

trains 8/16/32/64/128-bit codes at once on the binary CNN: 3 warm-up
epochs of the full-precision ``cnn`` classifier, then 12 main epochs,
stage 1 (exploration) for 4, stage 2 (aggregation) after; mAP@all every
4 epochs. ``--backbone=cnn`` gives the full-precision counterpart and
``--config.odh.centers=hadamard`` replaces the semantic centres by CSQ's
fixed ones (benchmarks/odh_table.py runs all four).

The paper's CIFAR-100 setting (``cifar100``; 5,000 query / 10,000 train /
55,000 database, mAP@500), given the tfds copy of CIFAR-100
(``tfds build cifar100 --data_dir=DIR --file_format=array_record``)::

    nhl-jax train --config=odh:cifar100 \
        --config.data_dir=~/tensorflow_datasets

ReActNet-18 hasher, 64 bits, Adam with OneCycle (max_lr 1e-3), weight
decay 1e-5, batch 64 (stage 2: 32 anchors x 2 positives), 100 warm-up
epochs of a ResNet-50 classifier started from torchvision's ImageNet
weights (``resnet50.npz``, made as in the README; set
``--config.odh.classifier_pretrained=`` to start from scratch), stage
switch after epoch 100, up to 700 epochs, evaluation every 10 epochs and
early stop after 7 evaluations without improvement, paper augmentation
(crop scale 0.08-1, flip 0.5). Departures: images are augmented at 32x32
and resized to 224 by the backbones (the ODH code resizes to 256, then
augments and centre-crops 224); the evaluation every 25 epochs of stage 1
is every 10 here. Cost: not measured (no GPU here).
"""

from nhl_jax.cli.configs import default


def _mnist5k(config):
    config.backbone = 'bnn_cnn'
    config.epochs = 12
    config.eval_every = 4
    config.odh.warmup_epochs = 3
    config.odh.transition_epoch = 4
    return config


def _cifar100(config):
    config.dataset = 'cifar100'
    config.backbone = 'reactnet18'
    config.bits = (64,)
    config.learning_rate = 1e-3  # OneCycle max_lr
    config.weight_decay = 1e-5
    config.batch_size = 64
    config.epochs = 700
    config.eval_every = 10
    config.patience = 7
    config.top_k = 500
    odh = config.odh
    odh.classifier_backbone = 'resnet50'
    odh.classifier_pretrained = 'resnet50.npz'
    odh.warmup_epochs = 100
    odh.transition_epoch = 100
    odh.crop_scale = (0.08, 1.0)
    odh.flip_prob = 0.5
    return config


_SETTINGS = {'mnist5k': _mnist5k, 'cifar100': _cifar100}


def get_config(arg: str = 'mnist5k'):
    """Returns the ODH configuration for ``arg`` (a key of ``_SETTINGS``)."""
    if arg not in _SETTINGS:
        raise ValueError(
            f'odh.py:{arg}: unknown setting; choose one of '
            f'{sorted(_SETTINGS)}.'
        )
    config = default.get_config()
    config.method = 'odh'
    return _SETTINGS[arg](config)
