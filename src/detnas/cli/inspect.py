"""Commands that look at the search space: ``space``, ``flops``, ``latency``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from detnas.cli.app import app
from detnas.errors import UserError
from detnas.model.space import PRESETS, SPACES, arch_to_str, get_space, parse_arch, resolve_arch


def _mflops(v: int) -> str:
    from detnas.model.flops import fmt_millions

    return fmt_millions(v)


@app.command()
def space() -> None:
    """List the search spaces and the named architectures (presets) with their FLOPs at 224x224."""
    from detnas.model.flops import arch_cost, cost_table

    print(f"{'space':<8} {'blocks':>6} {'stem':>5} {'channels':<22} {'body FLOPs range':>22}")
    for name, sp in SPACES.items():
        lo, hi = cost_table(sp).body_range
        ch = "/".join(map(str, sp.stage_channels))
        print(f"{name:<8} {sp.num_blocks:>6} {sp.stem_channels:>5} {ch:<22} {_mflops(lo):>10} - {_mflops(hi):>9}")
    print()
    print(f"{'preset':<28} {'space':<11} {'body':>10} {'full':>10} {'params':>8}  arch")
    for p in PRESETS.values():
        sp = p.search_space()
        c = arch_cost(sp, parse_arch(p.arch, sp))
        print(
            f"{p.name:<28} {sp.describe():<11} {_mflops(c.body_flops):>10} {_mflops(c.full_flops):>10} "
            f"{c.full_params / 1e6:>7.2f}M  {p.arch}"
        )


@app.command()
def flops(
    arch: Annotated[str, typer.Option(help="digit string, JSON list or preset name")],
    space_name: Annotated[
        Optional[str], typer.Option("--space", help="small or large (default: the preset's, or by length)")
    ] = None,
    width_mult: Annotated[Optional[float], typer.Option(help="width multiplier (default: the preset's or 1.0)")] = None,
    input_size: Annotated[int, typer.Option(help="square input size in pixels")] = 224,
    num_classes: Annotated[int, typer.Option(help="classifier width for the 'full' count")] = 1000,
    detector: Annotated[
        Optional[str], typer.Option(help="also count a whole detector around it: fpn or retinanet")
    ] = None,
    det_classes: Annotated[int, typer.Option(help="object classes of the detector")] = 80,
    fpn_channels: Annotated[int, typer.Option(help="FPN width (paper: 256)")] = 256,
    box_head_channels: Annotated[int, typer.Option(help="FPN Faster R-CNN box head width (paper: 1024)")] = 1024,
    proposals: Annotated[int, typer.Option(help="test-time proposals of FPN Faster R-CNN (paper: 1000)")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """FLOPs (multiply-accumulates) and parameters of one architecture, optionally of a whole detector.

    The detector count is at the size the network sees (--input-size, square) with the paper's head
    sizes unless given; the box head is counted for all test-time proposals.
    """
    from detnas.model.flops import arch_cost

    if input_size < 32:
        raise UserError(f"--input-size must be at least 32, got {input_size}")
    a, sp = resolve_arch(arch, space_name, width_mult)
    c = arch_cost(sp, a, input_size, num_classes)
    result = {
        "arch": arch_to_str(a),
        "space": sp.name,
        "width_mult": sp.width_mult,
        "input_size": input_size,
        "body_flops": c.body_flops,
        "full_flops": c.full_flops,
        "params": c.full_params,
        "body_params": c.body_params,
    }
    if detector is not None:
        from detnas.model.detector_flops import detector_costs

        result["detector"] = detector_costs(sp, a, detector, det_classes, input_size, fpn_channels,
                                            box_head_channels, proposals)
    if as_json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        if k == "detector":
            for part, macs in v.items():
                print(f"{'detector ' + part:<12} {macs if part == 'kind' else _mflops(macs)}")
        else:
            print(f"{k:<12} {_mflops(v) if k.endswith('flops') else v}")


@app.command()
def latency(
    out: Annotated[Path, typer.Option("--out", help="the table's JSON file")],
    space_name: Annotated[str, typer.Option("--space", help="small or large")] = "small",
    width_mult: Annotated[float, typer.Option(help="width multiplier")] = 1.0,
    input_size: Annotated[str, typer.Option(help="the network's input, H or HxW (after the detector's resize)")] = "224",
    batch: Annotated[int, typer.Option(help="images per forward pass")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: torch's)")] = None,
    detector: Annotated[str, typer.Option(help="fpn, retinanet, or none (the backbone only)")] = "fpn",
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="take the detector's shape from this stage config's 'detector' section")] = None,
    classes: Annotated[int, typer.Option(help="object classes of the detector")] = 80,
    reps: Annotated[int, typer.Option(help="timed repetitions (each runs every choice at every position)")] = 20,
    warmup: Annotated[int, typer.Option(help="untimed repetitions first")] = 5,
    clock: Annotated[str, typer.Option(
        help="wall, or cpu: this thread's CPU time (with --threads 1 on a machine other processes load)")] = "wall",
) -> None:
    """Measure a latency table on this machine: every choice block at every position (on its real input
    shape) and the fixed parts (stem, FPN, heads). Predicted latency = the sum of an architecture's parts."""
    import torch

    from detnas.atomic import write_json_atomic
    from detnas.tools.latency import check_clock, detector_of_config, measure_table, parse_size

    size = parse_size(input_size)
    check_clock(clock, device, threads)
    if detector not in ("fpn", "retinanet", "none"):
        raise UserError(f"--detector must be fpn, retinanet or none, got {detector!r}")
    if min(batch, reps, classes) < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise UserError("--batch, --reps, --classes and --threads must be at least 1, --warmup at least 0")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if out.is_dir():
        raise UserError("--out is a folder; give a file name such as latency.json", out)
    det_cfg = None if detector == "none" else detector_of_config(config, detector)
    table = measure_table(get_space(space_name, width_mult), size, batch, device, threads, det_cfg, classes,
                          warmup, reps, clock=clock)
    write_json_atomic(table.to_json(), out, indent=1)
    lo, hi = table.range_ms
    parts = ", ".join(f"{k} {v:.2f}" for k, v in table.fixed.items())
    print(f"{out}: {table.meta['device']}, {table.meta['threads']} threads, {clock} clock, input {size[0]}x{size[1]} x{batch}; "
          f"fixed parts (ms): {parts}; predicted latency {lo:.2f}-{hi:.2f} ms")

