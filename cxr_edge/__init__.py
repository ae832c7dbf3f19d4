"""cxr-edge: chest X-ray data sets to int8 models that run offline on the edge.

The top-level package is the *device side*: it imports numpy, Pillow and a
LiteRT interpreter only. Training, QAT and conversion live in
``cxr_edge.training`` and import TensorFlow inside their own modules.
"""

__version__ = "0.1.0"
