"""The docs tell the truth, and this keeps them so (CI runs it in the integration stage: it needs redis-server).

- Every shell block marked runnable (```sh runnable) in README.md and docs/ runs, in order, against a local
  Redis; `<id>` stands for the id the block's last `appliance job submit` printed.
- Every `appliance …` command line in a shell block is parsed by the real argument parser (placeholders such as
  ID, SLOT, N filled with values the option accepts); every inline `appliance …` names commands and options
  that exist (`[--json]`, `a|b` usage syntax included).
- Every setting (`machine.status_interval_s`), `APPLIANCE_*` variable, metric (`appliance_…`), alert
  (`Appliance…`) and endpoint (`GET /ready`) the docs name exists.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from appliance.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK_RE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```", re.S | re.M)
SPAN_RE = re.compile(r"`([^`\n]+)`")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def blocks(kind: str = "sh") -> Iterator[tuple[Path, int, str, str]]:
    """(file, line, info string after the language, body) of every fenced block of `kind`."""
    for path in DOCS:
        text = _text(path)
        for m in BLOCK_RE.finditer(text):
            if m.group(1) == kind:
                yield path, text[: m.start()].count("\n") + 1, m.group(2).strip(), m.group(3)


def prose(path: Path) -> str:
    """The file without its fenced blocks."""
    return BLOCK_RE.sub("", _text(path))


def spans() -> Iterator[tuple[Path, str]]:
    for path in DOCS:
        for m in SPAN_RE.finditer(prose(path)):
            yield path, m.group(1)


# --- command lines ----------------------------------------------------------------------------------------------

APPLIANCE_RE = re.compile(r"(?:^|&&\s*|\|\s*|;\s*)(?:\S*/bin/)?appliance\s+(.*)$")


def command_lines(body: str) -> Iterator[str]:
    """The `appliance …` commands of a shell block: continuations joined, comments and a trailing `&` cut."""
    joined = re.sub(r"\\\n\s*", " ", body)
    for raw in joined.splitlines():
        line = raw.split(" #")[0].strip() if not raw.lstrip().startswith("#") else ""
        for part in re.split(r"\s*(?:&&|;)\s*", line):
            if m := APPLIANCE_RE.match(part.strip()):
                yield m.group(1).rstrip("& ").strip()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _sample(action: argparse.Action | None) -> str:
    """A value the action accepts, for a placeholder in the docs."""
    if action is None:
        return "x"
    if action.choices:
        return str(next(iter(action.choices)))
    if action.type in (int, float):
        return "1"
    if action.dest in ("payload",):
        return "{}"
    if action.dest in ("slot",):
        return "echo0"
    if action.dest in ("unit",):
        return "appliance-worker@echo0.service"
    if action.dest in ("requires",):
        return "k=v"
    return "x"


def _is_placeholder(token: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_=]*(\.\.\.)?|<[^>]+>|%\w|…|\.\.\.", token))


def fill_placeholders(tokens: list[str]) -> list[str]:
    """Replace placeholders (ID, N, <id>, %n) by values the option or positional they stand for accepts."""
    parser: argparse.ArgumentParser = build_parser()
    out: list[str] = []
    positionals: list[argparse.Action] = []
    prev: argparse.Action | None = None
    for token in tokens:
        subs = _subparsers(parser)
        if token in subs and not out[-1:] == [None]:
            parser = subs[token]
            positionals = [a for a in parser._actions if not a.option_strings and a.nargs != argparse.PARSER]
            positionals = [a for a in positionals if not isinstance(a, argparse._SubParsersAction)]
            out.append(token)
            prev = None
            continue
        if token.startswith("--"):
            prev = parser._option_string_actions.get(token.split("=")[0])
            out.append(token)
            if prev is not None and prev.nargs == 0:
                prev = None
            continue
        if _is_placeholder(token):
            if prev is not None:
                out.append(_sample(prev))
                prev = None if prev.nargs not in ("+", "*") else prev
            else:
                out.append(_sample(positionals.pop(0) if positionals else None))
            continue
        if prev is None and positionals:
            positionals.pop(0)
        prev = None
        out.append(token)
    return out


def parse(tokens: list[str]) -> str | None:
    """None when the real parser accepts the command line, else its error."""
    parser = build_parser()
    parser.exit_on_error = False

    def fail(message: str) -> typing.NoReturn:
        raise ValueError(message)

    for p in [parser, *_all_subparsers(parser)]:
        p.error = fail  # type: ignore[method-assign]
    try:
        args = parser.parse_args(tokens)
    except (ValueError, argparse.ArgumentError) as exc:
        return str(exc)
    except SystemExit as exc:  # --help exits 0
        return None if exc.code == 0 else f"exit {exc.code}"
    if getattr(args, "handler", None) is None:
        return "no command"
    return None


def _all_subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for sub in _subparsers(parser).values():
        yield sub
        yield from _all_subparsers(sub)


def code_commands() -> list[tuple[str, str]]:
    out = []
    for path, line, _info, body in blocks("sh"):
        for command in command_lines(body):
            out.append((f"{path.relative_to(ROOT)}:{line}", command))
    return out


@pytest.mark.parametrize(("where", "command"), code_commands(), ids=lambda v: v if ":" in v else None)
def test_shell_block_commands_parse(where: str, command: str) -> None:
    tokens = shlex.split(command)
    if any("[" in t for t in tokens):  # usage syntax: checked like the inline mentions
        problems = usage_problems(command)
        assert not problems, f"{where}: appliance {command}: {problems}"
        return
    error = parse(fill_placeholders(tokens))
    assert error is None, f"{where}: `appliance {command}` does not parse: {error}"


def usage_problems(text: str) -> list[str]:
    """Problems of a usage-style mention (`job get ID [--json]`, `fleet drain|undrain MACHINE`): every command
    word must exist, and every option must be accepted by each command the mention names."""
    text = text.replace("\\|", "|")
    words = re.findall(r"[^\s\[\]]+", text)
    paths: list[argparse.ArgumentParser] = [build_parser()]
    problems: list[str] = []
    options: list[str] = []
    descending = True
    for word in words:
        if word.startswith("--"):
            options += [o.split("=")[0] for o in word.split("|") if o.startswith("--")]
            descending = False
            continue
        if not descending or _is_placeholder(word) or word in ("|", "-", "..."):
            descending = False
            continue
        subs = [_subparsers(p) for p in paths]
        if not any(subs):
            descending = False
            continue
        alternatives = word.split("|")
        nxt = []
        for sub in subs:
            for alt in alternatives:
                if alt in sub:
                    nxt.append(sub[alt])
                elif sub:
                    problems.append(f"no command {alt!r}")
        paths = nxt or paths
    for option in options:
        for p in paths:
            if option not in p._option_string_actions and option not in build_parser()._option_string_actions:
                problems.append(f"`{p.prog}` has no option {option}")
    return problems


def inline_mentions() -> list[tuple[str, str]]:
    out = []
    for path, span in spans():
        m = re.match(r"^(?:\S*/bin/)?appliance\s+(.+)$", span.replace("\n", " "))
        if m and not span.startswith("appliance."):
            out.append((str(path.relative_to(ROOT)), m.group(1)))
    return sorted(set(out))


@pytest.mark.parametrize(("where", "mention"), inline_mentions())
def test_inline_command_mentions_exist(where: str, mention: str) -> None:
    problems = usage_problems(mention)
    assert not problems, f"{where}: `appliance {mention}`: {problems}"


def test_the_checks_are_not_vacuous() -> None:
    assert len(code_commands()) >= 10 and len(inline_mentions()) >= 30
    assert parse(fill_placeholders(shlex.split("job get ID --json"))) is None
    assert parse(fill_placeholders(shlex.split("job get ID --jsn"))) is not None
    assert parse(fill_placeholders(shlex.split("worker --slot SLOT --concurrency N"))) is None
    assert usage_problems("fleet drain|undrain MACHINE [--reason …]") == [
        "`appliance fleet undrain` has no option --reason"
    ]
    assert usage_problems("machine plan --json") == []
    assert usage_problems("machine plam") == ["no command 'plam'"]


# --- runnable blocks --------------------------------------------------------------------------------------------

WRAPPER = """#!/usr/bin/env bash
# `appliance` as the docs run it; remembers the id the last `job submit` printed (the docs' <id>).
if [ "${1-}" = job ] && [ "${2-}" = submit ]; then
    "$PYTHON" -m appliance "$@" | tee "$DOCS_TMP/submit.out"
    status=${PIPESTATUS[0]}
    tail -n 1 "$DOCS_TMP/submit.out" | sed 's/.*"id": "\\([^"]*\\)".*/\\1/' > "$DOCS_TMP/last-id"
    exit "$status"
