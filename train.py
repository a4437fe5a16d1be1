"""Train an atr model: `accelerate launch train.py --config configs/X.yaml [--flag value ...]`; no arguments = configs/pretrained.yaml.

The code is atr/cli/train.py (installed as the `atr-train` command); `python train.py --help` lists the flags.
"""

from atr.cli.train import cli, main  # noqa: F401  (main: train.main(argv) runs one training, as atr-train does)

if __name__ == "__main__":
    cli("train.py")
