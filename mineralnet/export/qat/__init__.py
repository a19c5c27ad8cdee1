"""Quantization-aware training (the `int8_qat` format) and pruning (`--prune-sparsity`) with
tensorflow-model-optimization, on a tf_keras twin of the Keras 3 model, in a child process. See docs/qat.md.

Only `process` is imported by the exporter; the other modules need tf_keras and run in the child.
"""
