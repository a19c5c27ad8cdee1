#!/usr/bin/env python3
"""Train a mineral classifier: `python train.py --data DIR --out runs/NAME` (see --help and README.md)."""

import sys

from mineralnet.train_cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
