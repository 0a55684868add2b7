"""Feedback of a training run: a progress bar (loss, images/s, ETA), a JSONL log and TensorBoard events."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from detnas.config.runs import LOG_FILE
from detnas.errors import writing
from detnas.stages.tracking import LossParts, Tracker


class TrainLog:
    """Only the main worker (``enabled``) writes; the others get a silent object with the same methods."""

    def __init__(self, out_dir: Path, stage: str, total: int, start: int = 0, enabled: bool = True,
                 progress: bool = True, parts: LossParts | None = None, config: dict | None = None):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.stage = stage
        self._bar = Progress(
            TextColumn(f"[bold]{stage}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            disable=not (enabled and progress),
        )
        self._task = self._bar.add_task(stage, total=total, completed=start, info="")
        self.start = start
        self._jsonl = None
        self._tb = None
        self._tracker = Tracker(self.out_dir, stage, total, parts, config)  # loss parts, eval metrics, W&B

    def __enter__(self) -> TrainLog:
        if self.enabled:
            with writing(self.out_dir / LOG_FILE):
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self._jsonl = open(self._log_until(self.start), "a")
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run logs again the steps after its checkpoint: hide the first run's events there
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.start + 1)
            self._tracker.open(self._tb)
        self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._tracker.close()
        self._bar.stop()
        if self._jsonl is not None:
            self._tb.close()
            with writing(self.out_dir / LOG_FILE):  # what a failed write left in the buffer fails again
                self._jsonl.close()

    def _log_until(self, step: int) -> Path:
        """``log.jsonl`` with only the records of steps up to ``step`` (where this run starts): an
        interrupted run may have logged steps after its last checkpoint, which will be logged again."""
        path = self.out_dir / LOG_FILE
        if path.exists():
            kept = []
            for line in path.read_text().splitlines(keepends=True):
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut short by a kill
                    continue
                if isinstance(record, dict) and record.get("step", step + 1) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            tmp = path.with_name(".log.jsonl.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, path)  # a kill meanwhile leaves the old log whole
        return path

    def advance(self, step: int) -> None:
        self._bar.update(self._task, completed=step)

    def scalars(self, step: int, values: dict[str, float], **extra) -> None:
        info = f"loss {values['loss']:.3f}  {values['images_per_s']:.1f} img/s"
        self._bar.update(self._task, completed=step, info=info)
        if not self.enabled:
            return
        values = self._tracker.with_parts(values)
        for k, v in values.items():
            self._tb.add_scalar(f"{self.stage}/{k}", v, step)
        self._tracker.mirror(step, values)
        with writing(self.out_dir / LOG_FILE):
            self._jsonl.write(json.dumps({"step": step, "time": time.time(), **values, **extra}) + "\n")
            self._jsonl.flush()

    def final(self, metrics: dict) -> None:
        if not self.enabled:
            return
        self._tracker.final(metrics)
        with writing(self.out_dir / LOG_FILE), open(self.out_dir / LOG_FILE, "a") as f:
            f.write(json.dumps({"final": metrics, "time": time.time()}) + "\n")
        self._bar.console.print(f"[bold]{self.stage}[/] done: " + json.dumps(metrics))
