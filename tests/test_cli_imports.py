"""The CLI starts fast because it imports only what the command it runs needs (docs/performance.md, "CLI
start-up"): checked by the modules a fresh interpreter holds afterwards, not by timing."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import build_parser, parse
from appliance.commands import COMMANDS

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}

#: Heavy modules `appliance --help` (building every command's parser) must not load.
NOT_FOR_HELP = (
    "aiohttp",
    "prometheus_client",
    "pydantic",
    "pydantic_settings",
    "redis",
    "hiredis",
    "yaml",
    "openai",
    "appliance.queue",
    "appliance.config",
)
#: What `appliance job get` has no use for (it needs the settings, pydantic and redis; YAML only for a YAML file,
#: appliance.pools only when the classifier is enabled, which it is not by default).
NOT_FOR_JOB_GET = (
    "aiohttp",
    "prometheus_client",
    "openai",
    "yaml",
    "appliance.monitor",
    "appliance.worker",
    "appliance.pools",
)


def loaded_after(code: str) -> list[str]:
    """The modules of sys.modules after running `code` in a fresh interpreter."""
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return list(json.loads(out.strip().splitlines()[-1]))


def run_main(argv: list[str]) -> str:
    """Code that runs `appliance ARGV` in-process, as the console script does (`--help` exits)."""
    return f"from appliance.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"


def command_modules(loaded: list[str]) -> list[str]:
    return [m for m in loaded if m.startswith("appliance.commands.")]


def test_appliance_help_imports_no_command_module_and_nothing_heavy() -> None:
    """`appliance --help` is the interpreter, argparse and the command table: no command module, no asyncio."""
    loaded = loaded_after(run_main(["--help"]))
    assert command_modules(loaded) == []
    assert [m for m in loaded if m.split(".")[0] in (*NOT_FOR_HELP, "asyncio")] == []


@pytest.mark.parametrize("argv", [["job", "--help"], ["job", "get", "--help"], ["job", "get"]])
def test_a_command_imports_only_its_own_module(argv: list[str]) -> None:
    loaded = loaded_after(run_main(argv))
    assert command_modules(loaded) == ["appliance.commands.connection", "appliance.commands.job"]
    assert [m for m in loaded if m.split(".")[0] in NOT_FOR_HELP] == []


def test_the_command_table_is_what_the_modules_register() -> None:
    """Every command's stand-in (name and help line) is the real parser's, and `appliance --help` is the same
    text whichever commands are built in full."""
    whole = build_parser()
    (action,) = [a for a in whole._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(action.choices) == list(COMMANDS)
    assert {c.dest: c.help for c in action._choices_actions} == {n: c.help for n, c in COMMANDS.items()}
    for name in COMMANDS:
        assert build_parser(full=(name,)).format_help() == whole.format_help()
    assert build_parser(full=()).format_help() == whole.format_help()


@pytest.mark.parametrize(
    "argv",
    [
        ["job", "get", "abc", "--json"],
        ["--log-level", "DEBUG", "job", "submit", "--service", "echo", "--payload", "{}"],
        ["config", "check", "x.toml", "--with-env"],
        ["machine"],
        ["queue", "pause", "--shape", "s1"],
        [],
    ],
)
def test_parse_gives_what_the_whole_parser_gives(argv: list[str]) -> None:
    assert vars(parse(argv)[1]) == vars(build_parser().parse_args(argv))


def test_help_imports_no_heavy_module() -> None:
    loaded = loaded_after("import appliance.cli\nappliance.cli.build_parser().format_help()")
    assert [m for m in loaded if m.split(".")[0] in NOT_FOR_HELP or m in NOT_FOR_HELP] == []
    assert not [m for m in loaded if m.startswith(("appliance.queue", "appliance.config"))]


def test_job_get_imports_neither_web_nor_metrics_modules(redis_url: str) -> None:
    code = (
        "from appliance.cli import main\n"
        f"code = main(['job', 'get', 'no-such-job', '--redis-url', {redis_url!r}])\n"
        "assert code != 0, code"
    )
    loaded = loaded_after(code)
    assert "redis" in loaded  # it did reach Redis
    assert [m for m in loaded if m in NOT_FOR_JOB_GET or m.startswith(NOT_FOR_JOB_GET)] == []


def test_a_command_loads_the_settings_once(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log level and the command share one load of the settings (each load walks the whole schema)."""
    import appliance.config
    from appliance.cli import main

    loads: list[object] = []
    real = appliance.config.load

    def counted(*args: object, **kwargs: object) -> object:
        loads.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(appliance.config, "load", counted)
    assert main(["job", "get", "no-such-job", "--redis-url", redis_url]) == 3
    assert len(loads) == 1


def test_job_get_reads_no_lua_script(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client command reads only the scripts it calls: `job get` calls none, `job submit` reads submit.lua (and
    what it includes), not every script (reading and expanding all of them at connect cost about 7 % of a `job get`)."""
    import appliance.queue.scripts as scripts
    from appliance.cli import main

    read: list[str] = []
    real = scripts._read

    def counted(name: str) -> str:
        read.append(name)
        return real(name)

    monkeypatch.setattr(scripts, "_read", counted)
    assert main(["job", "get", "no-such-job", "--redis-url", redis_url]) == 3
    assert read == []
    assert main(["job", "submit", "--service", "echo", "--redis-url", redis_url]) == 0
    whole = [n for n in read if not n.startswith("includes/")]
    assert "submit.lua" in whole and len(set(whole)) < len(scripts.SCRIPT_NAMES)
