"""Retrained detectors: evaluation from the checkpoint, export (safetensors, arch.json, ONNX), and the
exported backbone inside a plain torchvision detector."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from safetensors.torch import load_file
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from typer.testing import CliRunner

import detnas
from data_builders import RETRAINED_ARCH as ARCH
from data_builders import RETRAINED_CLASSES as CLASSES
from data_builders import make_coco, make_retrained, make_voc
from data_builders import retrained_detector_cfg as tiny_cfg
from detnas.artifacts.export import OneImageDetector, export_model
from detnas.artifacts.inference import evaluate_detector
from detnas.artifacts.weights import load_trained_detector
from detnas.checkpoint import load_checkpoint, save_checkpoint
from detnas.cli import app as detnas_app
from detnas.config.schema import DetectionSource
from detnas.data.coco import load_coco
from detnas.data.transforms import DetectionTransform
from detnas.errors import UserError
from detnas.model.cocoeval import format_metrics_table
from detnas.model.detector import DetectorConfig, anchor_generator, build_detector, roi_pooler
from detnas.model.evaluate import detection_metrics
from detnas.model.space import get_space, parse_arch
from detnas.model.supernet import ShuffleNetBackbone


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """kind -> (checkpoint path, the detector in it), each built once for this module."""
    root = tmp_path_factory.mktemp("retrained")
    return {kind: (root / f"{kind}.pt", make_retrained(root / f"{kind}.pt", kind)) for kind in ("fpn", "retinanet")}


@pytest.fixture(scope="module", params=["fpn", "retinanet"])
def exported(request, retrained, tmp_path_factory):
    """(our detector, export folder) for each detector kind; ONNX is exported by its own test."""
    root = tmp_path_factory.mktemp(request.param)
    ckpt, det = retrained[request.param]
    result = export_model(ckpt, root / "export", onnx=False)
    assert result["onnx_exporter"] is None and not (root / "export" / "detector.onnx").exists()
    return det, root / "export"


def test_load_trained_detector_rebuilds_the_checkpoint(retrained):
    ckpt, det = retrained["fpn"]
    loaded, info = load_trained_detector(ckpt)
    assert not loaded.training
    assert info == {"arch": ARCH, "space": "small", "width_mult": 1.0, "classes": CLASSES, "kind": "fpn",
                    "detector": tiny_cfg("fpn").model_dump(mode="json"), "step": 7}
    ref, got = det.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_export_files(exported):
    det, out = exported
    meta = json.loads((out / "arch.json").read_text())
    cfg = tiny_cfg(meta["kind"])
    assert meta["arch"] == ARCH and meta["space"] == "small" and meta["width_mult"] == 1.0
    assert meta["fpn_channels"] == meta["out_channels"] == 16
    assert meta["stage_channels"] == [64, 160, 320, 640]
    assert meta["classes"] == CLASSES and meta["num_classes"] == 2
    assert meta["detector"] == cfg.model_dump(mode="json")
    levels = ["p2", "p3", "p4", "p5", "pool"] if cfg.kind == "fpn" else ["p3", "p4", "p5", "p6", "p7"]
    assert meta["feature_maps"] == levels
    state = det.state_dict()
    whole, bb = load_file(str(out / "detector.safetensors")), load_file(str(out / "backbone.safetensors"))
    assert whole.keys() == state.keys() and all(torch.equal(whole[k], state[k]) for k in state)
    assert set(bb) == {k[len("backbone."):] for k in state if k.startswith("backbone.")}
    assert any(k.startswith("fpn.") for k in bb) and any(k.startswith("body.") for k in bb)
    assert all(torch.equal(v, state["backbone." + k]) for k, v in bb.items())
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def plain_torchvision_detector(out):
    """The exported model rebuilt from torchvision classes, the exported backbone and the heads' weights."""
    meta = json.loads((out / "arch.json").read_text())
    cfg = DetectorConfig(**meta["detector"])
    backbone = detnas.backbone(str(out / "arch.json"))
    assert backbone.out_channels == 16
    num_classes = meta["num_classes"] + 1
    if cfg.kind == "fpn":
        model = FasterRCNN(
            backbone, num_classes=None, rpn_anchor_generator=anchor_generator(cfg), box_roi_pool=roi_pooler(cfg),
            box_head=TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.box_head_channels),
            box_predictor=FastRCNNPredictor(cfg.box_head_channels, num_classes),
            min_size=cfg.min_size, max_size=cfg.max_size,
            rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
            box_score_thresh=cfg.score_thresh, box_detections_per_img=cfg.detections_per_img,
        )
    else:
        model = RetinaNet(backbone, num_classes=num_classes, anchor_generator=anchor_generator(cfg),
                          min_size=cfg.min_size, max_size=cfg.max_size, score_thresh=cfg.score_thresh,
                          detections_per_img=cfg.detections_per_img)
    heads = {k: v for k, v in load_file(str(out / "detector.safetensors")).items() if not k.startswith("backbone.")}
    result = model.load_state_dict(heads, strict=False)
    assert not result.unexpected_keys and all(k.startswith("backbone.") for k in result.missing_keys)
    return model.eval()


