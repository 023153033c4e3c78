"""Dockerfile parsing: every instruction, every error with its line, and Image.from_dockerfile."""

from __future__ import annotations

import textwrap

import pytest

from ketch._dockerfile import DockerStep, parse
from ketch.exception import InvalidError
from ketch.image import Image


def steps(text: str, build_args: dict[str, str] | None = None) -> list[tuple[str, dict]]:
    return [(s.kind, s.spec) for s in parse(textwrap.dedent(text), build_args).steps]


def error(text: str, build_args: dict[str, str] | None = None) -> str:
    with pytest.raises(InvalidError) as info:
        parse(textwrap.dedent(text), build_args)
    return str(info.value)


# --- instructions ---------------------------------------------------------------


def test_from_run_env_workdir_user():
    parsed = parse("FROM python:3.12-slim AS app\nRUN make\nENV A=1\nWORKDIR /srv\nUSER nobody\n")
    assert parsed.steps == [
        DockerStep("from_registry", {"tag": "python:3.12-slim"}, 1),
        DockerStep("run_commands", {"commands": ["make"]}, 2),
        DockerStep("env", {"vars": {"A": "1"}}, 3),
        DockerStep("workdir", {"path": "/srv"}, 4),
        DockerStep("user", {"user": "nobody"}, 5),
    ]
    assert parsed.notes == []


def test_keywords_are_case_insensitive():
    assert steps("from alpine\nrun echo hi\n")[1] == ("run_commands", {"commands": ["echo hi"]})


def test_continuations_comments_and_line_numbers():
    text = """\
        # syntax=docker/dockerfile:1
        FROM alpine

        # install things
        RUN apk add \\
            # a comment inside the command is dropped
            curl \\

            git
        ONBUILD RUN make
    """
    assert steps(text.replace("ONBUILD RUN make", ""))[1] == (
        "run_commands",
        {"commands": ["apk add     curl     git"]},
    )
    assert error(text).startswith("Dockerfile line 10: ONBUILD is not supported")


def test_parser_directive_changes_the_escape_character():
    text = "# escape=`\nFROM alpine\nRUN echo a `\n  b\nCOPY a` b /dst/\n"
    assert steps(text)[1:] == [
        ("run_commands", {"commands": ["echo a   b"]}),
        ("copy", {"sources": ["a b"], "dest": "/dst/"}),
    ]
    assert "escape must be" in error("# escape=x\nFROM alpine\n")


def test_run_exec_form_becomes_a_quoted_command():
    assert steps('FROM alpine\nRUN ["echo", "hello world", "$HOME"]\n')[1] == (
        "run_commands",
        {"commands": ["echo 'hello world' '$HOME'"]},
    )
    # Not valid JSON: Docker falls back to the shell form.
    assert steps("FROM alpine\nRUN [ -f x ] && echo y\n")[1][1] == {
        "commands": ["[ -f x ] && echo y"]
    }


def test_run_leaves_shell_variables_to_the_shell():
    assert steps("FROM alpine\nENV A=1\nRUN echo $A '$B'\n")[2][1] == {"commands": ["echo $A '$B'"]}


def test_shell_instruction_wraps_later_runs():
    out = steps('FROM alpine\nRUN a | b\nSHELL ["/bin/bash", "-o", "pipefail", "-c"]\nRUN a | b\n')
    assert out[1][1] == {"commands": ["a | b"]}
    assert out[2][1] == {"commands": ["/bin/bash -o pipefail -c 'a | b'"]}
    assert "SHELL needs a JSON list" in error("FROM alpine\nSHELL /bin/bash -c\n")


def test_env_forms():
    out = steps(
        """\
        FROM alpine
        ENV A=1 B="two words" C='single $A' D=three\\ words
        ENV LEGACY some value with "quotes"
        ENV E=$A F=${B}-x G=${NOPE:-fallback} H=${A:+set} I=${NOPE:+set}
        ENV J=a K=$J
        """
    )
    assert [spec["vars"] for _, spec in out[1:]] == [
        {"A": "1", "B": "two words", "C": "single $A", "D": "three words"},
        {"LEGACY": "some value with quotes"},
        {"E": "1", "F": "two words-x", "G": "fallback", "H": "set", "I": ""},
        {"J": "a", "K": ""},  # like Docker: K sees J's value from before this line
    ]


