"""The CLI's contract with its users, in process: every command and option has help, bad numbers
are refused by argparse in one line, and every failure ends as one line with a known exit status
(a traceback only with --debug)."""

from __future__ import annotations

import argparse
import types
from collections.abc import Iterator

import pytest

from cardpay.cli import main as cli
from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.cli.options import non_negative_int, port, positive_float, positive_int

pytestmark = pytest.mark.unit


def _parsers(parser: argparse.ArgumentParser,
             path: str = "cardpay") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _subcommand_help(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    return {choice.dest: choice.help for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for choice in action._choices_actions}


def test_every_command_and_option_has_help() -> None:
    missing = []
    parsers = list(_parsers(cli.build_parser()))
    for path, parser in parsers:
        for name, text in _subcommand_help(parser).items():
            if not (text and text.strip()):
                missing.append(f"{path} {name}")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not (action.help and action.help.strip() and action.help != argparse.SUPPRESS):
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert len(parsers) > 15  # the walk reached the subcommands
    assert missing == []


def test_the_command_list_includes_the_read_commands() -> None:
    commands = _subcommand_help(cli.build_parser())
    for name in ("demo", "status", "payments", "quarantine", "db"):
        assert name in commands


@pytest.mark.parametrize(("convert", "text", "value"), [
    (non_negative_int, "0", 0), (non_negative_int, "17", 17), (positive_int, "1", 1),
    (positive_float, "0.5", 0.5), (port, "9464", 9464),
])
def test_option_types_accept(convert: object, text: str, value: object) -> None:
    assert convert(text) == value  # type: ignore[operator]


@pytest.mark.parametrize(("convert", "text", "message"), [
    (non_negative_int, "-1", "must be 0 or more, got -1"),
    (non_negative_int, "x", "expected a whole number, got 'x'"),
    (positive_int, "0", "must be at least 1, got 0"),
    (positive_int, "2.5", "expected a whole number, got '2.5'"),
    (positive_float, "0", "must be a number above 0, got 0"),
    (positive_float, "nan", "must be a number above 0, got nan"),
    (positive_float, "soon", "expected a number, got 'soon'"),
    (port, "70000", "must be a TCP port (1-65535), got 70000"),
])
def test_option_types_refuse(convert: object, text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as error:
        convert(text)  # type: ignore[operator]
    assert str(error.value) == message


def test_a_bad_option_is_one_line_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["demo", "--payments", "0"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == ("cardpay demo: argument --payments: must be at least 1, got 0 "
                   "(see `cardpay demo --help`)\n")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"cardpay {cli.package_version()}"
    assert cli.package_version()[0].isdigit()


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> dict[str, BaseException]:
    """A `boom` command that raises whatever the test puts in the returned dict."""
    raised: dict[str, BaseException] = {}

    def register(sub: object) -> None:
        parser = sub.add_parser("boom", help="raise")  # type: ignore[attr-defined]
        parser.set_defaults(run=lambda settings, args: (_ for _ in ()).throw(raised["exc"]))

    monkeypatch.setattr(cli, "COMMAND_GROUPS", (types.SimpleNamespace(register=register),))
    for name in ("CARDPAY_DATABASE_URL", "CARDPAY_CONFIRMATIONS", "CARDPAY_MAX_BLOCK_RANGE"):
        monkeypatch.delenv(name, raising=False)
    return raised


@pytest.mark.parametrize(("exc", "status", "line"), [
    (UsageError("give --from-block"), 2, "cardpay boom: give --from-block"),
    (CommandFailed("node unreachable"), 1, "cardpay boom: node unreachable"),
    (KeyboardInterrupt(), 130, "cardpay boom: interrupted"),
    (BrokenPipeError(), 141, None),
    (ValueError("bad\n  value"), 1,
     "cardpay boom: unexpected error: ValueError: bad value (run with --debug for the traceback)"),
    (RuntimeError("x" * 1000), 1,
     f"cardpay boom: unexpected error: RuntimeError: {'x' * 299}… (run with --debug for the "
     "traceback)"),
])
def test_failures_end_as_one_line(failing: dict[str, BaseException], exc: BaseException,
                                  status: int, line: str | None,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    failing["exc"] = exc
    assert cli.main(["boom"]) == status
    assert capsys.readouterr().err == ("" if line is None else line + "\n")


def test_settings_errors_are_usage_errors(failing: dict[str, BaseException],
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    failing["exc"] = AssertionError("not reached: settings fail first")
    monkeypatch.setenv("CARDPAY_MAX_BLOCK_RANGE", "0")
    assert cli.main(["boom"]) == 2
    assert capsys.readouterr().err == "cardpay boom: CARDPAY_MAX_BLOCK_RANGE must be at least 1, got 0\n"


@pytest.mark.parametrize("exc", [ValueError("x"), KeyboardInterrupt(), CommandFailed("y")])
def test_debug_lets_the_exception_through(failing: dict[str, BaseException],
                                          exc: BaseException) -> None:
    failing["exc"] = exc
    with pytest.raises(type(exc)):
        cli.main(["--debug", "boom"])


def test_progress_draws_done_total_and_the_extra_text() -> None:
    import io

    from cardpay.cli.progress import Progress

    out = io.StringIO()
    bar = Progress("backfill", unit="blocks", enabled=True, out=out)
    for done in (10, 50, 100):
        bar.update(done, 100, extra=f"{done * 3} logs")
    bar.close()
    text = out.getvalue()
    assert "backfill" in text and "100/100" in text and "blocks" in text and "300 logs" in text

    quiet = io.StringIO()
    off = Progress("replay", enabled=False, out=quiet)
    off.update(1, 2, extra="x")
    off.close()
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(("value", "wanted"), [("1", True), ("yes", True), ("0", False),
                                                ("", False)])
def test_progress_off_in_a_pipe_unless_asked(monkeypatch: pytest.MonkeyPatch, value: str,
                                             wanted: bool) -> None:
    import io

    from cardpay.cli.progress import progress_wanted

    monkeypatch.setenv("CARDPAY_PROGRESS", value)
    assert progress_wanted(io.StringIO()) is wanted