def test_exported_backbone_in_plain_torchvision_detector_gives_the_same_detections(exported):
    det, out = exported
    model = plain_torchvision_detector(out)
    g = torch.Generator().manual_seed(5)
    images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 90, 70, generator=g)]
    with torch.no_grad():
        ours, theirs = det(images), model(images)
    for a, b in zip(ours, theirs, strict=True):
        assert len(a["boxes"]) >= 10  # not a vacuous comparison
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]), key


def test_backbone_from_digits_and_weights_file(exported):
    det, out = exported
    kind = json.loads((out / "arch.json").read_text())["kind"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = det.backbone.eval()(x)
        for weights in ("backbone.safetensors", "detector.safetensors"):
            # kind and FPN width are read off the weights file
            bb = detnas.backbone(ARCH, weights=out / weights).eval()
            got = bb(x)
            assert list(got) == list(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    fresh = detnas.backbone("detnas-coco-fpn-300m", kind=kind)
    assert fresh.out_channels == 256 and fresh.body.fixed_arch == parse_arch(ARCH)
    with pytest.raises(UserError, match="fpn_channels"):
        detnas.backbone(out / "arch.json", fpn_channels=32)


def matched(ref: dict, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
            box_tol: float = 5e-3, score_tol: float = 5e-4) -> np.ndarray:
    """For each PyTorch detection: does the other list hold one with the same label, every box
    coordinate within ``box_tol`` pixels and the score within ``score_tol``?

    Matching instead of comparing position by position: float32 results of two runtimes differ by
    ~1e-5 relative (as float32 and float64 PyTorch do), which can swap near-tied detections in the
    score order or move one across the top-N cut. Observed here: boxes within 1.2e-3 px, scores
    within 7e-5, at least 98% of detections matched over 30 random image sizes per detector kind.
    """
    ok = []
    for box, score, label in zip(ref["boxes"].numpy(), ref["scores"].numpy(), ref["labels"].numpy()):
        same = np.flatnonzero(labels == label)
        diffs = np.abs(boxes[same] - box).max(1) if len(same) else np.array([np.inf])
        j = int(diffs.argmin())
        ok.append(bool(diffs[j] <= box_tol and abs(scores[same[j]] - score) <= score_tol))
    return np.array(ok)


@pytest.mark.parametrize("kind", ["fpn", "retinanet"])
def test_onnx_export_matches_pytorch(tmp_path, retrained, kind):
    ort = pytest.importorskip("onnxruntime")
    ckpt, det = retrained[kind]
    result = export_model(ckpt, tmp_path / "out", onnx=True)
    assert result["onnx_exporter"] == "torchscript"
    meta = json.loads((tmp_path / "out" / "arch.json").read_text())
    assert meta["files"]["onnx"] == "detector.onnx" and meta["onnx"]["exporter"] == "torchscript"
    session = ort.InferenceSession(str(tmp_path / "out" / "detector.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    g = torch.Generator().manual_seed(3)
    # neither is the traced size (height and width are dynamic); 100x64 resizes by exactly 0.96, where
    # a float32 scale would give ONNX one row less than PyTorch
    for shape in [(3, 72, 90), (3, 100, 64)]:
        image = torch.rand(*shape, generator=g)
        with torch.no_grad():
            ref = det([image])[0]
        boxes, scores, labels = session.run(["boxes", "scores", "labels"], {"image": image.numpy()})
        assert len(ref["boxes"]) >= 10 and boxes.shape == tuple(ref["boxes"].shape) == (len(scores), 4)
        assert len(np.unique(scores)) > len(scores) // 2  # mostly distinct scores: matching is meaningful
        assert labels.dtype == np.int64 and set(labels.tolist()) <= {0, 1, 2}
        with torch.no_grad():  # the traceable resize used for ONNX is torchvision's resize, exactly
            wrapped = OneImageDetector(det)(image)
        assert all(torch.equal(t, ref[k]) for t, k in zip(wrapped, ["boxes", "scores", "labels"], strict=True))
        assert "resize" not in vars(det.transform)  # the detector itself is left as it was
        ok = matched(ref, boxes, scores, labels)
        assert ok[:10].all() and ok.mean() >= 0.9, ok
        back = matched({"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores),
                        "labels": torch.from_numpy(labels)},
                       ref["boxes"].numpy(), ref["scores"].numpy(), ref["labels"].numpy())
        assert back[:10].all() and back.mean() >= 0.9, back


@pytest.fixture(scope="module")
def coco(tmp_path_factory, retrained):
    """(annotations, images, checkpoint): a tiny COCO set whose objects are boxes this (untrained)
    detector predicts, some with the predicted class and some with the other, so that its AP is
    neither 0 nor 1 and comparing metrics means something."""
    root = tmp_path_factory.mktemp("coco")
    ckpt, det = retrained["fpn"]
    ann, images = make_coco(root, n_images=4, size=(80, 64))
    cfg = tiny_cfg("fpn")
    dataset = load_coco(ann, images).with_transform(DetectionTransform(cfg.min_size, cfg.max_size))
    data = json.loads(ann.read_text())
    data["annotations"] = []
    for i in range(len(dataset)):
        image, target = dataset[i]
        with torch.no_grad():
            out = det([image])[0]
        for k in range(3):
            x1, y1, x2, y2 = (out["boxes"][5 * k] / target["scale"]).tolist()
            label = int(out["labels"][5 * k]) if k < 2 else 3 - int(out["labels"][5 * k])
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": target["image_id"],
                                        "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                        "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    ann.write_text(json.dumps(data))
    return ann, images, ckpt


def evaluate_checkpoint(path, source, batch_size: int = 8) -> dict:
    """What ``detnas evaluate`` computes for the retrained detector in ``path``."""
    return evaluate_detector(*load_trained_detector(path, "evaluate"), source, batch_size)


def test_evaluate_checkpoint_equals_detection_metrics(coco):
    ann, images, ckpt = coco
    det, _ = load_trained_detector(ckpt)
    cfg = tiny_cfg("fpn")
    dataset = load_coco(ann, images).with_transform(DetectionTransform(cfg.min_size, cfg.max_size))
    expected = detection_metrics(det, dataset, batch_size=2)
    assert 0.1 < expected["AP50"] < 1 and expected["AP"] > 0
    got = evaluate_checkpoint(ckpt, DetectionSource(annotations=ann, images=images), batch_size=3)
    assert got == expected


def test_evaluate_matches_classes_by_name(tmp_path, coco):
    """A dataset that lists the same classes under other ids (here swapped) is scored the same."""
    ann, images, ckpt = coco
    data = json.loads(ann.read_text())
    swap = {1: 2, 2: 1}
    data["categories"] = [{"id": swap[c["id"]], "name": c["name"]} for c in data["categories"]]
    for a in data["annotations"]:
        a["category_id"] = swap[a["category_id"]]
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps(data))
    assert load_coco(swapped, images).categories == ["dog", "cat"]
    same = evaluate_checkpoint(ckpt, DetectionSource(annotations=ann, images=images))
    assert same["AP"] > 0
    assert evaluate_checkpoint(ckpt, DetectionSource(annotations=swapped, images=images)) == same
    other = load_checkpoint(ckpt)
    save_checkpoint(tmp_path / "other.pt", {**other, "classes": ["cat", "bird"]})
    with pytest.raises(UserError, match="dog") as e:
        evaluate_checkpoint(tmp_path / "other.pt", DetectionSource(annotations=ann, images=images))
    assert str(ann) in str(e.value)


def cli() -> typer.Typer:
    return detnas_app


def test_cli_evaluate_and_export(tmp_path, coco):
    ann, images, ckpt = coco
    runner = CliRunner()
    res = runner.invoke(cli(), ["evaluate", "--checkpoint", str(ckpt), "--coco-annotations", str(ann),
                                "--images", str(images), "--batch-size", "2", "--out", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    written = json.loads((tmp_path / "m.json").read_text())
    metrics = written["metrics"]  # the same numbers as detection_metrics: test_evaluate_checkpoint_...
    assert list(metrics) == ["AP", "AP50", "AP75", "APs", "APm", "APl"] and metrics["AP50"] > 0
    assert written["arch"] == ARCH and written["data"]["annotations"] == str(ann)
    assert format_metrics_table(metrics) in res.output
    voc = make_voc(tmp_path / "voc", {"a": [("dog", (11, 6, 30, 25))], "b": [("cat", (5, 5, 20, 40), 1)]},
                   splits={"test": ["a"]})
    res = runner.invoke(cli(), ["evaluate", "--checkpoint", str(ckpt), "--voc-root", str(voc), "--voc-split", "test"])
    assert res.exit_code == 0, res.output
    assert format_metrics_table(evaluate_checkpoint(ckpt, DetectionSource(format="voc", root=voc, split="test"))) \
        in res.output
    res = runner.invoke(cli(), ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "e"),
                                "--no-onnx"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["arch.json", "backbone.safetensors",
                                                                  "detector.safetensors"]


def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path, coco):
    ann, images, _ = coco
    missing = tmp_path / "missing.pt"
    garbage = tmp_path / "notes.pt"
    garbage.write_text("not a checkpoint\n")
    finetune = tmp_path / "finetune.pt"
    save_checkpoint(finetune, {"stage": "finetune", "space": {"space": "small", "width_mult": 1.0}, "model": {}})
    source = DetectionSource(annotations=ann, images=images)
    cases = [
        (lambda: export_model(missing, tmp_path / "o"), missing, "not found"),
        (lambda: export_model(garbage, tmp_path / "o"), garbage, "checkpoint"),
        (lambda: export_model(finetune, tmp_path / "o"), finetune, "detnas retrain"),
        (lambda: evaluate_checkpoint(finetune, source), finetune, "detnas retrain"),
        (lambda: evaluate_checkpoint(missing, source), missing, "not found"),
        (lambda: detnas.backbone(ARCH, weights=missing.with_suffix(".safetensors")),
         missing.with_suffix(".safetensors"), "not found"),
        (lambda: detnas.backbone(str(tmp_path / "arch.json")), tmp_path / "arch.json", "not found"),
    ]
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 20)
    cases.append((lambda: detnas.backbone(ARCH, weights=bad_st), bad_st, "safetensors"))
    for call, path, words in cases:
        with pytest.raises(UserError) as e:
            call()
        message = str(e.value)
        assert str(path) in message and words in message and "\n" not in message, message
    assert not (tmp_path / "o").exists()  # nothing written for a refused checkpoint

    runner = CliRunner()
    res = runner.invoke(cli(), ["export", "--checkpoint", str(finetune), "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, UserError) and "detnas retrain" in str(res.exception)
    res = runner.invoke(cli(), ["evaluate", "--checkpoint", str(finetune), "--images", str(images)])
    assert isinstance(res.exception, UserError) and "--coco-annotations" in str(res.exception)


def test_backbone_inherits_a_supernet_path(tmp_path):
    """Weights from a supernet finetune checkpoint: the path's blocks, FPN included, as extracted."""
    from detnas.model.detector import extract_detector

    torch.manual_seed(0)
    space, cfg = get_space("small"), tiny_cfg("fpn")
    supernet = build_detector(ShuffleNetBackbone(space), 2, cfg)
    with torch.no_grad():
        for name, buf in supernet.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()  # a path's statistics differ from a fresh network's
    save_checkpoint(tmp_path / "finetune.pt", {"stage": "finetune", "space": {"space": "small", "width_mult": 1.0},
                                               "classes": CLASSES, "model": supernet.state_dict()})
    expected = extract_detector(supernet, parse_arch(ARCH), 2, cfg).backbone.eval()
    got = detnas.backbone(ARCH, weights=tmp_path / "finetune.pt").eval()
    assert got.out_channels == 16
    ref_state, got_state = expected.state_dict(), got.state_dict()
    assert ref_state.keys() == got_state.keys() and all(torch.equal(ref_state[k], got_state[k]) for k in ref_state)
    with pytest.raises(UserError, match="space"):
        detnas.backbone(ARCH, space="small", width_mult=0.5, weights=tmp_path / "finetune.pt")
