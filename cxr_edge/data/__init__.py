"""Data preparation (workstation side): sources → patient-level splits → a memory-mapped cache → EDA.

numpy and Pillow only; :mod:`cxr_edge.data.prepared` is also what device-side
evaluation uses to read a prepared test split, so nothing here imports
TensorFlow. matplotlib is imported lazily by :mod:`cxr_edge.data.report`.
"""
