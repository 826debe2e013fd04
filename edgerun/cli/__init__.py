"""The ``edgerun`` command line: one module per subcommand, each with ``register(subparsers)``
returning its parser and ``run(args) -> int``; shared flags in :mod:`edgerun.cli.args`.

The modules import only argparse and :mod:`edgerun.cli.args` at the top, so ``edgerun --help``
stays fast; each ``run`` imports the library it drives.
"""

from edgerun.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
