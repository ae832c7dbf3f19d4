"""Data preparation: sources → patient-level splits → a memory-mapped cache → EDA.

numpy and Pillow only, and only :mod:`cxr_edge.runtime` below it: the offline
tools (:mod:`cxr_edge.tools`: evaluate, calibrate, OOD fitting, export's check)
read prepared splits through :mod:`cxr_edge.data.prepared`, so nothing here
imports TensorFlow. matplotlib is imported lazily by :mod:`cxr_edge.data.report`.
"""
