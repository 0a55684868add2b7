"""Run folders: the name of every file a stage writes, the stage names saved in checkpoints, and the one
rule for "is this stage finished?" and "may this run resume with this config?".

A stage writes its final file last (training ``metrics.json``, search ``best.json``, retraining
``result.json``, rank check ``rank_check.json``), so the presence of one of them means the stage finished with all its outputs.
An interrupted stage resumes from its checkpoint (training) or search state (search), and only with a
config that differs at most in the sections that do not change what is computed.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, TypeAdapter

from detnas.errors import UserError

LOCK_FILE = "run.lock"  # every stage: the process using the folder (stages/run_lock.py)
# training (pretrain, finetune, retrain)
CHECKPOINT = "checkpoint.pt"
METRICS_FILE = "metrics.json"  # written last
LOG_FILE = "log.jsonl"
SPLIT_FILE = "search_split.json"  # finetuning: the held-out search split (COCO annotations)
# search
SEARCH_STATE_FILE = "search_state.json"
HISTORY_FILE = "history.jsonl"
PARTIAL_FILE = "partial_generation.jsonl"
PROGRESS_PNG = "search_progress.png"
PARETO_PNG = "search_pareto.png"
PARETO_FILE = "pareto.json"  # strategy pareto: the front
FITNESS_CHECK_FILE = "fitness_check.json"  # does the fitness separate the candidates?
BEST_FILE = "best.json"  # written last
# retraining
RESULT_FILE = "result.json"  # written last
RETRAIN_PRETRAIN_DIR = "pretrain"  # the optional classification pretraining of the standalone network
RETRAIN_DETECTOR_DIR = "detector"  # then its detector training
# rank check
RANK_PLAN_FILE = "rank_plan.json"  # the architectures checked
RANK_SCORES_FILE = "rank_scores.json"  # their supernet fitness, with what it was computed from
RANK_CHECK_PNG = "rank_check.png"
RANK_CHECK_FILE = "rank_check.json"  # written last
RANK_NETS_DIR = "nets"  # the retrainings: <arch>/seed<k>/ each
# pipeline
PIPELINE_FILE = "pipeline.json"
REPORT_FILE = "report.md"
GALLERY_DIR = "gallery"  # the report's images: searched and baseline detections on test images

FINISHED_MARKERS = (METRICS_FILE, BEST_FILE, RESULT_FILE, RANK_CHECK_FILE)

# the pipeline's run folder: one sub-folder per stage
PRETRAIN_DIR = "pretrain"
FINETUNE_DIR = "finetune"
SEARCH_DIRS = {"evolution": "search", "random": "random_search"}  # per search strategy
RETRAIN_DIR = "retrain"
RANK_CHECK_DIR = "rank_check"
RANK_CHECK = "rank check"  # its stage name in the pipeline's record and plan

# stage names, as saved in checkpoints
PRETRAIN = "pretrain"  # supernet on classification data
FINETUNE = "finetune"  # supernet inside a detector
RETRAIN_PRETRAIN = "retrain-pretrain"  # a standalone network on classification data
RETRAIN = "retrain"  # a standalone detector
SUPERNET_STAGES = (PRETRAIN, FINETUNE)
CLASSIFICATION_STAGES = (PRETRAIN, RETRAIN_PRETRAIN)

# config keys that may change between an interrupted run and its resumption: they do not change the
# trained weights (training) or the fitnesses and candidates (search). For ``amp`` the precision it
# resolves to on this machine is what counts: the training loop checks it against the checkpoint's.
TRAINING_RESUMABLE = ("logging", "eval", "data.workers", "amp")
SEARCH_RESUMABLE = ("generations",)


def retrain_dir(out: Path, name: str, repeat: int) -> Path:
    """The pipeline's folder for the ``repeat``-th seed of retraining ``name`` (the first keeps the
    folder of runs made before retraining had several seeds)."""
    return Path(out) / RETRAIN_DIR / (name if repeat == 0 else f"{name}-seed{repeat}")


def supernet_dir(out: Path, stage_dir: str, k: int) -> Path:
    """The pipeline's folder of the ``k``-th supernet's ``stage_dir`` (``PRETRAIN_DIR`` or ``FINETUNE_DIR``):
    supernet 0 keeps the folder of runs made before the pipeline trained several (``supernets``)."""
    return Path(out) / (stage_dir if k == 0 else f"{stage_dir}-{k}")


def supernet_stage(stage: str, k: int) -> str:
    """The pipeline's name of the ``k``-th supernet's ``stage`` (``PRETRAIN`` or ``FINETUNE``)."""
    return stage if k == 0 else f"{stage} (supernet {k})"


def rank_scores_file(out: Path, k: int) -> Path:
    """The rank check's file of the ``k``-th supernet's fitness (0: ``--supernet``'s first)."""
    return Path(out) / (RANK_SCORES_FILE if k == 0 else RANK_SCORES_FILE.replace(".json", f".{k}.json"))


def rank_net_dir(out: Path, arch: str, k: int) -> Path:
    """The rank check's folder for the ``k``-th seed of retraining ``arch`` (digit string)."""
    return Path(out) / RANK_NETS_DIR / arch / f"seed{k}"


def is_finished(run_dir: str | Path) -> bool:
    """Whether the stage in ``run_dir`` finished: its final file, written last, is there."""
    return any((Path(run_dir) / name).exists() for name in FINISHED_MARKERS)


def config_changes(old: dict, new: dict, resumable: tuple[str, ...] = (), prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, ignoring those in ``resumable``."""
    out = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        if name in resumable or old.get(key) == new.get(key):
            continue
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            out += config_changes(old[key], new[key], resumable, name + ".")
        else:
            out.append(name)
    return out


def with_added_keys(old: dict, model: type[BaseModel]) -> dict:
    """``old``, a config that an older detnas recorded, with the keys added to ``model`` since then at
    their defaults (what that run did without them), so that an upgrade does not count as a change."""
    out = dict(old)
    for name, info in model.model_fields.items():
        sub = info.annotation if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel) else None
        if name not in out and not info.is_required():
            out[name] = TypeAdapter(info.annotation).dump_python(info.get_default(call_default_factory=True),
                                                                 mode="json")
        elif sub is not None and isinstance(out.get(name), dict):
            out[name] = with_added_keys(out[name], sub)
    return out


def raise_exists(path: Path) -> None:
    """A run that is not resumed must not overwrite one that is there."""
    raise UserError("a finished or interrupted run is already here: pass --resume, or choose another --out",
                    path)


def resume_point(run_dir: Path) -> str | None:
    """Where an interrupted stage in ``run_dir`` will continue: its newest checkpoint's step, or the
    search's last finished generation; None when it has not started."""
    from detnas.checkpoint import load_checkpoint

    state = run_dir / SEARCH_STATE_FILE
    if state.exists():
        generation = json.loads(state.read_text()).get("generation")
        return f"after generation {generation} ({state})"
    checkpoints = sorted(run_dir.rglob(CHECKPOINT), key=lambda p: p.stat().st_mtime)
    if checkpoints:
        return f"at step {load_checkpoint(checkpoints[-1])['step']} ({checkpoints[-1]})"
    return None
