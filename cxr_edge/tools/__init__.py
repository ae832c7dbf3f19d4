"""Offline tools in numpy: evaluation, metrics, post-hoc calibration, OOD fitting, pack writing, the
PTQ image set, phone-photo simulation and ``bench``. They may import :mod:`cxr_edge.runtime` and
:mod:`cxr_edge.data`, never :mod:`cxr_edge.training` (no TensorFlow here).
"""
