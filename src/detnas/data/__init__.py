"""Data: classification ImageFolders, detection datasets (COCO JSON, Pascal VOC XML), the built-in demo."""

from detnas.data.classification import ImageFolderDataset, classification_transform
from detnas.data.coco import load_coco
from detnas.data.demo import DemoPaths, build_demo_data, default_demo_root
from detnas.data.detection import DetectionDataset, ImageRecord, collate
from detnas.data.transforms import DetectionTransform
from detnas.data.voc import load_voc

__all__ = [
    "DemoPaths",
    "DetectionDataset",
    "DetectionTransform",
    "ImageFolderDataset",
    "ImageRecord",
    "build_demo_data",
    "classification_transform",
    "collate",
    "default_demo_root",
    "load_coco",
    "load_voc",
]
