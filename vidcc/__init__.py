"""vidcc: a plugin-based graph compiler for video-diffusion models in ONNX form."""

__version__ = "0.1.0"
