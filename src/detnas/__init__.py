"""DetNAS: backbone search for object detection with a one-shot supernet."""

__version__ = "0.1.0"
