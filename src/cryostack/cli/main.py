"""``cryostack``: the command-line entry point. Each command lives in its own module."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from cryostack.errors import InputError

app = typer.Typer(
    name="cryostack",
    help="From cryo-EM particle images to a refined atomic model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Groups for the tools that build on the core; their commands arrive with each tool.
GROUPS = {
    "particles": "Particle ranking, subset selection and reconstruction.",
    "enhance": "Map enhancement for 4–8 Å maps.",
    "build": "Atomic model building from a map and a sequence.",
}
for _name, _help in GROUPS.items():
    app.add_typer(typer.Typer(help=_help, no_args_is_help=True), name=_name)


def _register_groups() -> None:
    from cryostack.cli.data import data_app

    app.add_typer(data_app, name="data")


_register_groups()


def _register() -> None:
    from cryostack.cli import demo, info, refine, simulate_map, validate

    app.command("info")(info.info)
    app.command("simulate-map")(simulate_map.simulate_map)
    app.command("validate")(validate.validate)
    app.command("demo")(demo.demo)
    app.command("refine")(refine.refine)


_register()

err_console = Console(stderr=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; input problems print one line and exit with status 2."""
    try:
        app(args=argv, standalone_mode=False)
    except InputError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors
        # Duck-typed: typer ≥ 0.29 vendors click (typer._click), so `import click` may fail.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
