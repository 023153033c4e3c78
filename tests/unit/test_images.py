"""Pure parts of image building and the sandbox runtime (no root, no network)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from ketch._spec import build_options
from ketch.exception import ImageBuildError, InvalidError
from ketch.image import Image, default_image
from ketch.images.builder import Builder, StepFailed, summarize
from ketch.images.layers import LayerStore
from ketch.worker.bubblewrap import project_sources
from ketch.worker.isolate import Bwrap, overlay_options


def _layer(
    store: LayerStore, name: str, parent: str = "", files: dict[str, str] | None = None
) -> str:
    build = store.new_build_dir(name)
    (build / "fs").mkdir()
    for rel, text in (files or {}).items():
        (build / "fs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (build / "fs" / rel).write_text(text)
    store.commit(
        build, name, {"parent": parent, "kind": "run_commands", "summary": name, "config": {}}
    )
    return name


def test_layers_commit_lowers_remove_and_prune(tmp_path):
    store = LayerStore(tmp_path)
    base = _layer(store, "a" * 64, files={"etc/os-release": "debian"})
    empty = _layer(store, "b" * 64, base)
    top = _layer(store, "c" * 64, empty, files={"opt/x": "1"})
    other = _layer(store, "d" * 64, base, files={"opt/y": "2"})
    assert store.has(top) and store.meta(empty)["empty"] and not store.meta(top)["empty"]
    # Top first; empty layers are left out of the overlay.
    assert store.lowers([base, empty, top]) == [store.fs(top), store.fs(base)]
    assert store.resolve("cc") == top and store.resolve("zz") is None
    assert store.remove(empty) == sorted([empty, top])
    assert not store.has(top) and store.has(other)
    old = time.time() - 3 * 86400
    os.utime(store.path(other) / "used", (old, old))
    assert store.prune(86400) == [other]
    assert [i.hash for i in store.infos()] == [base]


def test_a_remote_builder_gets_the_steps_that_run_programs(tmp_path):
    """On a cluster ``Builder.remote`` builds (and installs) the steps that run programs;
    configuration steps stay here, over the remote layer's configuration; a remote step's
    failure reads as a local one's."""
    store = LayerStore(tmp_path)
    builder = Builder(store)
    asked: list[tuple[str, list[str]]] = []

    async def remote(layer, chain, cfg, log):
        asked.append((layer["kind"], list(chain)))
        if "fail" in layer["spec"].get("commands", [""])[0]:
            raise StepFailed("exited with code 3", ["the last line"])
        log("built elsewhere")
        build = store.new_build_dir(layer["hash"])
        (build / "fs").mkdir()
        py = {"python": "/usr/bin/python3", "python_version": "3.11"}
        store.commit(build, layer["hash"], {"kind": layer["kind"], "config": {**cfg, **py}})

    builder.remote = remote
    image = Image.debian_slim("3.11").run_commands("echo hi").env({"A": "1"})
    lines: list[str] = []
    built = asyncio.run(builder.build(image.to_wire(), lines.append, bundle=False))
    assert [kind for kind, _ in asked] == ["debian_slim", "run_commands"]
    assert asked[1][1] == [image.to_wire()["layers"][0]["hash"]]  # over the base
    assert built.config["env"] == {"A": "1"} and built.config["python_version"] == "3.11"
    assert "built elsewhere" in lines
    with pytest.raises(ImageBuildError, match=r"run_commands fail.*code 3(.|\n)*the last line"):
        asyncio.run(builder.build(image.run_commands("fail").to_wire(), lines.append, bundle=False))


def test_overlay_options_refuse_too_many_layers(tmp_path):
    assert overlay_options(
        [tmp_path / "a", tmp_path / "b"], tmp_path / "u", tmp_path / "w"
    ).startswith(f"lowerdir={tmp_path}/a:{tmp_path}/b,upperdir=")
    with pytest.raises(ValueError, match="too many layers"):
        overlay_options([tmp_path / ("x" * 200)] * 40, None, None)


