"""The `vidcc` command. Each subcommand is a module in this package (Polygraphy-style) that defines
`add_parser(subparsers)` and `run(args) -> int`; plugins add commands through `vidcc_register_commands`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from vidcc.errors import VidccError


def _command_modules():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    from vidcc import plugins

    parser = argparse.ArgumentParser(prog="vidcc", description="Graph compiler for video-diffusion ONNX models")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _command_modules():
        module.add_parser(sub)
    for command in plugins.registry().commands.values():
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    from vidcc.cli._output import error_line

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except VidccError as exc:
        if debug:
            raise
        error_line(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        error_line("interrupted")
        return 130
    except Exception as exc:  # an unexpected failure still gets one line unless --debug
        if debug:
            raise
        error_line(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
