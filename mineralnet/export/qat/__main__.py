"""`python -m mineralnet.export.qat`: the exporter's tf_keras step, in a process of its own (see process.py).

The exporter puts TF_USE_LEGACY_KERAS=1 into this process's environment, so it holds from the first TensorFlow
import on (importing the package imports TensorFlow before this file runs; tfmot would set it on import anyway).
"""

import sys

from mineralnet.export.qat.job import main

sys.exit(main())
