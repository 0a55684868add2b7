"""Which config each command reads: the stage's own, or a pipeline config (a packaged experiment
included) from which the stage's part is taken, as ``detnas pipeline`` would run that stage.

A config with a top-level ``detection`` section is a pipeline config; no stage config has one.
``--set`` applies to the file as written (pipeline keys for a pipeline config); the command's own
options (``--supernet``, ``--include``, ...) to the stage's config.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ValidationError

from detnas.config.loader import (
    Override,
    apply_overrides,
    find_config,
    read_config,
    substitute,
    validate_config,
)
from detnas.config.schema import (
    EvaluateConfig,
    FinetuneConfig,
    PipelineConfig,
    PretrainConfig,
    RankCheckStageConfig,
    RetrainConfig,
    SearchStageConfig,
)
from detnas.errors import UserError
from detnas.strict import describe_error

STAGE_SCHEMAS: dict[str, type[BaseModel]] = {
    "pipeline": PipelineConfig,
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "search": SearchStageConfig,
    "retrain": RetrainConfig,
    "rank-check": RankCheckStageConfig,
    "evaluate": EvaluateConfig,
}


def is_pipeline_config(data: dict) -> bool:
    return "detection" in data


def _need_supernet(supernet: Path | None, stage: str, source: Path) -> Path:
    if supernet is None:
        raise UserError(f"a pipeline config names no supernet: give the finetuned one to {stage} with "
                        "--supernet DIR (a pipeline's finetune/)", source)
    return supernet


def from_pipeline(stage: str, cfg: PipelineConfig, source: Path, supernet: Path | None) -> BaseModel:
    """The config ``detnas pipeline`` would run ``stage`` with (``supernet``: its finetuned supernet)."""
    if stage == "pretrain":
        if cfg.pretrain_config() is None:
            raise UserError("this pipeline has no supernet pretraining (pretrain or classification is null)", source)
        return cfg.pretrain_config()
    if stage == "finetune":  # the pipeline starts it from its own pretrain/: here from --init, else from scratch
        return cfg.finetune_config(init=None)
    if stage == "search":
        return cfg.search_config(_need_supernet(supernet, stage, source), cfg.search.strategy)
    if stage == "retrain":
        if cfg.retrain.inherit:
            return cfg.retrain_config(_need_supernet(supernet, "inherit from (retrain.inherit)", source))
        if supernet is not None:
            raise UserError("--supernet: retrain.inherit is false, so the networks start from random weights "
                            "(--set retrain.inherit=true starts them from the supernet)", source)
        return cfg.retrain_config(Path())
    if stage == "rank-check":
        return cfg.rank_check_config(_need_supernet(supernet, stage, source), [])
    if stage == "evaluate":
        if cfg.detection.test is None:
            raise UserError("detection.test is not set: there is nothing to evaluate on", source)
        return EvaluateConfig(data=cfg.detection.test, batch_size=cfg.eval.batch_size)
    raise ValueError(f"unknown stage {stage!r}")


def load_stage_config(stage: str, config: str | Path | None, settings: list[Override] = (),
                      variables: dict[str, str | Path | None] | None = None, supernet: Path | None = None,
                      options: list[Override] = ()) -> BaseModel:
    """The validated config of ``stage``: from ``config`` (a file or a packaged name; none: from
    ``options`` alone), with ``settings`` (``--set``) applied to the file and ``options`` (the command's
    own, in the stage's keys; ``supernet`` among them) to the stage's config. An error names the
    override it is about, else the file."""
    model = STAGE_SCHEMAS[stage]
    path = find_config(config) if config is not None else Path("(command line)")
    data = read_config(path) if config is not None else {}
    variables = variables or {}
    if stage == "pipeline" or not is_pipeline_config(data):
        if supernet is not None:
            options = [Override("supernet", str(supernet), f"--supernet {supernet}"), *options]
        data = substitute(apply_overrides(data, [*settings, *options]), variables, path)
        return validate_config(model, data, path, [*settings, *options])
    pipeline = validate_config(PipelineConfig, substitute(apply_overrides(data, settings), variables, path),
                               path, settings)
    try:
        cfg = from_pipeline(stage, pipeline, path, supernet)
    except ValidationError as e:  # the pipeline's values do not make a valid stage config
        raise UserError(describe_error(e), path) from None
    if not options:
        return cfg
    return validate_config(model, apply_overrides(cfg.model_dump(mode="json"), list(options)), path, options)
