r"""Default: full NHL (DPN, weighting + distillation) on the offline MNIST-5k.

    nhl-jax train --method=dpn

trains 8/16/32/64/128-bit codes in ONE run of the small CNN on 2,000 MNIST
training images (protocol in nhl_jax/data: 100 query images per class, the
other 4,000 are the database, 200 training images per class drawn from the
database, seed 0), evaluating mAP@all on the 1,000 queries every 5 epochs.

Any field can be overridden, e.g. ``--config.learning_rate=3e-4``, and the
flags of ``nhl-jax train`` (``--method``, ``--bits``, ...) override these
fields.
"""

import ml_collections


def get_config():
    """Returns the default configuration."""
    config = ml_collections.ConfigDict()
    # What to train.
    config.method = 'dpn'  # a key of nhl_jax.losses.LOSSES, or 'mah' / 'odh'
    config.head = 'nested'  # 'nested' | 'flat' | 'cascade' (flat/cascade: MAH)
    # The base losses' nested hash layer init: 'normal' (the NHL code's
    # N(0, 0.01) weights, zero bias) or 'torch' (nn.Linear's default,
    # U(+-1/sqrt(D)) weights and bias, as DeepHash-pytorch trains).
    config.head_init = 'normal'
    # The base loss's hyperparameters (nhl_jax.losses), new keys allowed:
    # e.g. --config.loss_kwargs.margin=2.0 for dpn.
    config.loss_kwargs = ml_collections.ConfigDict()
    config.dataset = 'mnist5k'  # a key of nhl_jax.data.DATASETS
    # CIFAR: the python-version archive (cifar-10-python.tar.gz), its
    # extracted folder or the tfds data directory; list-file datasets
    # ('listfile': any class count): the root of train.txt, test.txt and
    # database.txt; 'folder': the folder of <class>/<image>.
    config.data_dir = ml_collections.config_dict.placeholder(str)
    # Side of the square input decoded from image files (list files,
    # folders); None: 224 after resizing the shorter side to 256 (another
    # side keeps that ratio: 32 resizes to 37, then crops 32).
    config.image_size = ml_collections.config_dict.placeholder(int)
    # The seeded per-class split of --dataset=folder: the share of each
    # class that are queries (None: 0.1, rounded; at least 1, at most all
    # but 1), the rest are the database; and at most this many training
    # images per class drawn from the database (None: all of it).
    config.folder_query_fraction = ml_collections.config_dict.placeholder(
        float)
    config.folder_train_per_class = ml_collections.config_dict.placeholder(
        int)
    # Decoding of image files: None (auto: a few threads for image files,
    # inline for arrays), 0 (inline) or N worker processes.
    config.data_workers = ml_collections.config_dict.placeholder(int)
    # None: the dataset's default backbone.
    config.backbone = ml_collections.config_dict.placeholder(str)
    config.backbone_kwargs = ml_collections.ConfigDict()  # e.g. input_size
    # Local pretrained weights (torchvision .npz/.pth for resnet18/50).
    config.pretrained = ml_collections.config_dict.placeholder(str)
    config.bits = (8, 16, 32, 64, 128)
    config.single_length = False  # True: one run per length (the baseline)
    # The NHL objective.
    # 'none' | 'paper' | 'released' | 'static' | 'uncertainty' | 'gradnorm'
    # | 'pcgrad' (nhl_jax.nhl.objective.WEIGHTINGS)
    config.weighting = 'paper'
    # Hyperparameters of the rule (nhl_jax.nhl.baselines), new keys allowed:
    # e.g. --config.weighting_kwargs.weights=4,2,1,1,1 for 'static' or
    # --config.weighting_kwargs.alpha=1.5 for 'gradnorm'.
    config.weighting_kwargs = ml_collections.ConfigDict()
    config.distill_weight = 0.1  # lambda of the cascade distillation
    config.topology = 'adjacent'  # distillation teachers
    # True: every length's loss, distillation and vjp in one vmap over
    # masked codes where the base loss has that form (nhl_jax.nhl.stacked):
    # traced once, equal to the per-length copies to float rounding, but
    # each length computes over all K_max columns.
    config.stack_lengths = False
    # How the base loss is trained: 'library' (the fields below) or
    # 'reference' (its reference code's optimizer, rate, weight decay, batch
    # and decay, nhl_jax/cli/recipes.py) in every field left at its default.
    config.recipe = 'library'
    # Optimisation (torch Adam with coupled weight decay, as the NHL code);
    # 'rmsprop' (torch's: alpha 0.99, eps 1e-8) or 'sgd' (with momentum).
    # The base losses only: mah and odh have their own (config.mah / odh).
    config.optimizer = 'adam'
    config.momentum = 0.9  # of 'sgd' (0: none)
    config.learning_rate = 1e-3
    config.weight_decay = 1e-5
    # Step decay: the rate x lr_decay_factor after every lr_decay_every
    # epochs (None: never) and after each epoch of lr_decay_epochs (e.g.
    # --config.lr_decay_epochs=50,80).
    config.lr_decay_every = ml_collections.config_dict.placeholder(int)
    config.lr_decay_epochs = ()
    config.lr_decay_factor = 0.1
    # The backbone's own rate (None: learning_rate), e.g. lower when fine-
    # tuning a pretrained network; or freeze it (features only).
    config.backbone_learning_rate = ml_collections.config_dict.placeholder(
        float)
    config.freeze_backbone = False
    config.compute_dtype = 'float32'  # 'bfloat16': mixed precision forward
    config.batch_size = 64  # the global batch, over every device
    # Or a per-device batch: the global batch is it x the devices the run
    # uses (not with batch_size); None: batch_size.
    config.per_device_batch_size = ml_collections.config_dict.placeholder(
        int)
    # 'linear': the learning rates x global batch / lr_reference_batch
    # (arXiv 1706.02677, Sec. 2.1), for a batch other than the one they
    # were set for (None: the recipe's, 64 here); 'none': as given.
    config.lr_scaling = 'none'
    config.lr_reference_batch = ml_collections.config_dict.placeholder(int)
    config.epochs = 40
    config.seed = 0
    # Data parallelism: devices of the ('data',) mesh; None means all of them
    # (of every process). The global batch must split evenly over them.
    config.devices = ml_collections.config_dict.placeholder(int)
    # BatchNorm statistics over the global batch (true) or over each
    # device's shard, with no all-reduce of them in the step (false).
    config.sync_batch_stats = True
    # Evaluation and early stopping (NHL: stop after `patience` evaluations
    # in which no length improved).
    config.eval_every = 5
    config.patience = 4
    # Images per forward pass when encoding (no output changes on CPU); 250
    # splits mnist5k's 1,000 / 4,000 rows evenly, and its activations stay
    # in a CPU's caches where 500's did not (benchmarks/RESULTS.md).
    config.eval_batch_size = 250
    # None: the dataset's default top_k.
    config.top_k = ml_collections.config_dict.placeholder(int)
    # Means of the step metrics every log_every steps (metrics.jsonl records
    # of kind 'step', and TensorBoard with the tensorboard extra); None: off.
    config.log_every = ml_collections.config_dict.placeholder(int)
    config.log_every = 50
    # A jax.profiler trace of global steps (start, stop) into workdir/profile,
    # e.g. --config.profile_steps=10,20; None: no trace.
    config.profile_steps = ml_collections.config_dict.placeholder(tuple)
    # Where the scalars go besides metrics.jsonl (always written), comma-
    # separated: 'tensorboard' (the tensorboard extra), 'wandb' (the wandb
    # extra; WANDB_MODE=offline writes the run into workdir/wandb only);
    # None: tensorboard when it is installed.
    config.writers = ml_collections.config_dict.placeholder(str)
    # Draw workdir/plots at the end (with matplotlib): False saves a
    # second or so of a sweep's every run; `nhl-jax plot` draws them later.
    config.plots = True
    # The command line's persistent compilation cache (a folder, with the
    # saved traced programs in its traces/); None: $NHL_JAX_COMPILATION_CACHE,
    # else ~/.cache/nhl_jax/xla; 'off': neither.
    config.compilation_cache = ml_collections.config_dict.placeholder(str)
    # Settings of the other systems (used only with --method=mah / odh).
    config.mah = _mah()
    config.odh = _odh()
    return config


