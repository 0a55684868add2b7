"""An error raised inside a DataLoader worker (a truncated JPEG, a text file named like an image, an
image whose size is not the annotation's) reaches the user as the one line the main process would
give, exit code 2, not torch's "Caught UserError in DataLoader worker process 0" and a traceback."""

from __future__ import annotations

import io
import json
import multiprocessing
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cli_checks import one_line_error
from data_builders import coco_source, finetune_cfg, make_coco, make_retrained, write_image
from detnas.errors import UserError
from detnas.stages.train import TrainingDiverged

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def jpeg_bytes(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 30)).save(buf, "JPEG")
    return buf.getvalue()


def spoil(image: Path, how: str) -> None:
    """Make one image of a COCO set unreadable in the way ``how`` names (COCO images are first opened
when they are loaded: in a worker)."""
    if how == "truncated JPEG":
        image.write_bytes(jpeg_bytes()[:300])
    elif how == "text file as JPEG":
        image.write_text("this is not an image\n" * 20)
    elif how == "size differs from the annotation":
        write_image(image, 40, 30)


EXPECTED = {
    "truncated JPEG": "cannot decode image: Truncated File Read",
    "text file as JPEG": "cannot decode image: cannot identify image file",
    "size differs from the annotation": "image is 40x30 but its annotation says 64x48",
}


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("worker_errors") / "detector.pt"
    make_retrained(path)
    return path


@pytest.mark.parametrize("how", list(EXPECTED))
def test_evaluate_with_data_workers_gives_the_workers_one_line(how, detector, tmp_path, cli_here, monkeypatch):
    monkeypatch.setenv("DETNAS_DATA_WORKERS", "2")  # "auto": two worker processes decode the images
    ann, images = make_coco(tmp_path, n_images=4)
    spoil(images / "img3.png", how)
    r = cli_here("evaluate", "--checkpoint", detector, "--coco-annotations", ann, "--images", images,
                 "--batch-size", "1", check=False)
    line = one_line_error(r, str(images / "img3.png"))
    assert EXPECTED[how] in line and "DataLoader" not in line and "Caught" not in line
    # the workers stopped when the command returned, not at some later garbage collection, where
    # torch's DataLoader waits 5 s per worker to stop them
    assert not multiprocessing.active_children()


def test_training_with_data_workers_gives_the_workers_one_line(tmp_path, cli_here):
    ann, images = make_coco(tmp_path / "coco", n_images=8)
    spoil(images / "img5.png", "truncated JPEG")
    cfg = finetune_cfg(coco_source(ann, images), data={"workers": 1})
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    r = cli_here("finetune", "--config", config, "--out", tmp_path / "run", check=False)
    one_line_error(r, str(images / "img5.png"), EXPECTED["truncated JPEG"])
    assert not (tmp_path / "run" / "metrics.json").exists()


def worker_message(cls: type, message: str) -> str:
    """What torch's ExceptionWrapper.reraise passes to ``cls`` for an error raised in a worker."""
    return (f"Caught {cls.__name__} in DataLoader worker process 3.\nOriginal Traceback (most recent call last):\n"
            '  File "worker.py", line 1, in <module>\n    raise Boom\n'
            f"{cls.__module__}.{cls.__qualname__}: {message}\n")


@pytest.mark.parametrize("cls", [UserError, TrainingDiverged])
def test_a_worker_error_keeps_its_original_line(cls):
    assert str(cls(worker_message(cls, "a.jpg: cannot decode image: image file is truncated"))) == \
        "a.jpg: cannot decode image: image file is truncated"
    # a message with colons and the class's own name inside stays whole
    text = f"x.json: {cls.__name__}: says 'Caught' at line 3: bad"
    assert str(cls(worker_message(cls, text))) == text


def test_other_messages_are_unchanged():
    for text in ("Caught UserError somewhere", "plain", json.dumps({"Caught": 1}),
                 worker_message(UserError, "m").replace("detnas.errors.UserError", "ValueError")):
        assert str(UserError(text)) == text
    assert str(UserError("cannot decode", "Caught UserError in DataLoader worker process 0.")) == \
        "Caught UserError in DataLoader worker process 0.: cannot decode"
