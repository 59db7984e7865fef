"""The bundle's own code, referenced by its configs as ``scripts.*`` (the Model Zoo pattern).

- ``deconvolution``: the cases of ``input_path`` (NIfTI or DICOM, in SUV) or the built-in phantom, the deblurring of
  each with ``monai_ext.deconvolution``, its files and ``summary.json``.
- ``evaluation``: recovery coefficients against interpolation, the pseudokernel test, BRISQUE.
"""
