"""The `byoc` command line.

Exit codes: 0 ok; 2 invalid input (one message naming the field and a fix, no traceback; usage errors too, as one
JSON error object under `--output json`); 1 a failure while running; 130 stopped by Ctrl+C (143: SIGTERM), see
byoc/interrupts.py. Every command that prints data takes `--output json`. Heavy modules (rich, cloud SDKs, Pulumi) are
imported inside the commands that use them, so `byoc --help` stays instant. The command groups live in
byoc/commands/, one module each.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Annotated, Any, NoReturn

import typer

try:  # typer >= 0.22 carries its own copy of Click
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older typer on Click itself
    from click.exceptions import ClickException, UsageError  # type: ignore[assignment,unused-ignore]

from byoc import __version__
from byoc.commands import addons, build, compliance, keys, live, serve, usage
from byoc.commands import plan as planning
from byoc.errors import ByocError

app = typer.Typer(
    name="byoc",
    help="Private LLM inference in your own AWS or GCP account: plan, deploy, serve, and prove compliance.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rendering it with rich costs ~0.15 s of imports on every `byoc --help` (docs/performance.md).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        print(f"byoc {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print byoc's version and exit."),
    ] = False,
) -> None:
    """Private LLM inference in your own AWS or GCP account: plan, deploy, serve, and prove compliance."""


for group in (planning, live, serve, keys, addons, build, compliance, usage):
    group.register(app)


def _json_requested(argv: list[str]) -> bool:
    """Whether the command line asks for `--output json` (`-o json`, `--output=json`, `-ojson`)."""
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        if arg in ("-o", "--output") and index + 1 < len(argv) and argv[index + 1] == "json":
            return True
        if arg in ("--output=json", "-ojson", "-o=json"):
            return True
    return False


def usage_error(exc: Any) -> ByocError:
    """A Click usage error (unknown option, missing argument, bad choice) as byoc's own error: the option or
    argument at fault, Click's message, and where the usage is described."""
    param = getattr(exc, "param", None)
    field = ""
    if param is not None:
        opts = [o for o in getattr(param, "opts", []) if o.startswith("--")] or list(getattr(param, "opts", []))
        if getattr(param, "param_type_name", "") == "argument":
            field = str(getattr(param, "human_readable_name", "") or param.name or "").upper()
        elif opts:
            field = opts[0]
    field = field or str(getattr(exc, "option_name", "") or "")
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "byoc"
    return ByocError(field, exc.format_message(), f"see `{command} --help`")


def main() -> None:
    """`byoc`: Click's usage errors keep the `--output json` contract (one JSON error object on stdout, exit 2),
    and a signal ends the command as byoc.interrupts describes (exit 130 on Ctrl+C, no traceback)."""
    from byoc import interrupts

    if sys.stdout is None:  # started with file descriptor 1 closed (`byoc ... >&-`): nothing could be printed
        if sys.stderr is not None:
            print(
                "error: stdout: closed; byoc prints its results there (redirect it to a file or /dev/null)",
                file=sys.stderr,
            )
        sys.exit(2)
    interrupts.install()
    code: Any = 0
    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        if _json_requested(sys.argv[1:]):
            print(json.dumps({"error": usage_error(exc).as_dict()}), flush=True)
        exc.show()
        code = exc.exit_code
    except ClickException as exc:
        exc.show()
        code = exc.exit_code
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = interrupts.exit_code(signal.SIGINT)
    interrupts.finishing()
    # Stopped by a signal (here, or after byoc.lifecycle let Pulumi stop): end without joining threads that may
    # wait on something that will not come
    stopped = {interrupts.exit_code(s): s for s in (signal.SIGINT, signal.SIGTERM)}
    if code in stopped:
        interrupts.finish(interrupts.received() or stopped[code])
    code = code if isinstance(code, int) else 0
    if _first_word(sys.argv[1:]) in OFFLINE_COMMANDS:
        _exit_without_teardown(code)
    sys.exit(code)


# Commands that run in this process only (no thread or child left working when they return): they end without the
# interpreter's teardown, which after a plan spends ~0.8 s freeing the Pulumi providers' modules (py-spy: samples
# with no Python frame after the last output).
OFFLINE_COMMANDS = frozenset({"plan", "validate", "estimate", "shapes", "regions", "schema"})


def _first_word(args: list[str]) -> str:
    return next((a for a in args if not a.startswith("-")), "")


def _exit_without_teardown(code: int) -> NoReturn:
    """Flush, run the atexit handlers (logging, multiprocessing's), and end the process without freeing every
    module: what `sys.exit` does, less the teardown."""
    import atexit
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more to say there
            code = code or 1
    atexit._run_exitfuncs()
    os._exit(code)
