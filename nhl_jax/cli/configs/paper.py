r"""The NHL paper's setup: ResNet-50 (ImageNet weights), Adam 1e-5, batch 64.

    nhl-jax train --config=paper:cifar10 \
        --config.data_dir=~/tensorflow_datasets \
        --config.pretrained=resnet50.npz --method=csq

Argument after the colon: ``cifar10`` (1,000 query / 5,000 train / 54,000
database, mAP@all, evaluated every 4 epochs), ``imagenet100`` (list files,
mAP@1000, every 10 epochs) or ``coco`` (list files, mAP@5000, every 10
epochs). Bits 8/16/32/64/128 in one run, dominance weighting and
distillation 0.1, up to 1,500 epochs with the NHL early stop (4 evaluations
without any length improving). Inputs: CIFAR-10 images are resized to 224 on
the device; list-file images are resized to 256 and cropped to 224 (random
crop + flip for training) by 4 worker processes.

``resnet50.npz`` holds torchvision's ImageNet weights; on a machine with
internet::

    python -c "import torch, torchvision, numpy as np; \
    sd = torchvision.models.resnet50(weights='IMAGENET1K_V2').state_dict(); \
    np.savez('resnet50.npz', **{k: v.numpy() for k, v in sd.items()})"

Cost: not measured here (this project's machine has no GPU); a ResNet-50
step at batch 64 and 224 pixels is roughly 12 GFLOP x 3 per image.
"""

from nhl_jax.cli.configs import default

_DATASETS = {  # name: (eval_every, data_workers)
    'cifar10': (4, 0),
    'imagenet100': (10, 4),
    'coco': (10, 4),
}


def get_config(arg: str = 'cifar10'):
    """Returns the paper's configuration for one dataset."""
    if arg not in _DATASETS:
        raise ValueError(
            f'paper.py:{arg}: unknown dataset; choose one of '
            f'{sorted(_DATASETS)}.'
        )
    config = default.get_config()
    config.dataset = arg
    config.backbone = 'resnet50'
    config.pretrained = 'resnet50.npz'
    config.learning_rate = 1e-5
    config.weight_decay = 1e-5
    config.batch_size = 64
    config.epochs = 1500
    config.eval_every, config.data_workers = _DATASETS[arg]
    config.patience = 4
    return config
