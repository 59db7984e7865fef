"""The bundle's own code, referenced by its configs as ``scripts.*`` (the Model Zoo pattern).

- ``inference``: the exams of ``dataset_dir`` (or the built-in example), batch preparation and the outputs
  (dynamic series, frame montage) of ``inference.json``.
- ``hyperparameters``: the experiment runners of ``train.json``, ``evaluate.json`` and ``dose_sweep.json``: learning
  the weights of one case, the comparison with grid search and TPE, the dose sweep, their tables and figures.
"""
