"""``cryostack data``: the command group for training corpora and simulated datasets.

Each command lives in its own module (``data_<command>.py``) and registers itself here.
"""

from __future__ import annotations

import typer

data_app = typer.Typer(help="Training corpora and simulated (map, model) datasets.", no_args_is_help=True)


def _register() -> None:
    from cryostack.cli import data_corpus, data_simulate

    data_app.command("corpus")(data_corpus.corpus)
    data_app.command("simulate")(data_simulate.simulate)


_register()
