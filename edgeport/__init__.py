"""edgeport: checkpoint -> ONNX -> validated, quantized, benchmarked variants -> MLflow registry, as Prefect flows."""

__version__ = "0.1.0"
