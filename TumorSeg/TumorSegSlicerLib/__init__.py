"""The TumorSeg Slicer module's library. All but ``panel`` are MRML only (no qt), so they run in
Slicer and under pytest.

- ``logic``: ``TumorSegLogic`` (segment, readouts, edit tracking) and ``SegmentationRun``.
- ``mrml``: volumes and segments to and from ``TumorSegLib.image.Image`` and numpy masks.
- ``readouts``: the readouts table node; ``recist``: RECIST markups lines.
- ``process``: the background ``tumorseg segment`` process (``ProcessProtocol``, process-tree cancel);
  ``dependencies``: torch/monai checks.
- ``selftest``: test bodies shared by Slicer's ``TumorSegTest`` and pytest.
- ``panel``: the qt panel wiring Resources/UI/TumorSeg.ui to the logic (Slicer only).
"""
