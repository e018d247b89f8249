"""Small studies behind onnxbc's defaults (each module is runnable: python -m benchmarks.ablations.NAME)."""
