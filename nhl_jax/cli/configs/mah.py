r"""MAH's CIFAR-10 setup (arXiv 1809.09329; Luoyadan/MAH-Pytorch).

    nhl-jax train --config=mah:cifar10 \
        --config.data_dir=~/tensorflow_datasets \
        --config.pretrained=resnet50.npz --head=cascade

The ADSH protocol of ``cifar10-1``: 1,000 queries, 59,000 database images,
each owning a learned database code V, with Omega drawn from them. ResNet-50
(torchvision ImageNet weights, see the ``paper`` config for how to
make ``resnet50.npz``), bits 4, 8, 16 weighted 4 : 2 : 1, |Omega| = 2,000,
41 outer iterations of 3 epochs, batch 64, SGD lr 1e-3 with weight decay
5e-4, divided by 10 after outer iterations 10, 20, 30 and 40, gamma = 200.
Images are resized to 224 on the device (the MAH code: Resize 256 +
CenterCrop 224 of the 32x32 images, no augmentation). ``--head=flat`` gives
MAH-flat (the MAH code's flat CIFAR-10 default bits are 6, 48, 96:
``--bits=6,48,96``).

Evaluation: asymmetric mAP@all (queries against V) and symmetric mAP@all
(queries against the network's codes of the database) every 5 outer
iterations and after the last. Expected (MAH README, ResNet-50, asymmetric):
cascade 0.746 at 4 bits, flat 0.476 at 4 bits; 8 bits about 0.94.

Cost: not measured here (no GPU on this project's machine): 41 x 3 epochs of
2,000 ResNet-50 images at 224 pixels, about 250,000 forward-backward passes,
plus 9 encodings of the 60,000 images.
"""

from nhl_jax.cli.configs import default


def get_config(arg: str = 'cifar10'):
    """Returns MAH's configuration for ``arg`` (only 'cifar10')."""
    if arg != 'cifar10':
        raise ValueError(
            f'mah.py:{arg}: unknown setup; choose cifar10.'
        )
    config = default.get_config()
    config.method = 'mah'
    config.head = 'cascade'
    config.dataset = 'cifar10-1'
    config.backbone = 'resnet50'
    config.pretrained = 'resnet50.npz'
    config.bits = (4, 8, 16)
    config.batch_size = 64
    mah = config.mah
    mah.outer_iterations = 41
    mah.epochs = 3
    mah.num_samples = 2000
    mah.gamma = 200.0
    mah.weights = (4.0, 2.0, 1.0)
    mah.optimizer = 'sgd'
    mah.learning_rate = 1e-3
    mah.weight_decay = 5e-4
    mah.lr_decay_after = (10, 20, 30, 40)
    mah.lr_decay_factor = 0.1
    mah.eval_every = 5
    mah.v_split = 'database'
    return config
