"""``cryostack``: the command-line entry point. Each command lives in its own module.

Exit codes: 0 ok, 1 bug (a traceback), 2 bad input (one line), 130 interrupted (one line).
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from cryostack.errors import CryostackError

app = typer.Typer(
    name="cryostack",
    help="From cryo-EM particle images to a refined atomic model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Tools still to come: listed in --help, and a call says so in one line (exit 2) instead of
#: showing an empty group.
NOT_YET: dict[str, str] = {}  # commands announced but not in this release: name → what they will do


def _not_yet(name: str, what: str):
    def command(ctx: typer.Context) -> None:
        raise CryostackError(f"cryostack {name} ({what}) is not available in this release yet")

    command.__doc__ = f"(not available yet) {what[0].upper()}{what[1:]}."
    return command


def _version(value: bool) -> None:
    if value:
        from cryostack import __version__

        typer.echo(f"cryostack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """From cryo-EM particle images to a refined atomic model."""


def _register_groups() -> None:
    from cryostack.cli.data import data_app
    from cryostack.cli.particles import particles_app
    from cryostack.cli.train import train_app

    app.add_typer(data_app, name="data")
    app.add_typer(particles_app, name="particles")
    app.add_typer(train_app, name="train")


def _register_all() -> None:
    if not _registered:
        _register_groups()
        _register()
        _registered.append(True)


_registered: list[bool] = []


def _register() -> None:
    from cryostack.cli import build, demo, enhance, info, refine, run, simulate_map, validate

    for name, what in NOT_YET.items():
        app.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
            _not_yet(name, what)
        )

    app.command("info")(info.info)
    app.command("enhance")(enhance.enhance)
    app.command("build")(build.build)
    app.command("simulate-map")(simulate_map.simulate_map)
    app.command("validate")(validate.validate)
    app.command("demo")(demo.demo)
    app.command("refine")(refine.refine)
    app.command("run")(run.run)


err_console = Console(stderr=True)
INTERRUPTED = "interrupted: nothing partial was written; resumable commands continue where they stopped when rerun"


def _exit_interrupted() -> None:
    """Say so in one line and exit 130, whatever else arrives now.

    The command has already unwound (temporary files removed by their context managers), so
    nothing is left to clean. Further Ctrl-C are ignored and the interpreter's own shutdown is
    skipped: an interrupt that reached Python during it made the interpreter kill itself with
    SIGINT (exit status −2 instead of 130, now and then in the test suite).
    """
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    err_console.print(INTERRUPTED, soft_wrap=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)


def _warn_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    err_console.print(f"[yellow]warning:[/] {' '.join(str(message).split())}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; input problems print one line and exit with status 2, Ctrl-C exits 130."""
    import warnings

    warnings.showwarning = _warn_one_line  # a warning about an input is one line too, not a source listing
    try:
        # Commands are registered here, inside the try, so Ctrl-C during start-up is handled too.
        _register_all()
        # Without standalone mode typer returns an exit code instead of raising for some exits:
        # Ctrl-C comes back as 130 (ignoring it made interrupted runs exit 0).
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code != 0:
            if code == 130:
                _exit_interrupted()
            sys.exit(code)
    except CryostackError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))  # a pipeline stage that hit a bug says 1
    except KeyboardInterrupt:
        _exit_interrupted()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:  # click turns Ctrl-C into Abort
        _exit_interrupted()
    except Exception as exc:  # click usage errors
        # Duck-typed: typer ≥ 0.29 vendors click (typer._click), so `import click` may fail.
        message, exit_code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
        if callable(message) and isinstance(exit_code, int):
            # One line like every other refusal; `--help` shows the usage.
            err_console.print(
                f"[bold red]error:[/] {' '.join(str(message()).split())}", highlight=False, soft_wrap=True
            )
            sys.exit(exit_code)
        raise


if __name__ == "__main__":
    main()
