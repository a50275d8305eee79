"""`pdsim`: every verb of the tool. Heavy modules (torch, the simulator) load inside the command
that needs them so that `pdsim --help`, `simulate` and `plan` start fast.

Each command is a thin shell: parse flags, call the package function, print, exit. User errors are
`profiler.errors.InputError`, printed as one line (``pdsim: error: ...``) with exit code 2.
"""

from __future__ import annotations

import sys

import typer

from profiler.errors import InputError

app = typer.Typer(
    name="pdsim",
    help="Plan LLM serving: aggregated or disaggregated, how many GPUs where, and what TTFT/TPOT users see.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
trace_app = typer.Typer(help="Inspect workload traces.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")

EXIT_INPUT_ERROR = 2


def fail(message: str, code: int = EXIT_INPUT_ERROR) -> None:
    typer.echo(f"pdsim: error: {message}", err=True)
    raise typer.Exit(code)


def run_app(application: typer.Typer, args: list[str] | None = None) -> int:
    """Run a typer app; InputError and other expected failures become one line, never a traceback."""
    try:
        application(args=args, standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except InputError as e:
        typer.echo(f"pdsim: error: {e}", err=True)
        return EXIT_INPUT_ERROR
    except (typer.BadParameter, typer.Abort) as e:  # pragma: no cover - click handles most
        typer.echo(f"pdsim: error: {e}", err=True)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        typer.echo("pdsim: interrupted", err=True)
        return 130
    except Exception as e:  # noqa: BLE001 - click usage errors carry their own exit code
        import click

        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        raise
    return 0


def main() -> None:
    sys.exit(run_app(app))


def plan_main() -> None:
    """`plan ...` is `pdsim plan ...`."""
    sys.exit(run_app(app, ["plan", *sys.argv[1:]]))
