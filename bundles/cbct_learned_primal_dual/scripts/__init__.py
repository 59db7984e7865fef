"""The bundle's own code, referenced by its configs as ``scripts.*`` (the Model Zoo pattern).

- ``evaluation``: the comparison of the bundle's methods (``evaluate.json``): tables in the paper's or talk's form,
  example figures; scores from ``monai_ext.workflows.evaluate_methods``; ``trained_methods``, the methods of
  ``inference.json`` at another projection count.
- ``models``: which weights file serves a method at a projection count (``inference.json``).
- ``tuning``: the TV weight per projection count and noise setting (``tune.json``).
"""
