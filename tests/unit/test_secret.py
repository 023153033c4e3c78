"""Secrets without a server: the .env parser, validation, pickling, and the at-rest sealer."""

from __future__ import annotations

import logging
import os
import pickle
import stat

import pytest

import ketch
from ketch._secret import check_env, parse_dotenv
from ketch._spec import FunctionSpec
from ketch.exception import InvalidError, ServerError
from ketch.server.secret_store import Sealer

pytestmark = pytest.mark.timeout(30)

app = ketch.App("secret-unit")


# -- the .env parser ------------------------------------------------------------


def test_dotenv_basics():
    text = (
        "# a comment\n"
        "\n"
        "PLAIN=value\n"
        "export EXPORTED=1\n"
        "  SPACED = padded value   \n"
        "INLINE=abc # trailing comment\n"
        "HASH=abc#not-a-comment\n"
        "EMPTY=\n"
        "EQUALS=a=b=c\n"
        "BARE_NAME\n"
    )
    assert parse_dotenv(text) == {
        "PLAIN": "value",
        "EXPORTED": "1",
        "SPACED": "padded value",
        "INLINE": "abc",
        "HASH": "abc#not-a-comment",
        "EMPTY": "",
        "EQUALS": "a=b=c",
    }


def test_dotenv_quotes():
    text = (
        "SINGLE='  keep # all \\n '\n"
        'DOUBLE="tab\\there \\"quoted\\" back\\\\slash"  # comment\n'
        "MULTI='line one\n"
        "line two'\n"
        'MULTI2="a\n'
        '  b"\n'
        "EMPTY_Q=''\n"
    )
    assert parse_dotenv(text) == {
        "SINGLE": "  keep # all \\n ",
        "DOUBLE": 'tab\there "quoted" back\\slash',
        "MULTI": "line one\nline two",
        "MULTI2": "a\n  b",
        "EMPTY_Q": "",
    }


def test_dotenv_expansion_and_line_endings(monkeypatch):
    monkeypatch.setenv("KETCH_UNIT_FROM_ENV", "outside")
    monkeypatch.delenv("KETCH_UNIT_UNSET", raising=False)
    text = 'A=1\r\nB=${A}-x\r\nC="${KETCH_UNIT_FROM_ENV}"\r\nD=${KETCH_UNIT_UNSET:-fallback}\r\nE=${KETCH_UNIT_UNSET}\r\n'
    assert parse_dotenv(text) == {"A": "1", "B": "1-x", "C": "outside", "D": "fallback", "E": ""}


def test_dotenv_expands_as_modal_does(monkeypatch):
    # python-dotenv, like Modal's from_dotenv: single quotes expand too, $NAME
    # without braces does not, and the file's values win over the environment.
    monkeypatch.setenv("KETCH_UNIT_A", "outside")
    text = "KETCH_UNIT_A=inside\nS='${KETCH_UNIT_A}'\nD=\"\\$KETCH_UNIT_A\"\nU=$KETCH_UNIT_A\n"
    assert parse_dotenv(text) == {
        "KETCH_UNIT_A": "inside",
        "S": "inside",
        "D": "\\$KETCH_UNIT_A",
        "U": "$KETCH_UNIT_A",
    }


@pytest.mark.parametrize(
    "text",
    ["sk-live-123456\n", "1KEY=x\n", "BAD KEY=x\n", "A='never closed\nB=2\n", 'A="x" junk\n'],
)
def test_dotenv_errors_name_the_line_not_its_content(text):
    with pytest.raises(InvalidError, match="expected KEY=VALUE") as info:
        parse_dotenv("# first\nOK=1\n" + text, "app/.env")
    assert str(info.value).startswith("app/.env:3:")
    assert "sk-live" not in str(info.value)


# -- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"1ABC": "x"},
        {"A-B": "x"},
        {"": "x"},
        {3: "x"},
        {"A": 3},
        {"A": b"x"},
        {"A": "nul\0"},
        {"A": "x" * 40000},
    ],
)
def test_bad_env_is_invalid_and_never_echoes_the_value(env):
    with pytest.raises(InvalidError) as info:
        check_env(env)
    assert "nul\0" not in str(info.value) and "xxxx" not in str(info.value)


def test_from_dict_drops_none_and_checks_types():
    secret = ketch.Secret.from_dict({"A": "1", "B": None})
    assert secret._ketch_impl._env == {"A": "1"}
    with pytest.raises(InvalidError):
        ketch.Secret.from_dict({"A": 1})
    with pytest.raises(InvalidError):
        ketch.Secret.from_dict(["A=1"])


def test_from_local_environ(monkeypatch):
    monkeypatch.setenv("KETCH_UNIT_TOKEN", "t0k3n")
    monkeypatch.delenv("KETCH_UNIT_MISSING", raising=False)
    assert ketch.Secret.from_local_environ(["KETCH_UNIT_TOKEN"])._ketch_impl._env == {
        "KETCH_UNIT_TOKEN": "t0k3n"
    }
    with pytest.raises(InvalidError, match="KETCH_UNIT_MISSING"):
        ketch.Secret.from_local_environ(["KETCH_UNIT_TOKEN", "KETCH_UNIT_MISSING"])
    with pytest.raises(InvalidError):
        ketch.Secret.from_local_environ("KETCH_UNIT_TOKEN")
    # Inside a container the values came with the app: nothing is read, nothing fails.
    monkeypatch.setenv("KETCH_CONTAINER_ID", "ta-unit")
    assert ketch.Secret.from_local_environ(["KETCH_UNIT_MISSING"])._ketch_impl._env == {}


