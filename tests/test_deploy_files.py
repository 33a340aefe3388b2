"""docker-compose.yml and Procfile: the services they need exist, and every command they run
points at an entry point that exists (a CLI subcommand the parser accepts, a module that imports,
a Dramatiq queue some actor consumes)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq.cli
import pytest
import yaml

from api.cli import main as helpdesk_main
from api.routes.health import healthz, readyz
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
COMPOSE = ROOT / "docker-compose.yml"
SEPARATORS = {"&&", "||", ";", "|", "&"}
SHELLS = {"sh", "bash", "dash", "ash", "/bin/sh", "/bin/bash", "/usr/bin/env"}
_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?+])([^}]*))?\}|\$(\w+)")


def project_scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        scripts: dict[str, str] = tomllib.load(handle)["project"].get("scripts", {})
    return scripts


def expand(text: str) -> str:
    """Shell/compose parameter expansion with every variable unset: defaults win, ``:+`` gives
    nothing, anything else a number (counts and ports are the usual unset values)."""

    def value(match: re.Match[str]) -> str:
        if match.group(2) in {"-", ":-"}:
            return match.group(3)
        if match.group(2) in {"+", ":+"}:
            return ""
        return "1"

    return _VAR.sub(value, text.replace("$$", "\0")).replace("\0", "$")


def simple_commands(command: str | list[str]) -> Iterator[list[str]]:
    """Split a command (a shell string or an exec list) into the simple commands it runs."""
    if isinstance(command, list):
        argv = [expand(str(part)) for part in command]
        yield from _unwrap(argv)
        return
    lexer = shlex.shlex(expand(command), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    current: list[str] = []
    for token in lexer:
        if token in SEPARATORS:
            if current:
                yield from _unwrap(current)
            current = []
        else:
            current.append(token)
    if current:
        yield from _unwrap(current)


def _unwrap(argv: list[str]) -> Iterator[list[str]]:
    """Strip what only sets up the real program: VAR=x, exec, env, ``uv run``, ``sh -c``."""
    while argv and (re.match(r"^\w+=", argv[0]) or argv[0] in {"exec", "env", "/usr/bin/env"}):
        argv = argv[1:]
    if argv[:2] == ["uv", "run"]:
        argv = argv[2:]
        while argv and argv[0].startswith("-"):
            argv = argv[1:]
    if argv and argv[0] in SHELLS and "-c" in argv:
        yield from simple_commands(argv[argv.index("-c") + 1])
        return
    if argv:
        yield argv


@dataclass
class Imports:
    """Modules that must import (each alone, in a fresh interpreter) and queues to consume."""

    modules: set[str] = field(default_factory=set)
    # the modules a worker line imports (space-separated) -> the queues it names
    queues: dict[str, set[str]] = field(default_factory=dict)


def check_program(argv: list[str], imports: Imports, where: str) -> str:
    """Check one simple command; returns a short name of what it runs (``helpdesk serve``)."""
    program = os.path.basename(argv[0])
    if program.startswith("python") and len(argv) >= 3 and argv[1] == "-m":
        module = argv[2]
        if module in {"dramatiq", "granian", "alembic"}:
            return check_program([module, *argv[3:]], imports, where)
        if module == "api.cli":
            return check_program(["helpdesk", *argv[3:]], imports, where)
        imports.modules.add(module)
        return f"python -m {module}"
    if program == "helpdesk":
        assert project_scripts().get("helpdesk") == "api.cli:main", "helpdesk is no console script"
        return f"helpdesk {check_helpdesk(argv[1:], where)}"
    if program == "dramatiq":
        try:
            args = dramatiq.cli.make_argument_parser().parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{where}: dramatiq does not accept {shlex.join(argv[1:])}")
        specs = [args.broker, *args.modules]
        imports.modules.update(specs)
        imports.queues.setdefault(" ".join(specs), set()).update(args.queues or [])
        return f"dramatiq {' '.join(specs)}"
    if program == "granian":
        targets = [arg for arg in argv[1:] if ":" in arg and not arg.startswith("-")]
        assert targets, f"{where}: granian without a module:app target"
        imports.modules.add(targets[-1])
        return f"granian {targets[-1]}"
    if program == "alembic":
        assert (ROOT / "alembic.ini").exists(), f"{where}: alembic without alembic.ini"
        return "alembic"
    if program in project_scripts():
        imports.modules.add(project_scripts()[program])
        return program
    if "/" in argv[0]:
        # A script of ours, by its path in the repository (or in the image, where /app or the
        # like is the repository root).
        parts = Path(argv[0]).parts
        candidates = [ROOT.joinpath(*parts[i:]) for i in range(len(parts)) if parts[i] != "/"]
        if any(candidate.is_file() for candidate in candidates):
            return f"script {argv[0]}"
    pytest.fail(f"{where}: {argv[0]!r} is not an entry point this project provides")


def check_helpdesk(args: list[str], where: str) -> str:
    """Run the real ``helpdesk`` parser on ``args``, without running the subcommand."""
    chosen: list[argparse.Namespace] = []
    parse_args = argparse.ArgumentParser.parse_args

    def parse_only(self: argparse.ArgumentParser, *a: Any, **kw: Any) -> argparse.Namespace:
        namespace = parse_args(self, *a, **kw)
        chosen.append(namespace)
        namespace.func = lambda _: 0
        return namespace

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
        try:
            result = helpdesk_main(args)
        except SystemExit as exc:
            pytest.fail(f"{where}: helpdesk rejects {shlex.join(args)!r} (exit {exc.code})")
    assert result == 0 and chosen, f"{where}: helpdesk {shlex.join(args)} did not parse"
    command: str = chosen[-1].command
    return command


@dataclass(frozen=True)
class ImportReport:
    modules: frozenset[str]  # what was imported
    errors: dict[str, str]  # module spec -> why it did not import
    queues_of: dict[str, frozenset[str]]  # module spec -> queues its actors consume

    @property
    def queues(self) -> frozenset[str]:
        return frozenset().union(*self.queues_of.values())


_IMPORT_ONE = """
import importlib, json, sys
spec = sys.argv[1]
module, _, attr = spec.partition(':')
error, queues = None, []
try:
    loaded = importlib.import_module(module)
    if attr:
        getattr(loaded, attr)
