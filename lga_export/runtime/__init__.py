"""One runtime for every backend: runners (PyTorch, ONNX Runtime, TensorRT) and the pre/post-processing around them."""
