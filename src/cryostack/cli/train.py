"""``cryostack train``: (pre)training of the learned models, resumable.

Each command lives in its own module (``train_<model>.py``) and registers itself here.
"""

from __future__ import annotations

import typer

train_app = typer.Typer(
    help="Train the learned models on the corpus (resumable: rerun with the same --out).", no_args_is_help=True
)


def _register() -> None:
    from cryostack.cli import train_builder, train_denoiser, train_encoder, train_enhancer, train_ranker

    train_app.command("builder")(train_builder.builder)
    train_app.command("denoiser")(train_denoiser.denoiser)
    train_app.command("encoder")(train_encoder.encoder)
    train_app.command("enhancer")(train_enhancer.enhancer)
    train_app.command("ranker")(train_ranker.ranker)


_register()