def _odh():
    """ODH (``--method=odh``, ACM MM 2024; nhl_jax/odh): offline defaults.

    Paper values except where marked: they train mnist5k in minutes on a
    CPU.
    ``--epochs`` counts the main epochs (after the warm-up).
    """
    odh = ml_collections.ConfigDict()
    odh.warmup_epochs = 3  # paper: 100 (a separate warm_up.py run)
    odh.transition_epoch = 10  # stage 1 -> 2 after this main epoch (paper 100)
    # Centres per length: 'prefix' (one MLP, length b = first b columns),
    # 'separate' (one MLP per length) or 'hadamard' (CSQ's fixed centres).
    odh.centers = 'prefix'
    odh.learn_centers = True  # False: centres fixed after the warm-up
    odh.center_hidden = ml_collections.config_dict.placeholder(int)  # None: D
    # Full-precision warm-up classifier (None: the dataset's backbone; the
    # paper uses an ImageNet ResNet-50).
    odh.classifier_backbone = ml_collections.config_dict.placeholder(str)
    odh.classifier_kwargs = ml_collections.ConfigDict()
    # Local torchvision weights of the classifier backbone (resnet18/50).
    odh.classifier_pretrained = ml_collections.config_dict.placeholder(str)
    odh.hash_bn = True  # BatchNorm after the hash layer (the ODH code)
    odh.temperature = 0.2  # tau of the hash-centre loss
    odh.ce_weight_explore = 1e-3  # CE weight in stage 1
    odh.asd_weight = 1e-3  # L_asd weight in stage 2
    odh.ce_weight_aggregate = 1e-4  # CE weight in stage 2
    odh.n_positive = 2  # same-class images per anchor in stage 2
    odh.max_norm = 5.0  # gradient clipping of the centre MLP and classifier
    odh.weak_strength = 0.5  # weak view: augmentation probabilities x 0.5
    # Augmentation: paper crop scale (0.08, 1) and flip 0.5; 28x28 digits
    # keep a larger part of the image, and a mirrored digit is another glyph.
    odh.crop_scale = (0.5, 1.0)
    odh.flip_prob = 0.0
    return odh


