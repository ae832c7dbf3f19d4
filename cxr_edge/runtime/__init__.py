"""The device side: everything a Raspberry Pi, a Jetson or a phone imports to run a model pack.

numpy, Pillow and a LiteRT interpreter only (never TensorFlow): images, preprocessing, the
interpreter wrapper, the pack reader, the gate -> classifier pipeline, heatmaps, the OOD guard, and
``photo/`` (finding and checking the film in a phone photo). It imports only the shared core
(:mod:`cxr_edge.errors`, :mod:`cxr_edge.tasks`, :mod:`cxr_edge.config`).
"""