def test_from_dotenv_paths(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("A=1\n")
    (tmp_path / ".env.dev").write_text("A=dev\n")
    app_file = tmp_path / "app.py"
    app_file.write_text("")
    assert ketch.Secret.from_dotenv(app_file)._ketch_impl._env == {"A": "1"}  # __file__ style
    assert ketch.Secret.from_dotenv(tmp_path, filename=".env.dev")._ketch_impl._env == {"A": "dev"}
    monkeypatch.chdir(tmp_path)
    assert ketch.Secret.from_dotenv()._ketch_impl._env == {"A": "1"}
    with pytest.raises(InvalidError, match="no file"):
        ketch.Secret.from_dotenv(filename=".env.missing")
    monkeypatch.setenv("KETCH_CONTAINER_ID", "ta-unit")
    assert ketch.Secret.from_dotenv(filename=".env.missing")._ketch_impl._env == {}


def test_from_name_options():
    with pytest.raises(InvalidError, match="ketch secret create"):
        ketch.Secret.from_name("x", create_if_missing=True)
    with pytest.raises(InvalidError):
        ketch.Secret.from_name("")
    with pytest.raises(InvalidError):
        ketch.Secret.from_name("x", required_keys="API_KEY")
    with pytest.raises(InvalidError):
        ketch.Secret.ephemeral()


def test_repr_and_pickle_never_carry_values():
    inline = ketch.Secret.from_dict({"TOKEN": "hunter2"})
    assert "hunter2" not in repr(inline)
    with pytest.raises(InvalidError, match="cannot be pickled"):
        pickle.dumps(inline)
    named = pickle.loads(pickle.dumps(ketch.Secret.from_name("creds")))
    assert named.name == "creds" and repr(named) == "Secret('creds')"


# -- decorators -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "secrets", ["creds", [{"A": "1"}], ["creds"], ketch.Secret.from_dict({"A": "1"})]
)
def test_secrets_option_is_checked_at_decoration(secrets):
    with pytest.raises(InvalidError, match="ketch.Secret"):
        app.function(secrets=secrets)
    with pytest.raises(InvalidError, match="ketch.Secret"):
        app.cls(secrets=secrets)


def test_secrets_are_accepted_without_the_not_applied_warning(caplog):
    with caplog.at_level(logging.WARNING):

        @app.function(
            secrets=[ketch.Secret.from_name("creds"), ketch.Secret.from_dict({"A": "1"})],
            serialized=True,
        )
        def uses_secrets():
            pass

    assert "not applied" not in caplog.text
    impl = uses_secrets._ketch_impl
    assert len(impl._secrets) == 2 and impl._spec.secrets == []  # resolved when the app is created


def test_spec_refuses_secrets_in_clear_text():
    wire = FunctionSpec(tag="f", module_name="m", qualname="f").to_wire()
    with pytest.raises(InvalidError):
        FunctionSpec.from_wire({**wire, "secrets": [{"env": {"A": "1"}}]})
    with pytest.raises(InvalidError):
        FunctionSpec.from_wire({**wire, "secrets": [{"sealed": b"x", "env": {"A": "1"}}]})
    ok = [{"name": "creds", "id": "st-1"}, {"sealed": b"\x01abc"}]
    assert FunctionSpec.from_wire({**wire, "secrets": ok}).secrets == ok


# -- sealing at rest ---------------------------------------------------------------------


def test_key_is_made_on_first_seal_with_mode_0600(tmp_path):
    sealer = Sealer(tmp_path)
    with pytest.raises(ServerError, match="missing"):
        sealer.open(b"\x01whatever", "inline")
    assert not (tmp_path / "secret.key").exists()
    old = os.umask(0)
    try:
        sealed = sealer.seal({"TOKEN": "hunter2"}, "inline")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600
    assert b"hunter2" not in sealed and b"TOKEN" not in sealed
    assert Sealer(tmp_path).open(sealed, "inline") == {"TOKEN": "hunter2"}  # the key is reused


def test_sealing_is_deterministic_authenticated_and_bound_to_its_context(tmp_path):
    sealer = Sealer(tmp_path)
    a = sealer.seal({"A": "1", "B": "2"}, "st-1")
    assert sealer.seal({"B": "2", "A": "1"}, "st-1") == a  # stable specs across redeploys
    assert sealer.seal({"A": "1", "B": "2"}, "st-2") != a
    with pytest.raises(ServerError, match="cannot be decrypted"):
        sealer.open(a, "st-2")
    tampered = a[:-1] + bytes([a[-1] ^ 1])
    with pytest.raises(ServerError, match="cannot be decrypted"):
        sealer.open(tampered, "st-1")


def test_a_replaced_key_cannot_open_old_values(tmp_path):
    sealed = Sealer(tmp_path).seal({"A": "1"}, "inline")
    (tmp_path / "secret.key").unlink()
    fresh = Sealer(tmp_path)
    fresh.seal({}, "inline")  # makes a new key
    with pytest.raises(ServerError, match="was the key replaced"):
        fresh.open(sealed, "inline")


def test_a_loose_key_file_is_tightened(tmp_path):
    Sealer(tmp_path).seal({"A": "1"}, "inline")
    key = tmp_path / "secret.key"
    key.chmod(0o644)
    Sealer(tmp_path).open(Sealer(tmp_path).seal({"A": "1"}, "inline"), "inline")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
