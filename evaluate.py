"""Evaluate an atr model (or a transformers ClapModel) on a dataset, clean and with noise; compare two result files.

    python evaluate.py --model outputs/demo --dataset synthetic --split test --snr clean 15 10 5 --output_dir results/demo

The code is atr/cli/evaluate.py (installed as the `atr-evaluate` command); `python evaluate.py --help` lists the flags.
See docs/evaluation.md.
"""

import os
import sys

# `python evaluate.py` puts this folder first on sys.path, where this file would shadow the `evaluate` library for any
# later `import evaluate` in the process; moving the folder last (also where PYTHONPATH names it) lets the library win
# while `import atr` still works from a checkout that is not pip-installed.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.getcwd()) == _HERE:
    sys.path[:] = [path for path in sys.path if os.path.abspath(path or os.getcwd()) != _HERE] + [_HERE]

from atr.cli import evaluate as _cli  # noqa: E402


def main(argv=None):
    """Run evaluate.py as `atr-evaluate` runs: an evaluation's results, or --compare's rows."""
    return _cli.main(argv, prog="evaluate.py")


if __name__ == "__main__":
    _cli.cli("evaluate.py")
