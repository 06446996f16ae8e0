"""Image generators on pyquant's kernels: layers, the Generator, importers from PyTorch and Keras,
compression (quantize / prune) and the model file."""
from .compress import prune_model, quantize_model
from .generator import Generator
from .io import load
from .keras_import import from_keras
from .layers import Activation, BatchNorm, ConvTranspose2d, Dense, Flatten, Layer, QTensor, Reshape
# note: binds pyquant.model.compress to the function (the module stays importable as pyquant.model.compress)
from .optimize import compress, optimize_model, plot_sensitivity, sensitivity
from .torch_import import from_torch

__all__ = ["Generator", "from_torch", "from_keras", "quantize_model", "prune_model", "load", "Layer", "Dense",
           "ConvTranspose2d", "BatchNorm", "Activation", "Reshape", "Flatten", "QTensor", "compress",
           "optimize_model", "sensitivity", "plot_sensitivity"]
