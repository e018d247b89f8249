"""Side-by-side comparisons of onnxbc with other quantizers on real models (see benchmarks/zoo for the models)."""
