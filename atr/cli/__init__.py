"""atr's training and evaluation command lines: `atr-train` (train.py) and `atr-evaluate` (evaluate.py).

`flags.py` defines every flag once (the data and model flags both commands share, and train's own), `train.py` and
`evaluate.py` run them. The repo's top-level `train.py` / `evaluate.py` are thin entry points to these.
"""
