"""File formats: mask files (HDF5) holding attribution maps for the metrics."""

from explainers.io.maskfile import MaskFile, MaskFileError, MaskFileWriter, partial_path

__all__ = ["MaskFile", "MaskFileError", "MaskFileWriter", "partial_path"]