except BaseException as exc:
    error = f'{type(exc).__name__}: {exc}'
if 'dramatiq' in sys.modules:
    import dramatiq
    queues = sorted(dramatiq.get_broker().get_declared_queues())
print(json.dumps({'error': error, 'queues': queues}))
"""


def import_in_fresh_interpreter(modules: set[str]) -> ImportReport:
    """Import each module (``module`` or ``module:attribute``) alone in a new interpreter, as a
    worker pool does, so that what workers do at import time (choosing a broker) stays out of
    this test process and a module that only imports after another one is caught."""
    env = {**os.environ, "DATABASE_URL": TEST_DATABASE_URL, "REDIS_URL": TEST_REDIS_URL}
    running = {
        spec: subprocess.Popen(
            [sys.executable, "-c", _IMPORT_ONE, spec],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for spec in sorted(modules)
    }
    errors: dict[str, str] = {}
    queues_of: dict[str, frozenset[str]] = {}
    for spec, process in running.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err[-2000:]
        report = json.loads(out.strip().splitlines()[-1])
        if report["error"]:
            errors[spec] = report["error"]
        queues_of[spec] = frozenset(report["queues"])
    return ImportReport(modules=frozenset(modules), errors=errors, queues_of=queues_of)


def check_imports(imports: Imports, report: ImportReport) -> None:
    """Every module imported, and every queue a worker line names has an actor in the modules
    that line imports."""
    unchecked = imports.modules - report.modules
    assert not unchecked, f"not imported by the report: {sorted(unchecked)}"
    failed = {spec: report.errors[spec] for spec in imports.modules if spec in report.errors}
    assert failed == {}, failed
    for specs, named in imports.queues.items():
        declared = frozenset().union(*(report.queues_of[spec] for spec in specs.split()))
        assert named <= declared, f"{specs}: queues no actor consumes: {sorted(named - declared)}"


def check_every_queue_has_a_pool(imports: Imports, report: ImportReport, where: str) -> None:
    """The other direction: a queue some actor uses but no worker line consumes would fill up
    and never be worked off."""
    consumed = set().union(*imports.queues.values()) if imports.queues else set()
    assert report.queues <= consumed, f"{where}: no pool for {sorted(report.queues - consumed)}"


def collect(commands: dict[str, str | list[str]]) -> Imports:
    """The modules the given commands need, ignoring commands that do not resolve (the tests
    report those)."""
    imports = Imports()
    for where, command in commands.items():
        for argv in simple_commands(command):
            try:
                check_program(argv, imports, where)
            except (pytest.fail.Exception, AssertionError):
                continue
    return imports


NO_SUCH_MODULE = "workers.no_such_module"


@pytest.fixture(scope="module")
def import_report() -> ImportReport:
    """One interpreter imports everything the Procfile and compose file run (imports are slow)."""
    commands: dict[str, str | list[str]] = dict(procfile_entries())
    if COMPOSE.exists():
        services = (yaml.safe_load(COMPOSE.read_text()) or {}).get("services") or {}
        for name, service in services.items():
            for i, part in enumerate(_command_of(service)):
                commands[f"compose {name} {i}"] = part
    return import_in_fresh_interpreter(collect(commands).modules | {NO_SUCH_MODULE})


# -- Procfile -------------------------------------------------------------------------------------


def procfile_entries() -> dict[str, str]:
    entries: dict[str, str] = {}
    for number, line in enumerate(PROCFILE.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, command = line.partition(":")
        assert sep and re.fullmatch(r"[A-Za-z0-9_-]+", name), f"Procfile:{number}: {line!r}"
        assert name not in entries, f"Procfile:{number}: {name} is defined twice"
        assert command.strip(), f"Procfile:{number}: {name} has no command"
        entries[name] = command.strip()
    return entries


def test_procfile_commands_point_at_real_entry_points(import_report: ImportReport) -> None:
    entries = procfile_entries()
    assert "web" in entries
    imports = Imports()
    ran: dict[str, list[str]] = {}
    for name, command in entries.items():
        ran[name] = [
            check_program(argv, imports, f"Procfile {name}") for argv in simple_commands(command)
        ]
        assert ran[name], f"Procfile {name}: nothing to run"
    assert ran["web"][-1] == "helpdesk serve"
    check_imports(imports, import_report)
    check_every_queue_has_a_pool(imports, import_report, "Procfile")


# -- docker-compose.yml ---------------------------------------------------------------------------


def _command_of(service: dict[str, Any]) -> list[str | list[str]]:
    return [part for part in (service.get("entrypoint"), service.get("command")) if part]


def _ran_by(service: dict[str, Any], imports: Imports, where: str) -> list[str]:
    entrypoint, command = service.get("entrypoint"), service.get("command")

    def as_list(value: str | list[str]) -> list[str]:
        return value if isinstance(value, list) else shlex.split(expand(value))

    if entrypoint and command:
        # Docker appends the command to the entrypoint.
        parts: list[str | list[str]] = [[*as_list(entrypoint), *as_list(command)]]
    else:
        parts = _command_of(service)
    return [check_program(argv, imports, where) for part in parts for argv in simple_commands(part)]


def check_compose(document: dict[str, Any], report: ImportReport, root: Path = ROOT) -> Imports:
    services: dict[str, Any] = document["services"]
    assert {"postgres", "redis", "api"} <= set(services)

    for name in ("postgres", "redis"):
        healthcheck = services[name].get("healthcheck") or {}
        assert healthcheck.get("test"), f"{name} has no healthcheck"
        assert healthcheck.get("disable") is not True

    api = services["api"]
    depends = api.get("depends_on")
    assert isinstance(depends, dict), "api must wait on conditions, not just start order"
    for name in ("postgres", "redis"):
        assert depends.get(name, {}).get("condition") == "service_healthy", name

    # Our own image: built here, or the same image the api service uses.
    ours = {
        name: service
        for name, service in services.items()
        if "build" in service or (service.get("image") and service.get("image") == api.get("image"))
    }
    assert "api" in ours
    imports = Imports()
    ran = {name: _ran_by(service, imports, f"compose {name}") for name, service in ours.items()}
    for name, service in ours.items():
        build = service.get("build")
        if build is not None:
            context = root / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            assert (context / (dockerfile or "Dockerfile")).exists(), f"{name}: no Dockerfile"
        assert ran[name] or service.get("build"), f"compose {name}: runs nothing"

    # The API applies migrations before it serves: in its own command, or in a one-shot service
    # it waits for.
    api_runs = ran["api"]
    servers = [i for i, run in enumerate(api_runs) if run == "helpdesk serve" or "granian" in run]
    assert servers, f"api runs {api_runs}, which serves nothing"
    migrated_first = "helpdesk migrate" in api_runs[: servers[0]]
    migrated_before = any(
        "helpdesk migrate" in ran.get(name, [])
        and isinstance(condition, dict)
        and condition.get("condition") == "service_completed_successfully"
        for name, condition in depends.items()
    )
    assert migrated_first or migrated_before, f"api runs {api_runs} without migrating first"

    # Health checks of our services ask for routes the API has.
    probe_paths = {path for handler in (healthz, readyz) for path in handler.paths}
    for name, service in ours.items():
        test = (service.get("healthcheck") or {}).get("test") or []
        text = test if isinstance(test, str) else " ".join(map(str, test))
        for path in re.findall(r"https?://[^/\s\"']+(/[\w./-]*)", text):
            assert path in probe_paths, f"compose {name}: healthcheck asks for {path}"

    check_imports(imports, report)
    return imports


def test_compose_services_and_commands(import_report: ImportReport) -> None:
    imports = check_compose(yaml.safe_load(COMPOSE.read_text()), import_report)
    check_every_queue_has_a_pool(imports, import_report, "docker-compose.yml")


# -- the checks themselves ------------------------------------------------------------------------


def test_the_checker_rejects_what_does_not_exist(import_report: ImportReport) -> None:
    """The helpers above must fail on a wrong command, or the tests prove nothing."""
    for bad in [
        "helpdesk serev",
        "helpdesk serve --no-such-flag",
        "nonexistent-program --flag",
        "dramatiq workers.notifications --no-such-option",
    ]:
        with pytest.raises(pytest.fail.Exception):
            for argv in simple_commands(bad):
                check_program(argv, Imports(), bad)

    for command, queue in [
        ("dramatiq workers.notifications --queues no_such_queue", "no_such_queue"),
        # A queue of another pool: the pool does not import that pool's actors.
        ("dramatiq workers.notifications --queues events", "events"),
    ]:
        imports = Imports()
        for argv in simple_commands(command):
            check_program(argv, imports, "queue")
        with pytest.raises(AssertionError, match=queue):
            check_imports(imports, import_report)

    with pytest.raises(AssertionError, match="no_such_module"):
        check_imports(Imports(modules={NO_SUCH_MODULE}), import_report)

    script = (
        "sh -c 'X=1 exec uv run --frozen helpdesk migrate && helpdesk serve --host ${H:-0.0.0.0}'"
    )
    assert list(simple_commands(script)) == [
        ["helpdesk", "migrate"],
        ["helpdesk", "serve", "--host", "0.0.0.0"],
    ]
    assert shutil.which("sh") is not None


SAMPLE_COMPOSE = """
services:
  postgres:
    image: postgres:17
    healthcheck: {test: ["CMD-SHELL", "pg_isready -U postgres"], interval: 2s}
  redis:
    image: redis:7
    command: redis-server --save ""
    healthcheck: {test: ["CMD", "redis-cli", "ping"]}
  api:
    build: .
    command: sh -c "helpdesk migrate && exec helpdesk serve --host 0.0.0.0"
    depends_on:
      postgres: {condition: service_healthy}
      redis: {condition: service_healthy}
    healthcheck: {test: ["CMD", "curl", "-fs", "http://localhost:8000/readyz"]}
  notifications:
    build: .
    command: ["dramatiq", "workers.notifications", "--queues", "notifications", "-p", "2"]
