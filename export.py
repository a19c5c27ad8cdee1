#!/usr/bin/env python
"""Export a trained run to verified TFLite models (see docs/export.md):

    python export.py --run RUN [--formats float32,float16,dynamic,int8] [--calibration-samples 300] [--out DIR]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: keep the table readable

from mineralnet.export.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
