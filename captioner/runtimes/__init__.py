"""Runtimes: ONNX export, and the encoder and decoder on ONNX Runtime.

`BACKENDS` names the engines a model's decoder runs on; it is here, where importing it needs no
torch, so the command line lists them without loading one."""

BACKENDS = ("pytorch", "onnxruntime")
