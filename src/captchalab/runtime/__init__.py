"""Inference with onnxruntime + numpy + Pillow only. Nothing in this package may import torch."""
