"""Calibration images: Fashion-MNIST from local files, a user's image folder or CIFAR-10, preprocessed the way the
model expects."""

from .fashion_mnist import FASHION_MNIST_DIRS, fashion_mnist, find_fashion_mnist, read_idx
from .images import DataError, calibration_batches, cifar10, image_folder, model_transform

__all__ = ["FASHION_MNIST_DIRS", "find_fashion_mnist", "read_idx", "fashion_mnist", "DataError", "model_transform",
           "image_folder", "cifar10", "calibration_batches"]
