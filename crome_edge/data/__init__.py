"""Datasets of (image, question, answer): reading them, checking them, splitting them, loading pixels.

`dataset.py` and `split.py` are torch-free; `pixels.py` turns images into normalised tensors with the
runtime's own preprocessing (`crome_runtime.preprocess`), so training and deployment see the same input.
"""
from crome_edge.data.dataset import IMAGE_SUFFIXES, Dataset, Sample, check_images, load_dataset
from crome_edge.data.split import load_training_split, split_dataset

__all__ = [
    "IMAGE_SUFFIXES", "Dataset", "Sample", "check_images", "load_dataset", "load_training_split", "split_dataset",
]
