"""mineralnet edge runner: camera -> TFLite -> sorting decision -> actuator, on the device, without TensorFlow.

Standalone on purpose: nothing here imports mineralnet, tensorflow or keras, so the folder can be copied to a
Raspberry Pi or Jetson that only has numpy, Pillow and a TFLite interpreter. Entry point: edge/runner.py.
The dependency runs the other way: mineralnet imports the device contract from here (preprocess.py's decoding,
decision.py's reject rule, drift.py's reference), so training and the belt share one copy of it.
"""
