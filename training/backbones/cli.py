"""``facebridge backbone train|export|init``. torch is imported inside the commands only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service.errors import InvalidInput

if TYPE_CHECKING:
    from training.backbones.export import BackboneExportReport

app = typer.Typer(
    help="Train iResNet backbones (ArcFace) and export them to ONNX with a manifest.",
    no_args_is_help=True,
)

ExporterOption = Annotated[
    str, typer.Option("--exporter", help="dynamo (default) | legacy (TorchScript; faster)")
]
ArchOption = Annotated[
    str | None, typer.Option("--arch", help="r18 | r50 (also r34, r100); default from the config")
]


def _parse_batches(spec: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError as exc:
        raise InvalidInput(f"--parity-batches: expected e.g. '1,7,256', got {spec!r}") from exc
    if not batches or any(b < 1 for b in batches):
        raise InvalidInput(f"--parity-batches: expected positive sizes, got {spec!r}")
    return batches


def _print_report(report: BackboneExportReport) -> None:
    parity = ", ".join(f"batch {b}: {c:.7f}" for b, c in report.parity.items())
    typer.echo(f"wrote {report.onnx_path} ({report.size_bytes / 1e6:.1f} MB)")
    typer.echo(f"manifest {report.manifest_path}")
    typer.echo(f"sha256 {report.sha256}")
    typer.echo(f"parity (min cosine torch vs ONNX Runtime): {parity}")


@app.command("train")
def train_command(
    data: Annotated[
        Path,
        typer.Option("--data", help="image folder root/<identity>/<image> or RecordIO dir/.rec"),
    ],
    output: Annotated[
        Path, typer.Option("--output", help="run directory (resumes if it has a checkpoint)")
    ],
    arch: ArchOption = None,
    config: Annotated[
        str | None, typer.Option("--config", help="TOML/YAML file or built-in name: r18, r50, tiny")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=2)] = None,
    lr: Annotated[float | None, typer.Option("--lr")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1)] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, help="DataLoader workers")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="torch CPU threads")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu | cuda | cuda:N")] = "cpu",
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Train a backbone with an ArcFace head. Under torchrun it runs data-parallel (DDP)."""
    from training.backbones.config import load_train_config
    from training.backbones.train import train_backbone

    cfg = load_train_config(
        config,
        overrides={
            "arch": arch,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "max_steps": max_steps,
            "num_workers": workers,
            "threads": threads,
            "seed": seed,
        },
    )
    result = train_backbone(data=data, output=output, config=cfg, device=device, progress=progress)
    if result.rank != 0:
        return
    for record in result.epoch_metrics:
        typer.echo(
            f"epoch {record['epoch']}: loss {record['loss']:.4f}  acc {record['accuracy']:.3f}  "
            f"steps {record['steps']}  {record['seconds']:.1f}s"
        )
    typer.echo(
        f"{cfg.arch}: {result.num_images} images, {result.num_classes} classes, "
        f"{result.epochs_done} epoch(s), {result.steps} steps"
    )
    typer.echo(f"checkpoint {result.checkpoint}")
    typer.echo(f"backbone {result.backbone}")


@app.command("export")
def export_command(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="checkpoint or backbone .safetensors")
    ],
    output: Annotated[
        Path, typer.Option("--output", help="FILE.onnx; the manifest FILE.json goes beside it")
    ],
    arch: ArchOption = None,
    model_id: Annotated[str | None, typer.Option("--model-id")] = None,
    parity_batches: Annotated[str, typer.Option("--parity-batches")] = "1,7,256",
    exporter: ExporterOption = "dynamo",
    threads: Annotated[int, typer.Option("--threads", min=1)] = 2,
) -> None:
    """Export a trained backbone to ONNX + manifest, validated (checker, ORT parity, loader)."""
    batches = _parse_batches(parity_batches)
    import torch

    from training.backbones.checkpoint import load_backbone
    from training.backbones.export import export_backbone

    torch.set_num_threads(threads)
    model, cfg = load_backbone(checkpoint, arch=arch)
    report = export_backbone(
        model,
        output,
        model_id=model_id or cfg.model_id or f"iresnet-{cfg.arch}-{checkpoint.stem}",
        parity_batches=batches,
        exporter=exporter,  # type: ignore[arg-type]
    )
    _print_report(report)


@app.command("init")
def init_command(
    output: Annotated[
        Path, typer.Option("--output", help="FILE.onnx; the manifest FILE.json goes beside it")
    ],
    arch: Annotated[str, typer.Option("--arch")] = "r18",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    width: Annotated[
        int, typer.Option("--width", min=1, help="first-stage channels (64 = full)")
    ] = 64,
    embedding_dim: Annotated[int, typer.Option("--embedding-dim", min=1)] = 512,
    model_id: Annotated[str | None, typer.Option("--model-id")] = None,
    parity_batches: Annotated[
        str,
        typer.Option("--parity-batches", help="batch 256 adds ~1 min for a full r18 on 2 cores"),
    ] = "1,7",
    exporter: ExporterOption = "dynamo",
    threads: Annotated[int, typer.Option("--threads", min=1)] = 2,
) -> None:
    """Export a randomly initialised (seeded) backbone + manifest (a demo without weights)."""
    batches = _parse_batches(parity_batches)
    import torch

    from training.backbones.config import TrainConfig
    from training.backbones.export import export_random_backbone
    from training.backbones.iresnet import ARCHS

    if arch not in ARCHS:
        raise InvalidInput(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    torch.set_num_threads(threads)
    cfg = TrainConfig(arch=arch, width=width, embedding_dim=embedding_dim)  # type: ignore[arg-type]
    report = export_random_backbone(
        output,
        seed=seed,
        config=cfg,
        model_id=model_id,
        parity_batches=batches,
        exporter=exporter,  # type: ignore[arg-type]
    )
    _print_report(report)
