"""The command line: ``nhl-jax <command>`` and the registry of systems.

    nhl-jax train --method=dpn              # train, evaluate, results.json
    nhl-jax encode --workdir=runs/x         # packed codes, metrics, plots
    nhl-jax search --workdir=runs/x --query_split=query --query_index=0
    nhl-jax export --workdir=runs/x --out=bundle  # for nhl_jax.serving
    nhl-jax plot --workdirs=runs/a,runs/b   # mAP vs code length
    nhl-jax export-splits --dataset=digits  # the ids of a seeded split
    nhl-jax make-lists --folder=~/photos    # list files of <class>/<image>

(also ``python -m nhl_jax <command>``; ``nhl-jax <command> --help`` lists a
command's flags). This layer is the only one that knows every system: the
registry (``registry.SYSTEMS``), the config schema and its checks
(``config``), and the trained-run API (``inference``). The library use of
a config::

    from nhl_jax import cli
    config = cli.configs.default.get_config()
    results = cli.train_and_evaluate(config, 'runs/x')
"""

import functools
import importlib
import sys

# command -> its module in nhl_jax.cli; each is imported only when run,
# since the commands define absl flags of the same names.
COMMANDS = {
    'train': 'train',
    'encode': 'encode',
    'search': 'search',
    'export': 'export',
    'plot': 'plot',
    'export-splits': 'export_splits',
    'make-lists': 'make_lists',
}

_USAGE = '''usage: nhl-jax <command> [--flags]

Deep supervised hashing with codes of several lengths (NHL, MAH, ODH).

commands:
  train          train and evaluate a run (--method=dpn, --config=...)
  encode         encode a trained run's splits to packed codes and metrics
  search         search a run's encoded database (top-k or radius)
  export         write a bundle (encoder, database, faiss) for serving
  plot           draw mAP versus code length for several runs
  export-splits  write the ids of a seeded split, with its digest
  make-lists     write list files (train/test/database.txt) of a class
                 folder tree or a CSV of path,label rows

"nhl-jax <command> --help" lists the flags of a command.'''


def main(argv=None) -> None:
    """``nhl-jax <command> [--flags]``: runs one command.

    Args:
      argv: the command line (default: ``sys.argv``, the whole process:
        it ends when the command does, ``command.as_process``).
    """
    process = argv is None
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ('-h', '--help', 'help'):
        print(_USAGE)
        return
    name = argv[1]
    if name not in COMMANDS:
        sys.exit(f'error: unknown command {name!r}; choose one of '
                 f'{", ".join(COMMANDS)} (nhl-jax --help).')
    module = importlib.import_module(f'nhl_jax.cli.{COMMANDS[name]}')
    call = functools.partial(module.cli, [f'nhl-jax {name}', *argv[2:]])
    if process:
        from nhl_jax.cli import command  # absl only; after --help
        command.as_process(call)
    call()


def __getattr__(name):
    """The library API of the command layer, imported on first use.

    ``import nhl_jax.cli`` stays light (``nhl-jax --help`` imports no
    system); ``cli.train_and_evaluate`` and the rest load what they need.
    """
    if name in _LAZY:
        module = importlib.import_module(f'nhl_jax.cli.{_LAZY[name][0]}')
        return getattr(module, _LAZY[name][1])
    if name in ('bundle', 'config', 'configs', 'inference', 'registry'):
        return importlib.import_module(f'nhl_jax.cli.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


# name -> (module of nhl_jax.cli, attribute)
_LAZY = {
    'train_and_evaluate': ('train', 'train_and_evaluate'),
    'export_run': ('bundle', 'export_run'),
    'resolve': ('config', 'resolve'),
    'check_config': ('config', 'check_config'),
    'create_train_state': ('registry', 'create_train_state'),
    'SYSTEMS': ('registry', 'SYSTEMS'),
    'methods': ('registry', 'methods'),
    'system_of': ('registry', 'system_of'),
}

__all__ = [
    'COMMANDS',
    'SYSTEMS',
    'check_config',
    'create_train_state',
    'export_run',
    'main',
    'methods',
    'resolve',
    'system_of',
    'train_and_evaluate',
]
