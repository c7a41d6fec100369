"""lga-export: LGA (Language Guide Adapter on SAM) from PyTorch to verified ONNX Runtime and TensorRT inference."""

__version__ = "0.1.0"
