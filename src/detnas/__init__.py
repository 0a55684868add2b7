"""DetNAS: backbone search for object detection with a one-shot supernet."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``detnas.backbone(...)`` without making ``import detnas`` pull in torch and torchvision
    if name == "backbone":
        from detnas.artifacts.weights import backbone

        return backbone
    raise AttributeError(f"module 'detnas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "backbone"])