def test_bwrap_containers_drop_capabilities_and_can_block_network(tmp_path):
    with Bwrap(tmp_path, network=False, hostname="ketch-1", env={"A": "1"}) as box:
        argv = box.argv(["python3"])
    assert "--unshare-net" in argv and "--cap-drop" in argv and argv[-1] == "python3"
    assert "CAP_SYS_ADMIN" not in argv and argv[argv.index("--hostname") + 1] == "ketch-1"
    assert ["--setenv", "A", "1"] == argv[argv.index("A") - 1 : argv.index("A") + 2]
    # build steps: the same sandbox with the host network (tests/unit/test_seccomp.py)
    with Bwrap(tmp_path) as box:
        builder = box.argv(["sh"])
    assert "--cap-drop" in builder and "--unshare-net" not in builder


def test_step_summaries():
    image = (
        Image.debian_slim("3.11")
        .apt_install("git")
        .run_commands("echo a", "echo b")
        .env({"K": "v"})
    )
    kinds = [summarize(s.kind, s.spec) for _, s in image.layers]
    assert kinds == [
        "debian_slim python 3.11",
        "apt_install git",
        "run_commands echo a && echo b",
        "env K=v",
    ]


def test_default_image_uses_a_python_debian_packages():
    version = default_image().layers[0].step.spec["python_version"]
    assert version in ("3.11", "3.13")


def test_memory_and_cpu_follow_modal_request_and_limit():
    assert build_options(memory=512)["memory"] == [512, None]
    assert build_options(memory=(256, 1024))["memory"] == [256, 1024]
    assert build_options(cpu=(0.5, 2))["cpu"] == [0.5, 2.0]
    with pytest.raises(InvalidError):
        build_options(memory=(1024, 256))
    with pytest.raises(InvalidError):
        build_options(cpu="two")


def test_project_sources_take_modules_and_packages_only(tmp_path: Path):
    (tmp_path / "app.py").write_text("")
    (tmp_path / "helpers.py").write_text("")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "data").mkdir()
    (tmp_path / ".venv").mkdir()
    (tmp_path / "notes.txt").write_text("")
    names = [name for name, _ in project_sources(tmp_path, "app", str(tmp_path / "app.py"))]
    assert names == ["app.py", "helpers.py", "pkg"]
    inside = [
        name for name, _ in project_sources(tmp_path, "pkg.main", str(tmp_path / "pkg/main.py"))
    ]
    assert inside == ["app.py", "helpers.py", "pkg"]


def test_a_python_debian_lacks_comes_from_uv_or_fails_naming_both_routes(tmp_path, monkeypatch):
    """``debian_slim(python_version="3.12")``: Debian packages 3.11 and 3.13 only, so the
    build asks uv for a managed CPython; where uv cannot download one (here a mirror that
    refuses connections), the error says what Debian has and what uv needed, before any
    Debian package is fetched."""
    monkeypatch.setenv("UV_PYTHON_INSTALL_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    builder = Builder(LayerStore(tmp_path / "cache"))
    fs = tmp_path / "build" / "fs"
    fs.mkdir(parents=True)
    lines: list[str] = []
    with pytest.raises(StepFailed) as info:
        asyncio.run(builder._debian("3.12", fs, lines.append))
    message = str(info.value)
    assert "Debian packages Python 3.11 (bookworm), 3.13 (trixie)" in message, message
    assert "uv could not download Python 3.12" in message, message
    assert not any(fs.iterdir()), "nothing of Debian was fetched"


def test_dockerfile_commands_entrypoint_and_cmd_on_an_image(tmp_path):
    """Modal's ``dockerfile_commands`` add layers on the image (COPY from ``context_dir``);
    ``entrypoint``/``cmd``/``shell`` are accepted and noted, since ketch runs its own process."""
    (tmp_path / "conf.txt").write_text("x=1\n")
    base = Image.debian_slim()
    image = base.dockerfile_commands(
        "RUN echo hi > /x", ["ENV A=1", "COPY conf.txt /etc/app/"], context_dir=tmp_path
    )
    kinds = [step.kind for _, step in image.layers]
    assert kinds[:3] == ["debian_slim", "run_commands", "env"] and len(kinds) == 4, kinds
    assert image.entrypoint([]) == image and not image.entrypoint([]).notes
    assert "CMD ['serve'] is not run" in image.cmd(["serve"]).notes
    with pytest.raises(InvalidError, match="dockerfile_commands line 2: multi-stage"):
        base.dockerfile_commands("RUN true", "FROM alpine")
