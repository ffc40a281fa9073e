"""TumorSegLib: tumour segmentation and lesion measurement for PET and CT.

Plain Python (torch, monai, nibabel, numpy): it never imports slicer, qt or vtk, so the
3D Slicer module, the ``tumorseg`` command and the tests all share it.
"""

__version__ = "0.1.0"
