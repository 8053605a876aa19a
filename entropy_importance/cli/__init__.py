"""``entropy-prune``: the command line (arguments, inputs, the run, the printed report)."""

from .arguments import CLIError, build_parser
from .main import main, run

__all__ = ["CLIError", "build_parser", "main", "run"]
