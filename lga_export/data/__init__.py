"""Segmentation data in the LViT layout (QaTa-COV19, MosMedData+, MoNuSeg) for training and eval."""

from lga_export.data.lvit import SPLITS, Sample, SplitIndex, index_split, read_text_table

__all__ = ["SPLITS", "Sample", "SplitIndex", "index_split", "read_text_table"]
