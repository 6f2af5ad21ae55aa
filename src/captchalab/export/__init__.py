"""ONNX export, parity gates, quantisation and bundle manifests (needs torch and onnx)."""
