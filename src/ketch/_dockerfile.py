"""Parse a single-stage Dockerfile into the step kinds of :class:`ketch.Image`.

Pure text in, steps out: no file access. ``Image.from_dockerfile`` resolves
``COPY`` sources against the build context and turns the steps into layers.

Example::

    parsed = parse("FROM python:3.12-slim\\nRUN pip install numpy\\n")
    [s.kind for s in parsed.steps]  # ['from_registry', 'run_commands']
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .exception import InvalidError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIRECTIVE = re.compile(r"#\s*([A-Za-z]+)\s*=\s*(.*?)\s*$")
_ARCHIVE = re.compile(r"\.(tar|tar\.gz|tgz|tar\.bz2|tbz2?|tar\.xz|txz|tar\.zst)$", re.I)
_IGNORED = {
    "CMD": "the container runs your function, not a command",
    "ENTRYPOINT": "the container runs your function, not a command",
    "EXPOSE": "ports are not published; use ketch's web endpoints",
    "LABEL": "labels have no effect",
    "MAINTAINER": "labels have no effect",
    "VOLUME": "use ketch.Volume instead",
    "STOPSIGNAL": "containers are stopped by ketch",
    "HEALTHCHECK": "containers are health-checked by ketch",
}
_DEFAULT_SHELL = ["/bin/sh", "-c"]


@dataclass(frozen=True)
class DockerStep:
    """One build step read from a Dockerfile, named like the ``Image`` method it maps to.

    ``kind`` is one of ``from_registry``, ``run_commands``, ``env``, ``workdir``,
    ``copy`` or ``user``; ``line`` is where its instruction starts.

    Example::

        DockerStep("run_commands", {"commands": ["make"]}, line=3)
    """

    kind: str
    spec: dict[str, Any]
    line: int


@dataclass
class ParsedDockerfile:
    """The steps of a Dockerfile plus notes on what was ignored.

    Example::

        parse("FROM alpine\\nEXPOSE 80\\n").notes
        # ['Dockerfile line 2: EXPOSE is ignored (ports are not published; ...)']
    """

    steps: list[DockerStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _LineError(Exception):
    """A problem with the instruction being parsed; the parser adds the line."""


def parse(text: str, build_args: Mapping[str, str] | None = None) -> ParsedDockerfile:
    """Parse Dockerfile ``text``; ``build_args`` override ``ARG`` defaults.

    Raises ``InvalidError`` naming the line for anything ketch cannot honour.

    Example::

        parse("ARG V=3.12\\nFROM python:${V}-slim\\n", {"V": "3.11"}).steps[0].spec
        # {'tag': 'python:3.11-slim'}
    """
    parser = _Parser(dict(build_args or {}))
    escape, lines = _logical_lines(text)
    for number, line in lines:
        try:
            parser.instruction(number, line, escape)
        except _LineError as exc:
            shown = line if len(line) <= 80 else line[:77] + "..."
            raise InvalidError(f"Dockerfile line {number}: {exc} ({shown!r})") from None
    if not parser.result.steps:
        raise InvalidError("Dockerfile has no FROM instruction")
    unused = sorted(set(parser.build_args) - parser.consumed)
    if unused:
        parser.result.notes.append(f"build args {unused} were not declared with ARG and are unused")
    return parser.result


def _logical_lines(text: str) -> tuple[str, list[tuple[int, str]]]:
    """The escape character and the instructions, continuations joined, comments dropped."""
    escape = "\\"
    out: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    directives_allowed = True
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        match = _DIRECTIVE.match(stripped) if directives_allowed else None
        if match and match.group(1).lower() in ("escape", "syntax", "check"):
            if match.group(1).lower() == "escape":
                if match.group(2) not in ("\\", "`"):
                    raise InvalidError(f"Dockerfile line {number}: escape must be \\ or `")
                escape = match.group(2)
            continue
        directives_allowed = False
        if not stripped or stripped.startswith("#"):
            continue
        if not parts:
            start = number
        content = raw.rstrip()
        if content.endswith(escape):
            parts.append(content[:-1])
            continue
        parts.append(content)
        out.append((start, "".join(parts).strip()))
        parts = []
    if parts:
        out.append((start, "".join(parts).strip()))
    return escape, out


class _Parser:
    def __init__(self, build_args: dict[str, str]) -> None:
        self.build_args = build_args
        self.consumed: set[str] = set()
        self.result = ParsedDockerfile()
        self.global_args: dict[str, str | None] = {}
        self.args: dict[str, str | None] = {}
        self.env: dict[str, str] = {}
        self.shell = list(_DEFAULT_SHELL)
        self.escape = "\\"
        self.line = 0

    def instruction(self, number: int, line: str, escape: str) -> None:
        self.line, self.escape = number, escape
        word, rest = (line.split(None, 1) + [""])[:2]
        keyword, rest = word.upper(), rest.strip()
        if keyword == "ARG":
            return self._arg(rest)
        if keyword != "FROM" and not self.result.steps:
            raise _LineError(f"{keyword} before FROM")
        if keyword in _IGNORED:
            self._note(f"{keyword} is ignored ({_IGNORED[keyword]})")
            return None
        handlers = {
            "FROM": self._from,
            "RUN": self._run,
            "ENV": self._env,
            "WORKDIR": self._workdir,
            "USER": self._user,
            "COPY": self._copy,
            "ADD": self._add,
            "SHELL": self._shell,
        }
        if keyword not in handlers:
            known = keyword == "ONBUILD"
            raise _LineError(
                f"{keyword} is not supported" if known else f"unknown instruction {word!r}"
            )
        handlers[keyword](rest)
        return None

    def _emit(self, kind: str, **spec: Any) -> None:
        self.result.steps.append(DockerStep(kind, spec, self.line))

    def _note(self, text: str) -> None:
        self.result.notes.append(f"Dockerfile line {self.line}: {text}")

    def _scope(self) -> dict[str, str]:
        """Variables visible to substitution: ARGs in scope, overridden by ENV."""
        args = self.args if self.result.steps else self.global_args
        values = {k: v for k, v in args.items() if v is not None}
        return values | self.env

    def _words(self, text: str) -> list[str]:
        return _Lexer(text, self._scope(), self.escape).words(split=True)

    def _word(self, text: str) -> str:
        return _Lexer(text, self._scope(), self.escape).words(split=False)[0]

    def _from(self, rest: str) -> None:
        if self.result.steps:
            raise _LineError("multi-stage builds are not supported (a second FROM)")
        flags, rest = _flags(rest)
        if set(flags) - {"platform"}:
            raise _LineError(f"FROM flags {sorted(set(flags) - {'platform'})} are not supported")
        if "platform" in flags:
            self._note("FROM --platform is ignored; images are built for this machine")
        words = self._words(rest)
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
            raise _LineError("expected FROM <image> [AS <name>]")
        if words[0] == "scratch":
            raise _LineError("FROM scratch is not supported; start from a registry image")
        self._emit("from_registry", tag=words[0])

    def _arg(self, rest: str) -> None:
        words = self._words(rest)
        if not words:
            raise _LineError("ARG needs a name")
        for word in words:
            name, has_default, default = word.partition("=")
            if not _NAME.fullmatch(name):
                raise _LineError(f"invalid ARG name {name!r}")
            value: str | None = default if has_default else None
            if not has_default and self.result.steps:
                value = self.global_args.get(name)
            if name in self.build_args:
                value = self.build_args[name]
                self.consumed.add(name)
            (self.args if self.result.steps else self.global_args)[name] = value

    def _run(self, rest: str) -> None:
        flags, rest = _flags(rest)
        if flags:
            raise _LineError(f"RUN --{sorted(flags)[0]} is not supported")
        if rest.startswith("<<"):
            raise _LineError("RUN heredocs are not supported")
        argv = _json_form(rest)
        if argv is not None:
            command = shlex.join(argv)
        elif self.shell != _DEFAULT_SHELL:
            command = shlex.join([*self.shell, rest])
        else:
            command = rest
        if not command:
            raise _LineError("RUN needs a command")
        exports = {k: v for k, v in self.args.items() if v is not None and k not in self.env}
        if exports:
            assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in exports.items())
            command = f"export {assigns}\n{command}"
        self._emit("run_commands", commands=[command])

    def _shell(self, rest: str) -> None:
        argv = _json_form(rest)
        if not argv:
            raise _LineError('SHELL needs a JSON list such as ["/bin/bash", "-c"]')
        self.shell = argv

    def _env(self, rest: str) -> None:
        first = rest.split(None, 1)[0] if rest.strip() else ""
        pairs: dict[str, str] = {}
        if "=" not in first:
            name, value = (rest.split(None, 1) + [""])[:2]
            if not name or not value.strip():
                raise _LineError("expected ENV NAME=VALUE")
            pairs[name] = self._word(value.strip())
        else:
            for word in self._words(rest):
                name, eq, value = word.partition("=")
                if not eq:
                    raise _LineError(f"expected NAME=VALUE, got {word!r}")
                pairs[name] = value
        for name in pairs:
            if not _NAME.fullmatch(name):
                raise _LineError(f"invalid environment variable name {name!r}")
        self.env.update(pairs)
        self._emit("env", vars=pairs)

    def _workdir(self, rest: str) -> None:
        path = self._word(rest) if rest else ""
        if not path:
            raise _LineError("WORKDIR needs a path")
        self._emit("workdir", path=path)

    def _user(self, rest: str) -> None:
        user = self._word(rest) if rest else ""
        if not user:
            raise _LineError("USER needs a user name")
        self._emit("user", user=user)

    def _copy(self, rest: str, instruction: str = "COPY") -> None:
        flags, rest = _flags(rest)
        if "from" in flags:
            raise _LineError(f"{instruction} --from is not supported (no multi-stage builds)")
        unknown = set(flags) - {"chown", "chmod", "link"}
        if unknown:
            raise _LineError(f"{instruction} --{sorted(unknown)[0]} is not supported")
        for flag in sorted(set(flags) & {"chown", "chmod"}):
            self._note(
                f"{instruction} --{flag} is ignored; files keep their local modes, owned by root"
            )
        argv = _json_form(rest)
        words = argv if argv is not None else self._words(rest)
        if len(words) < 2:
            raise _LineError(f"{instruction} needs at least one source and a destination")
        sources, dest = words[:-1], words[-1]
        for source in sources:
            if instruction == "ADD" and ("://" in source or source.startswith("git@")):
                raise _LineError("ADD of a URL is not supported; use RUN curl or pip")
            if instruction == "ADD" and _ARCHIVE.search(source):
                raise _LineError("ADD of a local archive (auto-extraction) is not supported")
        self._emit("copy", sources=sources, dest=dest)

    def _add(self, rest: str) -> None:
        self._copy(rest, "ADD")


def _flags(rest: str) -> tuple[dict[str, str], str]:
    """Split leading ``--name[=value]`` flags off an instruction's arguments."""
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        token, _, rest = rest.partition(" ")
        name, _, value = token[2:].partition("=")
        flags[name.lower()] = value
        rest = rest.lstrip()
    return flags, rest


