"""Weights in and out: what a path means (`resolve`: a run directory, a checkpoint, a weights file), the table of
formats read and loaded into a net (`formats`), our checkpoints (`checkpoint`), the peers' layouts (`peers`:
torchvision, the CIFAR reference files), and a trained net written out for others (`export`: safetensors,
ONNX, .pt2; the hub and `predict` load through it).

May import: errors, version, files, networks, data, runs, settings.
"""