def test_env_errors():
    assert error("FROM alpine\nENV A=1 B\n").startswith("Dockerfile line 2: expected NAME=VALUE")
    assert "expected ENV NAME=VALUE" in error("FROM alpine\nENV ONLYNAME\n")
    assert "invalid environment variable name '1A'" in error("FROM alpine\nENV 1A=x\n")
    assert "unterminated double quote" in error('FROM alpine\nENV A="open\n')
    assert "unterminated single quote" in error("FROM alpine\nENV A='open\n")
    assert "use :- or :+" in error("FROM alpine\nENV A=${B:?required}\n")
    assert "missing }" in error("FROM alpine\nENV A=${B:-x\n")


def test_arg_defaults_build_args_and_scopes():
    text = """\
        ARG BASE=python
        ARG VERSION=3.11
        FROM ${BASE}:${VERSION}-slim
        ARG VERSION
        ARG MODE=dev
        ARG EMPTY
        WORKDIR /opt/$MODE/${VERSION}/x$EMPTY
        """
    assert steps(text)[0][1] == {"tag": "python:3.11-slim"}
    assert steps(text)[1][1] == {"path": "/opt/dev/3.11/x"}
    overridden = steps(text, {"VERSION": "3.12", "MODE": "prod"})
    assert overridden[0][1] == {"tag": "python:3.12-slim"}
    assert overridden[1][1] == {"path": "/opt/prod/3.12/x"}


def test_global_args_are_not_visible_after_from_unless_redeclared():
    assert steps("ARG V=1\nFROM alpine\nWORKDIR /v$V\n")[1][1] == {"path": "/v"}


def test_args_reach_run_as_exported_variables():
    out = steps('FROM alpine\nARG TOKEN="a b"\nARG UNSET\nENV TOKEN2=x\nRUN echo $TOKEN\n')
    assert out[-1][1] == {"commands": ["export TOKEN='a b'\necho $TOKEN"]}
    # ENV wins over an ARG of the same name, so the ARG is not exported.
    assert steps("FROM alpine\nARG A=1\nENV A=2\nRUN x\n")[-1][1] == {"commands": ["x"]}


def test_unused_build_args_are_noted():
    notes = parse("FROM alpine\nARG USED\n", {"USED": "1", "EXTRA": "2"}).notes
    assert notes == ["build args ['EXTRA'] were not declared with ARG and are unused"]


def test_arg_errors():
    assert error("FROM alpine\nARG\n").startswith("Dockerfile line 2: ARG needs a name")
    assert "invalid ARG name '9X'" in error("FROM alpine\nARG 9X=1\n")


def test_copy_and_add_forms():
    out = steps(
        """\
        FROM alpine
        ENV DEST=/app
        COPY . $DEST/
        COPY a.txt "b c.txt" /data/
        COPY ["with space", "/x"]
        ADD --link src /srv
        """
    )
    assert [spec for _, spec in out[2:]] == [
        {"sources": ["."], "dest": "/app/"},
        {"sources": ["a.txt", "b c.txt"], "dest": "/data/"},
        {"sources": ["with space"], "dest": "/x"},
        {"sources": ["src"], "dest": "/srv"},
    ]


def test_ignored_instructions_are_noted_with_their_line():
    parsed = parse(
        'FROM alpine\nCMD ["python"]\nENTRYPOINT ["x"]\nEXPOSE 80\nLABEL a=b\nVOLUME /data\n'
        "STOPSIGNAL SIGTERM\nHEALTHCHECK CMD true\nMAINTAINER me\nCOPY --chown=1:1 --chmod=755 a /a\n"
    )
    lines = [*range(2, 11), 10]  # two notes for the COPY flags
    assert [n.split(":")[0] for n in parsed.notes] == [f"Dockerfile line {n}" for n in lines]
    assert "CMD is ignored" in parsed.notes[0]
    assert "VOLUME is ignored (use ketch.Volume instead)" in parsed.notes[4]
    assert "--chmod is ignored" in parsed.notes[8] and "--chown is ignored" in parsed.notes[9]
    assert len(parsed.steps) == 2


def test_from_platform_is_noted():
    parsed = parse("FROM --platform=linux/amd64 alpine AS base\n")
    assert parsed.steps[0].spec == {"tag": "alpine"}
    assert parsed.notes == [
        "Dockerfile line 1: FROM --platform is ignored; images are built for this machine"
    ]


