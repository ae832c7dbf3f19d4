"""Workstation side: model building, quantization-aware training and TFLite conversion.

Imports TensorFlow, tf-keras and tfmot only inside functions (through
:mod:`cxr_edge.training.tf_env`), so importing this package is cheap.

* :mod:`~cxr_edge.training.model`   ``build_model``, ``set_trainable``, ``feature_extractor``,
  ``head_only_model``, ``with_feature_output``, ``head_weights``, ``calibrate_batchnorm``
* :mod:`~cxr_edge.training.qat`     ``quantize_for_training``, ``is_qat_model``
* :mod:`~cxr_edge.training.convert` ``convert``, ``output_roles``, ``roles_from_shapes``
* :mod:`~cxr_edge.training.tf_env`  ``load`` -> ``(tf, keras)``, ``load_tfmot``
* :mod:`~cxr_edge.training.run_model`   ``open_run_model``: a run's float model for ``cxr-edge evaluate``
* :mod:`~cxr_edge.training.keras_bench` ``keras_rows``: the Keras float rows of ``cxr-edge bench``

It may import every layer below it (:mod:`cxr_edge.tools`, :mod:`cxr_edge.data`,
:mod:`cxr_edge.runtime`); none of them imports it: where they need a TensorFlow
part (a run to evaluate, the Keras bench rows), the CLI hands it to them.
"""
