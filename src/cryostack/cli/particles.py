"""``cryostack particles``: the command group of the particle tools.

Each command lives in its own module (``particles_<command>.py``) and registers itself here.
"""

from __future__ import annotations

import typer

particles_app = typer.Typer(
    help="Particle stacks: simulation, ranking, subset selection and reconstruction.", no_args_is_help=True
)


def _register() -> None:
    from cryostack.cli import particles_dataset, particles_embed, particles_rank, particles_simulate, particles_wizard

    particles_app.command("simulate")(particles_simulate.simulate)
    particles_app.command("dataset")(particles_dataset.dataset)
    particles_app.command("rank")(particles_rank.rank)
    particles_app.command("embed")(particles_embed.embed)
    particles_app.command("wizard")(particles_wizard.wizard)


_register()