# --- errors, each naming its line -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Dockerfile has no FROM instruction"),
        ("# only a comment\nARG X=1\n", "Dockerfile has no FROM instruction"),
        ("RUN echo\nFROM alpine\n", "Dockerfile line 1: RUN before FROM"),
        (
            "FROM alpine AS a\nRUN x\nFROM alpine\n",
            "Dockerfile line 3: multi-stage builds are not supported",
        ),
        ("FROM scratch\n", "Dockerfile line 1: FROM scratch is not supported"),
        ("FROM\n", "Dockerfile line 1: expected FROM <image> [AS <name>]"),
        ("FROM a b\n", "Dockerfile line 1: expected FROM <image> [AS <name>]"),
        ("FROM --squash alpine\n", "Dockerfile line 1: FROM flags ['squash'] are not supported"),
        ("FROM alpine\n\n\nONBUILD RUN make\n", "Dockerfile line 4: ONBUILD is not supported"),
        ("FROM alpine\nFROBNICATE x\n", "Dockerfile line 2: unknown instruction 'FROBNICATE'"),
        ("FROM alpine\nRUN\n", "Dockerfile line 2: RUN needs a command"),
        (
            "FROM alpine\nRUN --mount=type=cache,target=/x make\n",
            "Dockerfile line 2: RUN --mount is not supported",
        ),
        (
            "FROM alpine\nRUN --network=none make\n",
            "Dockerfile line 2: RUN --network is not supported",
        ),
        (
            "FROM alpine\nRUN <<EOF\necho\nEOF\n",
            "Dockerfile line 2: RUN heredocs are not supported",
        ),
        (
            "FROM alpine\nCOPY --from=build /a /b\n",
            "Dockerfile line 2: COPY --from is not supported",
        ),
        (
            "FROM alpine\nCOPY --exclude=*.pyc . /a\n",
            "Dockerfile line 2: COPY --exclude is not supported",
        ),
        (
            "FROM alpine\nCOPY onlyone\n",
            "Dockerfile line 2: COPY needs at least one source and a destination",
        ),
        (
            "FROM alpine\nADD https://x.org/a.tgz /a\n",
            "Dockerfile line 2: ADD of a URL is not supported",
        ),
        (
            "FROM alpine\nADD git@github.com:a/b.git /b\n",
            "Dockerfile line 2: ADD of a URL is not supported",
        ),
        ("FROM alpine\nADD data.tar.gz /data\n", "Dockerfile line 2: ADD of a local archive"),
        ("FROM alpine\nWORKDIR\n", "Dockerfile line 2: WORKDIR needs a path"),
        ("FROM alpine\nUSER\n", "Dockerfile line 2: USER needs a user name"),
    ],
)
def test_errors_name_the_line(text, message):
    assert error(text).startswith(message)


def test_error_shows_the_instruction_text():
    assert error("FROM alpine\nONBUILD RUN make\n") == (
        "Dockerfile line 2: ONBUILD is not supported ('ONBUILD RUN make')"
    )


# --- Image.from_dockerfile ---------------------------------------------------------


@pytest.fixture
def context(tmp_path):
    root = tmp_path / "ctx"
    (root / "app" / "sub").mkdir(parents=True)
    (root / "app" / "main.py").write_text("print(1)\n")
    (root / "app" / "sub" / "x.py").write_text("X = 1\n")
    (root / "app" / "debug.log").write_text("log\n")
    (root / "requirements.txt").write_text("numpy\n")
    (root / "a.cfg").write_text("a")
    (root / "b.cfg").write_text("b")
    return root


def dockerfile(root, text: str):
    path = root / "Dockerfile"
    path.write_text(textwrap.dedent(text))
    return path


def test_from_dockerfile_matches_the_python_api(context):
    path = dockerfile(
        context,
        """\
        FROM python:3.12-slim
        RUN pip install uv
        ENV MODE=prod
        WORKDIR /srv
        COPY app ./app
        COPY requirements.txt .
        CMD ["python", "app/main.py"]
        """,
    )
    image = Image.from_dockerfile(path)
    same = (
        Image.from_registry("python:3.12-slim")
        .run_commands("pip install uv")
        .env({"MODE": "prod"})
        .workdir("/srv")
        .add_local_dir(context / "app", "/srv/app", copy=True)
        .add_local_file(context / "requirements.txt", "/srv/requirements.txt", copy=True)
    )
    assert [h for h, _ in image.layers] == [h for h, _ in same.layers]
    assert image.notes == [
        "Dockerfile line 7: CMD is ignored (the container runs your function, not a command)"
    ]
    assert image.mounts == []


