"""ONNX export of the two LGA graphs (text branch, fused image graph) and their validation."""
