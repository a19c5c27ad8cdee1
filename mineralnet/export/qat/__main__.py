"""`python -m mineralnet.export.qat`: the exporter's tf_keras step, in a process of its own (see process.py).

The exporter puts TF_USE_LEGACY_KERAS=1 into this process's environment, so it holds from the first TensorFlow
import on (made here, quietly, before job.py imports tfmot; tfmot would set it on import anyway).
"""

import sys

from mineralnet._tf import import_tensorflow

import_tensorflow()  # first: its start-up lines stay out of the output the exporter relays
from mineralnet.export.qat.job import main  # noqa: E402

sys.exit(main())
