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


# ---- pdsim trace info (traces/info.py) ----------------------------------------------------------
@trace_app.command("info")
def trace_info_cmd(
    file: str = typer.Argument(..., help="Trace: Azure CSV, Mooncake JSONL, BurstGPT CSV, Vidur CSV, lengths CSV."),
    format: str | None = typer.Option(None, "--format", help="azure | mooncake | burstgpt | vidur | lengths "
                                      "(default: detected from the content)."),
    rate: float | None = typer.Option(None, "--rate", help="req/s: arrivals for a lengths-only file; "
                                      "a timed trace is rescaled to it."),
    arrival: str = typer.Option("poisson", "--arrival", help="poisson | gamma | constant (with --rate)."),
    cv: float = typer.Option(1.0, "--cv", help="Burstiness of gamma arrivals (CV of the gaps)."),
    spread_ticks: bool = typer.Option(False, "--spread-ticks", help="Spread same-timestamp requests over the tick."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Counts, rate, burstiness and ISL/OSL percentiles of a trace."""
    import json

    from traces.info import info_table, trace_info

    info = trace_info(file, format, rate=rate, arrival=arrival, cv=cv, seed=seed, spread_ticks=spread_ticks)
    if as_json:
        clean = json.loads(json.dumps(info), parse_constant=lambda _: None)  # NaN -> null
        typer.echo(json.dumps(clean, indent=2))
    else:
        typer.echo(info_table(info))


def main() -> None:
    sys.exit(run_app(app))


def plan_main() -> None:
    """`plan ...` is `pdsim plan ...`."""
    sys.exit(run_app(app, ["plan", *sys.argv[1:]]))
