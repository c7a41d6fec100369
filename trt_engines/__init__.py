"""TensorRT engine building and running (installed as lga_export.trt_engines). TensorRT is imported lazily."""