def _mah():
    """MAH on the offline data (fields: nhl_jax/mah/config.py).

    ``--method=mah --head=cascade --bits=4,8,16`` trains in minutes on a
    CPU with the small CNN. Departures from the paper's CIFAR-10
    setup (the ``mah`` config), for a small network trained from
    scratch in minutes: Adam 1e-3 instead of SGD 1e-3 (SGD learns the CNN
    from scratch far slower: asymmetric mAP 0.26 / 0.62 / 0.74 at 4 / 8 / 16
    bits after 4 outer iterations, Adam 0.57 / 0.93 / 0.96) with weight
    decay 1e-5, no rate decay, 12 outer iterations of 2 epochs instead of
    41 x 3, and |Omega| = 1,000 of the 4,000 database images instead of
    2,000 of 59,000. gamma = 200 and the 4 : 2 : 1 weights are the paper's.
    """
    mah = ml_collections.ConfigDict()
    mah.outer_iterations = 12
    mah.epochs = 2  # over Omega, per outer iteration
    mah.num_samples = 1000  # |Omega|
    mah.gamma = 200.0
    # One weight per length, shortest first; None: 2^(M-1-k) (4 : 2 : 1).
    mah.weights = ml_collections.config_dict.placeholder(tuple)
    mah.optimizer = 'adam'  # 'sgd' (paper) | 'adam'
    mah.learning_rate = 1e-3
    mah.weight_decay = 1e-5
    mah.lr_decay_after = ()  # 0-based outer iterations; paper 10,20,30,40
    mah.lr_decay_factor = 0.1
    mah.eval_every = 4  # outer iterations
    mah.v_split = 'database'  # rows owning a code V: 'database' | 'train'
    return mah
