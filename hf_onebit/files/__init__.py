"""Files hf_onebit reads and writes outside a model's weights.

* :mod:`~hf_onebit.files.registry`: the one cache root, the one file lock, and pinned files from the package index
  (fetched once, checked by sha256).
* :mod:`~hf_onebit.files.output`: writing a model folder so that nothing is lost (checked first, staged, moved).
"""