fi
exec "$PYTHON" -m appliance "$@"
"""


def runnable_blocks() -> list[tuple[str, str]]:
    return [
        (f"{path.relative_to(ROOT)}:{line}", body)
        for path, line, info, body in blocks("sh")
        if "runnable" in info.split()
    ]


def test_there_are_runnable_blocks() -> None:
    where = [w for w, _ in runnable_blocks()]
    assert any(w.startswith("README.md") for w in where) and len(where) >= 2, where


@pytest.mark.parametrize(("where", "body"), runnable_blocks(), ids=[w for w, _ in runnable_blocks()])
def test_runnable_block_runs(where: str, body: str, redis_url: str, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "appliance"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    script = body.replace("<id>", '"$(cat "$DOCS_TMP/last-id")"')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "NOTIFY_SOCKET"))}
    env.update(
        PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
        PYTHON=sys.executable,
        PYTHONPATH=str(ROOT),
        DOCS_TMP=str(tmp_path),
        APPLIANCE_REDIS_URL=redis_url,
    )
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script + "\nwait\n"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, (
        f"{where} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    assert "Traceback" not in proc.stderr, proc.stderr


# --- names: settings, variables, metrics, alerts, endpoints ------------------------------------------------------


def _settings_sections() -> set[str]:
    from appliance.config import Settings

    return set(Settings.model_fields)


def resolve_setting(key: str) -> bool:
    """Whether a dotted key (table entries and list items as `<name>`, `NAME`, `rules[]`) names a setting."""
    from pydantic import BaseModel

    from appliance.config.load import ROOT as SCHEMA
    from appliance.config.load import _members, child, node_of

    node = SCHEMA
    for segment in key.split("."):
        listed = segment.endswith("[]")
        segment = segment.removesuffix("[]")
        if node.kind == "dict":
            node = node_of(node.model)  # any entry name: <name>, NAME, openai
            if node.kind != "model":
                return False
            continue
        nxt = child(node, segment)
        if nxt is None:
            return False
        node = nxt
        if listed:  # the item model of a list
            items = [
                a
                for m in _members(node.annotation)
                for a in typing.get_args(m)
                if isinstance(a, type) and issubclass(a, BaseModel)
            ]
            if not items:
                return False
            node = node_of(items[0])
    return True


SETTING_RE = re.compile(r"^([a-z_]+)\.([a-z_<>\[\]A-Z0-9.]+)$")


def setting_mentions() -> list[tuple[str, str]]:
    sections = _settings_sections()
    out = set()
    for path, span in spans():
        span = span.split(" ")[0].split("=")[0]
        m = SETTING_RE.match(span)
        if m and m.group(1) in sections and not span.endswith((".md", ".py", ".toml", ".yml", ".json")):
            out.add((str(path.relative_to(ROOT)), span))
    return sorted(out)


#: Dotted names in the docs that are neither settings nor NixOS options: Redis's Lua API.
NOT_SETTINGS = {"redis.call", "redis.pcall"}


def nixos_option(key: str) -> bool:
    """Whether `key` names an option of the NixOS module (`services.appliance.<key>`): each segment is declared
    there (`<name> = mkOption` / `mkEnableOption` / `lib.mkPackageOption`, or an option set `<name> = {`)."""
    module = (ROOT / "nixos-modules" / "appliance.nix").read_text()
    return all(
        re.search(rf"^\s*{re.escape(seg)} = (mkOption|mkEnableOption|lib\.mkPackageOption|\{{)", module, re.M)
        for seg in key.split(".")
    )


@pytest.mark.parametrize(("where", "key"), setting_mentions())
def test_settings_named_in_the_docs_exist(where: str, key: str) -> None:
    if key in NOT_SETTINGS:
        return
    assert resolve_setting(key) or nixos_option(key), (
        f"{where}: `{key}` is no setting and no NixOS module option"
    )


def test_variables_named_in_the_docs_exist() -> None:
    from appliance.config import load_settings

    names = set()
    for path in DOCS:
        names |= set(re.findall(r"\bAPPLIANCE_[A-Z0-9_]*[A-Z0-9]\b", _text(path)))
    assert len(names) > 10
    unknown = []
    for name in sorted(names):
        # The unit files' @APPLIANCE_BIN@ placeholders; configuration.md's example of a typo.
        if name in ("APPLIANCE_BIN", "APPLIANCE_DOC", "APPLIANCE_REDIS_URLL"):
            continue
        value = "1" if not name.endswith(("URL",)) else "redis://127.0.0.1:1/0"
        try:
            loaded = load_settings(None, env={name: value})
        except Exception:  # a value of the wrong type still proves the name is a setting
            continue
        if loaded.warnings:
            unknown.append(name)
    assert not unknown, f"APPLIANCE_* variables in the docs that are no setting: {unknown}"


async def _exported_metrics(redis_url: str) -> set[str]:
    """Every metric family the machine exporter and the pool collector render, with their sample names."""
    from prometheus_client.exposition import generate_latest

    from appliance.config import Settings
    from appliance.machine.metrics import make_registry
    from appliance.pools import PoolSignalsCollector
    from appliance.pools.signals import PoolReport, PoolSignals
    from appliance.queue import Queue
    from tests.monitor.helpers import gpu_machine_state

    state = gpu_machine_state("m1")
    q = await Queue.connect(redis_url)
    try:
        state.queue_stats = (await q.stats()).model_dump(mode="json")
    finally:
        await q.close()
    registry, _jobs = make_registry(state)
    text = generate_latest(registry).decode()
    names = set(re.findall(r"^# TYPE (appliance_[a-z0-9_]+)", text, re.M))
    names |= set(re.findall(r"^(appliance_[a-z0-9_]+)", text, re.M))
    collector = PoolSignalsCollector(None, Settings())  # type: ignore[arg-type]
    collector.last_ok = True
    collector.report = PoolReport("default", 900, 0, [PoolSignals("fast", True, max_machines=3)])
    collector.refreshed_at = 0.0
    for family in collector.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
    from appliance.api.metrics import ApiMetrics
    from appliance.webhooks.metrics import WebhookMetrics

    api = ApiMetrics()
    api.observe("/v1/jobs", "GET", 200, 0.01)
    for family in [*api.registry.collect(), *WebhookMetrics().registry.collect()]:
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


async def test_metrics_named_in_the_docs_exist(redis_url: str) -> None:
    exported = await _exported_metrics(redis_url)
    mentioned = set()
    for path in DOCS:
        mentioned |= set(re.findall(r"\b(appliance_[a-z0-9_]*[a-z0-9])\b", _text(path)))
    assert len(mentioned) > 30
    suffixes = ("", "_total", "_bucket", "_sum", "_count", "_created", "_info")
    unknown = sorted(
        m for m in mentioned if not any(m + s in exported or m == e + s for e in exported for s in suffixes)
    )
    assert not unknown, f"metrics in the docs that nothing exports: {unknown}"


def test_alerts_named_in_the_docs_exist() -> None:
    rules = yaml.safe_load((ROOT / "alerts" / "appliance.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    mentioned = set()
    for path in DOCS:
        mentioned |= set(re.findall(r"\b(Appliance[A-Z][A-Za-z]+)\b", _text(path)))
    assert len(mentioned) >= 5
    assert not sorted(mentioned - alerts), (
        f"alerts in the docs that do not exist: {sorted(mentioned - alerts)}"
    )


def _routes(tmp: Path) -> set[str]:
    """Every route our servers serve: the machine's health server, the monitor, the protocol stand-ins."""
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from appliance.config import Settings
    from appliance.machine.health import make_app
    from appliance.monitor.app import Monitor
    from appliance.monitor.app import make_app as monitor_app
    from appliance.pools import PoolSignalsCollector
    from appliance.standins import comfyui, openai, replicate, runpod
    from tests.monitor.helpers import gpu_machine_state

    apps: list[web.Application] = [
        make_app(gpu_machine_state("m1"), CollectorRegistry(), None),
        monitor_app(
            Monitor(Settings(), url="redis://127.0.0.1:1/0"),
            PoolSignalsCollector(None, Settings()),  # type: ignore[arg-type]
        ),
        comfyui.make_app(comfyui.ComfyStandin(tmp)),
        openai.make_app(),
        replicate.make_app(),
        runpod.make_app(),
    ]
    from appliance.api.openapi import document

    routes = set(document()["paths"])  # the HTTP job API's routes (tests/api/test_openapi.py: all of them)
    for app in apps:
        for resource in app.router.resources():
            info = resource.get_info()
            routes.add(str(info.get("path") or info.get("formatter") or info.get("prefix", "")))
    return {r.rstrip("/") or "/" for r in routes}


ENDPOINT_RE = re.compile(r"^(?:(?:GET|POST|GET\\?\|POST) )?(/[a-z][a-z_/{}-]*)(?:\?\S*)?$")


def test_endpoints_named_in_the_docs_exist(tmp_path: Path) -> None:
    routes = _routes(tmp_path)
    mentioned = set()
    for path, span in spans():
        m = ENDPOINT_RE.match(span)
        if m and (
            span.startswith(("GET", "POST")) or m.group(1).split("/")[1] in {r.split("/")[1] for r in routes}
        ):
            mentioned.add((str(path.relative_to(ROOT)), m.group(1)))
    assert len(mentioned) >= 5
    unknown = [(w, e) for w, e in sorted(mentioned) if e.rstrip("/") not in routes]
    assert not unknown, f"endpoints in the docs that no server of ours serves: {unknown}"