def _json_form(rest: str) -> list[str] | None:
    """The exec (JSON list) form of an instruction, or None for the shell form."""
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value


class _Lexer:
    """Docker's word rules: quotes, escapes and ``$VAR`` / ``${VAR:-default}``."""

    def __init__(self, text: str, env: Mapping[str, str], escape: str) -> None:
        self.text, self.env, self.escape, self.i = text, env, escape, 0

    def words(self, *, split: bool) -> list[str]:
        words: list[str] = []
        current: list[str] = []
        started = False
        text = self.text
        while self.i < len(text):
            c = text[self.i]
            if split and c in " \t\r\n":
                if started:
                    words.append("".join(current))
                    current, started = [], False
                self.i += 1
                continue
            started = True
            if c == self.escape and self.i + 1 < len(text):
                current.append(text[self.i + 1])
                self.i += 2
            elif c == "'":
                end = text.find("'", self.i + 1)
                if end < 0:
                    raise _LineError("unterminated single quote")
                current.append(text[self.i + 1 : end])
                self.i = end + 1
            elif c == '"':
                current.append(self._double_quoted())
            elif c == "$":
                current.append(self._variable())
            else:
                current.append(c)
                self.i += 1
        if started or not split:
            words.append("".join(current))
        return words

    def _double_quoted(self) -> str:
        text, out = self.text, []
        self.i += 1
        while self.i < len(text) and text[self.i] != '"':
            c = text[self.i]
            if c == self.escape and self.i + 1 < len(text) and text[self.i + 1] in ('"', "$", c):
                out.append(text[self.i + 1])
                self.i += 2
            elif c == "$":
                out.append(self._variable())
            else:
                out.append(c)
                self.i += 1
        if self.i >= len(text):
            raise _LineError("unterminated double quote")
        self.i += 1
        return "".join(out)

    def _variable(self) -> str:
        text, start = self.text, self.i + 1
        if start < len(text) and text[start] == "{":
            return self._braced(start + 1)
        match = _NAME.match(text, start)
        if not match:
            self.i += 1
            return "$"
        self.i = match.end()
        return self.env.get(match.group(), "")

    def _braced(self, start: int) -> str:
        text = self.text
        match = _NAME.match(text, start)
        if not match:
            raise _LineError("bad variable substitution")
        name, pos = match.group(), match.end()
        if text.startswith("}", pos):
            self.i = pos + 1
            return self.env.get(name, "")
        if text[pos : pos + 2] not in (":-", ":+"):
            raise _LineError(f"unsupported substitution in ${{{name}...}}; use :- or :+")
        depth, end = 1, pos + 2
        while end < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        if depth:
            raise _LineError(f"missing }} in ${{{name}...")
        word = _Lexer(text[pos + 2 : end - 1], self.env, self.escape).words(split=False)[0]
        self.i = end
        value = self.env.get(name, "")
        if text[pos + 1] == "-":
            return value or word
        return word if value else ""