"""


def test_the_compose_checker_on_samples(tmp_path: Path, import_report: ImportReport) -> None:
    """Until (and after) the real file exists: a good sample passes, each fault is caught."""
    (tmp_path / "Dockerfile").write_text("FROM python:3.12-slim\n")
    check_compose(yaml.safe_load(SAMPLE_COMPOSE), import_report, tmp_path)

    def broken(change: Any) -> dict[str, Any]:
        document = yaml.safe_load(SAMPLE_COMPOSE)
        change(document["services"])
        return document

    faults = {
        "no redis": lambda s: s.pop("redis"),
        "no postgres healthcheck": lambda s: s["postgres"].pop("healthcheck"),
        "depends_on without conditions": lambda s: s["api"].update(
            depends_on=["postgres", "redis"]
        ),
        "redis only started": lambda s: s["api"]["depends_on"].update(
            redis={"condition": "service_started"}
        ),
        "serves without migrating": lambda s: s["api"].update(command="helpdesk serve"),
        "migrates after serving": lambda s: s["api"].update(
            command="sh -c 'helpdesk serve; helpdesk migrate'"
        ),
        "unknown subcommand": lambda s: s["api"].update(command="helpdesk server"),
        "unknown queue": lambda s: s["notifications"].update(
            command="dramatiq workers.notifications --queues nope"
        ),
        "healthcheck on a missing route": lambda s: s["api"].update(
            healthcheck={"test": "curl -f http://localhost:8000/health"}
        ),
    }
    accepted = []
    for fault, change in faults.items():
        try:
            check_compose(broken(change), import_report, tmp_path)
        except (AssertionError, pytest.fail.Exception, KeyError):
            continue
        accepted.append(fault)
    assert accepted == [], f"the checker accepted: {accepted}"
