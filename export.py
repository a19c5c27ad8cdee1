#!/usr/bin/env python
"""Export a trained run to verified TFLite models (see docs/export.md):

    python export.py --run RUN [--formats float32,float16,dynamic,int8] [--calibration-samples 1000] [--out DIR]
"""

import sys

from mineralnet.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