def test_from_dockerfile_honours_dockerignore_and_globs(context):
    (context / ".dockerignore").write_text("# logs\n**/*.log\nb.cfg\n")
    path = dockerfile(context, "FROM alpine\nCOPY app /app\nCOPY *.cfg /etc/\n")
    image = Image.from_dockerfile(path)
    assert (
        image.layers[1].hash
        == Image.from_registry("alpine")
        .add_local_dir(context / "app", "/app", copy=True, ignore=["**/*.log"])
        .hash
    )
    assert [s.spec["remote_path"] for _, s in image.layers[2:]] == ["/etc/a.cfg"]
    (context / "app" / "debug.log").write_text("changed\n")
    assert Image.from_dockerfile(path).hash == image.hash
    (context / "app" / "main.py").write_text("print(2)\n")
    assert Image.from_dockerfile(path).hash != image.hash


def test_dockerignore_reads_as_docker_does(context):
    # Anchored at the context root ("*.log" leaves app/debug.log), a leading "/" is
    # ignored, "!" re-includes, and the last matching line wins.
    (context / ".dockerignore").write_text("/app/sub\n!app/sub/x.py\n*.log\n*.cfg\n!a.cfg\n")
    path = dockerfile(context, "FROM alpine\nCOPY app /app\nCOPY *.cfg /etc/\n")
    (context / "app" / "sub" / "y.py").write_text("Y = 1\n")
    image = Image.from_dockerfile(path)
    assert (
        image.layers[1].hash
        == Image.from_registry("alpine")
        .add_local_dir(context / "app", "/app", copy=True, ignore=["sub/y.py"])
        .hash
    )
    assert [s.spec["remote_path"] for _, s in image.layers[2:]] == ["/etc/a.cfg"]


def test_from_dockerfile_copy_of_the_whole_context(context):
    path = dockerfile(context, "FROM alpine\nCOPY . /app\n")
    first = Image.from_dockerfile(path)
    assert first.layers[1].step.spec["remote_path"] == "/app"
    (context / "a.cfg").write_text("changed")
    assert Image.from_dockerfile(path).hash != first.hash


def test_from_dockerfile_build_args_and_context_dir(context, tmp_path):
    elsewhere = tmp_path / "docker"
    elsewhere.mkdir()
    path = dockerfile(elsewhere, "ARG TAG=3.11\nFROM python:${TAG}\nCOPY app/main.py /main.py\n")
    image = Image.from_dockerfile(path, context_dir=context, build_args={"TAG": "3.12"})
    assert image.layers[0].step.spec["tag"] == "python:3.12"
    with pytest.raises(
        InvalidError, match="Dockerfile line 3: COPY source 'app/main.py' not found"
    ):
        Image.from_dockerfile(path)


def test_from_dockerfile_errors(context, tmp_path):
    with pytest.raises(InvalidError, match="from_dockerfile: local path .* does not exist"):
        Image.from_dockerfile(tmp_path / "nope")
    with pytest.raises(InvalidError, match="context_dir: local path .* does not exist"):
        Image.from_dockerfile(dockerfile(context, "FROM alpine\n"), context_dir=tmp_path / "nope")
    cases = [
        ("FROM Alpine:3\n", "Dockerfile line 1: invalid image reference 'Alpine:3'"),
        (
            "FROM alpine\nRUN x\nCOPY ../secret /s\n",
            "Dockerfile line 3: COPY source '../secret' is outside",
        ),
        (
            "FROM alpine\nCOPY *.nothing /x/\n",
            "Dockerfile line 2: COPY source '\\*.nothing' not found",
        ),
        (
            "FROM alpine\nCOPY a.cfg b.cfg /etc/x\n",
            "Dockerfile line 2: with several sources the destination must end with /",
        ),
        ("FROM alpine\nENV 1=2\n", "Dockerfile line 2: invalid environment variable name"),
    ]
    for text, message in cases:
        with pytest.raises(InvalidError, match=message):
            Image.from_dockerfile(dockerfile(context, text))


def test_from_dockerfile_force_build_and_user_step(context):
    image = Image.from_dockerfile(dockerfile(context, "FROM alpine\nUSER app\n"), force_build=True)
    assert image.rebuild_from == 0
    assert image.layers[1].step.kind == "user" and image.layers[1].step.spec["user"] == "app"
    assert [h for h, _ in image.layers] == [
        h for h, _ in Image.from_dockerfile(context / "Dockerfile").layers
    ]


def test_notes_survive_later_steps_and_the_wire(context):
    image = Image.from_dockerfile(dockerfile(context, "FROM alpine\nEXPOSE 80\n")).pip_install(
        "numpy"
    )
    assert len(image.notes) == 1 and "EXPOSE" in image.notes[0]
    assert Image.from_wire(image.to_wire()).notes == image.notes
