"""Image descriptions: immutable steps, content-addressed layer hashes, mounts, wire form."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import threading
from pathlib import Path

import cloudpickle
import msgpack
import pytest

from ketch.exception import InvalidError
from ketch.image import Image, Mount, local_files

BASE = Image.debian_slim(python_version="3.12")


def hashes(image: Image) -> list[str]:
    return [h for h, _ in image.layers]


def write(path, text: str = "x", mode: int | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        path.chmod(mode)
    return path


def download(name: str, size: int = 1) -> str:
    return name * size


# --- hashing ------------------------------------------------------------------


def test_same_spec_gives_same_hash_across_calls():
    a = BASE.apt_install("git").pip_install("numpy==2.1.0").env({"A": "1"})
    b = (
        Image.debian_slim(python_version="3.12")
        .apt_install("git")
        .pip_install("numpy==2.1.0")
        .env({"A": "1"})
    )
    assert a == b and hash(a) == hash(b)
    assert hashes(a) == hashes(b)
    assert all(len(h) == 64 for h in hashes(a))
    assert a.hash == a.layers[-1].hash


def test_hash_scheme_is_pinned():
    # A new value here rebuilds every cached image: change the scheme on purpose only.
    assert BASE.hash == "04883e67dbbe83900031c25a478a533d5a79afe14c464a957da19d128ccc3318"
    assert (
        BASE.pip_install("numpy").hash
        == "3de33a45d71eff087ec3015d088174e80f42000e2e4afdcbb1940464b4bc849a"
    )


def test_changing_one_step_changes_only_it_and_later_layers():
    a = BASE.apt_install("git").pip_install("numpy").run_commands("echo hi").env({"A": "1"})
    b = BASE.apt_install("git").pip_install("pandas").run_commands("echo hi").env({"A": "1"})
    ha, hb = hashes(a), hashes(b)
    assert ha[:2] == hb[:2]
    assert all(x != y for x, y in zip(ha[2:], hb[2:], strict=True))


def test_each_option_is_part_of_the_hash():
    variants = [
        BASE.pip_install("numpy"),
        BASE.pip_install("numpy", pre=True),
        BASE.pip_install("numpy", extra_index_url="https://example.org/simple"),
        BASE.pip_install("numpy", index_url="https://example.org/simple"),
        BASE.pip_install("numpy", find_links="/wheels"),
        BASE.pip_install("numpy", extra_options="--no-deps"),
        BASE.uv_pip_install("numpy"),
        BASE.apt_install("numpy"),
        BASE.run_commands("numpy"),
        Image.debian_slim(python_version="3.11").pip_install("numpy"),
        Image.from_registry("python:3.12-slim").pip_install("numpy"),
        Image.from_registry("python:3.12-slim", add_python="3.12").pip_install("numpy"),
    ]
    assert len({v.hash for v in variants}) == len(variants)


def test_env_key_order_does_not_matter_but_values_do():
    assert BASE.env({"A": "1", "B": "2"}).hash == BASE.env({"B": "2", "A": "1"}).hash
    assert BASE.env({"A": "1"}).hash != BASE.env({"A": "2"}).hash


def test_package_order_is_kept_and_part_of_the_hash():
    image = BASE.pip_install("b", ["a", ["c"]], ("d",))
    assert image.layers[-1].step.spec["packages"] == ("b", "a", "c", "d")
    assert image.hash != BASE.pip_install("a", "b", "c", "d").hash


def test_force_build_marks_without_changing_hashes():
    plain = BASE.apt_install("git").pip_install("numpy").run_commands("make")
    forced = BASE.apt_install("git").pip_install("numpy", force_build=True).run_commands("make")
    assert hashes(plain) == hashes(forced)
    assert plain.rebuild_from is None
    assert forced.rebuild_from == 2
    assert Image.debian_slim("3.12", force_build=True).rebuild_from == 0


# --- immutability and input checks --------------------------------------------


def test_methods_return_new_images_and_steps_are_frozen():
    a = BASE.pip_install("numpy")
    assert len(BASE.layers) == 1 and len(a.layers) == 2
    spec = a.layers[-1].step.spec
    with pytest.raises(TypeError):
        spec["packages"] = ["evil"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        spec["packages"].append("evil")  # tuples, not lists
    with pytest.raises(InvalidError, match="debian_slim"):
        Image()


def test_empty_calls_are_no_ops():
    assert BASE.pip_install() is BASE
    assert BASE.uv_pip_install([]) == BASE
    assert BASE.apt_install([[]]) == BASE
    assert BASE.run_commands() == BASE
    assert BASE.env({}) == BASE


@pytest.mark.parametrize("bad", [1, None, "", "   ", b"numpy", ["ok", 3], {"numpy"}])
def test_packages_must_be_strings(bad):
    with pytest.raises(InvalidError, match="pip_install takes non-empty strings"):
        BASE.pip_install(bad)


def test_bad_options_are_rejected():
    with pytest.raises(InvalidError, match="extra_index_url"):
        BASE.pip_install("x", extra_index_url=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidError, match="find_links"):
        BASE.pip_install("x", find_links=["/w"])  # type: ignore[arg-type]
    with pytest.raises(InvalidError, match="extra_options"):
        BASE.pip_install("x", extra_options="--flag 'unclosed")
    with pytest.raises(InvalidError, match="apt_install"):
        BASE.apt_install("git", 7)  # type: ignore[arg-type]
    with pytest.raises(InvalidError, match="run_commands"):
        BASE.run_commands(["ls", None])  # type: ignore[list-item]


@pytest.mark.parametrize("version", ["3.9", "3.15", "3", "3.12.1", "py3.12", "2.7", 3.12])
def test_python_version_is_validated(version):
    with pytest.raises(InvalidError, match="python_version"):
        Image.debian_slim(python_version=version)  # type: ignore[arg-type]


def test_default_python_version_is_the_local_one():
    local = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert Image.debian_slim().layers[0].step.spec["python_version"] == local


@pytest.mark.parametrize(
    "tag",
    [
        "python",
        "python:3.12-slim",
        "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
        "ghcr.io/org/team/app:v1.0",
        "localhost:5000/app",
        "registry.example.com:443/a_b/c__d/e-f:latest",
        "alpine@sha256:" + "a" * 64,
        "alpine:3.20@sha256:" + "0" * 64,
    ],
)
def test_registry_references_accepted(tag):
    assert Image.from_registry(tag).layers[0].step.spec["tag"] == tag


@pytest.mark.parametrize(
    "tag", ["", "Python:3.12", "python:", "python:3.12 slim", "a//b", "-x", "python@sha256:xyz", 42]
)
def test_registry_references_rejected(tag):
    with pytest.raises(InvalidError, match="invalid image reference"):
        Image.from_registry(tag)


def test_add_python_is_validated():
    with pytest.raises(InvalidError, match="add_python"):
        Image.from_registry("ubuntu:24.04", add_python="3.8")


def test_env_and_workdir_checks():
    for bad in [{"1A": "x"}, {"A": 1}, {"A-B": "x"}, {3: "x"}, ["A=1"]]:
        with pytest.raises(InvalidError, match="env"):
            BASE.env(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidError, match="workdir"):
        BASE.workdir("")
    image = BASE.workdir("/srv").workdir("app/../data")
    assert [s.spec["path"] for _, s in image.layers[1:]] == ["/srv", "/srv/data"]
    assert BASE.workdir("rel").layers[-1].step.spec["path"] == "/rel"


# --- requirements and run_function ---------------------------------------------


def test_requirements_contents_are_in_the_hash(tmp_path):
    req = write(tmp_path / "requirements.txt", "numpy==2.1.0\n")
    first = BASE.pip_install_from_requirements(req)
    assert first.hash == BASE.pip_install_from_requirements(str(req)).hash
    assert first.layers[-1].step.spec["requirements"] == "numpy==2.1.0\n"
    write(req, "numpy==2.1.1\n")
    assert BASE.pip_install_from_requirements(req).hash != first.hash
    moved = write(tmp_path / "other" / "reqs.txt", "numpy==2.1.0\n")
    assert BASE.pip_install_from_requirements(moved).hash == first.hash  # the path is not hashed
    with pytest.raises(InvalidError, match="does not exist"):
        BASE.pip_install_from_requirements(tmp_path / "missing.txt")


def test_run_function_pickles_function_and_arguments():
    a = BASE.run_function(download, args=("bert",), kwargs={"size": 2})
    b = BASE.run_function(download, args=("bert",), kwargs={"size": 2})
    assert a.hash == b.hash
    assert a.hash != BASE.run_function(download, args=("gpt",), kwargs={"size": 2}).hash
    assert a.hash != BASE.run_function(download, args=("bert",)).hash
    step = a.layers[-1].step
    assert step.spec["function"].endswith("test_image.download")
    fn, args, kwargs = cloudpickle.loads(step.blob)
    assert fn(*args, **kwargs) == "bertbert"
    assert cloudpickle.list_registry_pickle_by_value() == set()


def test_run_function_hash_follows_the_function_body(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    source = tmp_path / "ketch_test_build_steps.py"
    write(source, "def setup():\n    return 1\n")
    module = importlib.import_module("ketch_test_build_steps")
    first = BASE.run_function(module.setup).hash
    write(source, "def setup():\n    return 22\n")  # a new size, so no stale .pyc
    module = importlib.reload(module)
    try:
        assert module.setup() == 22
        assert BASE.run_function(module.setup).hash != first
    finally:
        sys.modules.pop("ketch_test_build_steps", None)


def test_run_function_bad_inputs():
    with pytest.raises(InvalidError, match="callable"):
        BASE.run_function("download")  # type: ignore[arg-type]
    with pytest.raises(InvalidError, match="cannot pickle"):
        BASE.run_function(download, args=(threading.Lock(),))
    with pytest.raises(InvalidError, match="args must be a tuple"):
        BASE.run_function(download, args="bert")  # type: ignore[arg-type]


# --- local files ----------------------------------------------------------------


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    write(root / "main.py", "print('hi')\n")
    write(root / "pkg" / "util.py", "X = 1\n")
    write(root / "app.log", "log")
    write(root / "pkg" / "deep.log", "log")
    write(root / "build" / "out.bin", "bin")
    write(root / "build" / "keep.txt", "keep")
    return root


def test_copy_layer_hash_follows_content_mode_and_names(project):
    def image():
        return BASE.add_local_dir(project, "/app", copy=True)

    first = image().hash
    assert image().hash == first
    write(project / "main.py", "print('bye')\n")
    second = image().hash
    assert second != first
    (project / "main.py").chmod(0o755)
    third = image().hash
    assert third != second
    (project / "pkg" / "util.py").rename(project / "pkg" / "util2.py")
    assert image().hash != third


def test_copy_layer_hash_ignores_local_location(project, tmp_path):
    other = tmp_path / "elsewhere"
    for rel, path in local_files(str(project)):
        write(other / rel, Path(path).read_text(), os.stat(path).st_mode & 0o777)
    assert (
        BASE.add_local_dir(project, "/app", copy=True).hash
        == BASE.add_local_dir(other, "/app", copy=True).hash
    )
    assert (
        BASE.add_local_dir(project, "/app", copy=True).hash
        != BASE.add_local_dir(project, "/srv", copy=True).hash
    )


def test_ignore_patterns(project):
    def names(ignore):
        return [rel for rel, _ in local_files(str(project), ignore)]

    everything = [
        "app.log",
        "build/keep.txt",
        "build/out.bin",
        "main.py",
        "pkg/deep.log",
        "pkg/util.py",
    ]
    assert names([]) == everything
    assert names(["*.log"]) == [
        "build/keep.txt",
        "build/out.bin",
        "main.py",
        "pkg/deep.log",
        "pkg/util.py",
    ]
    assert names(["**/*.log"]) == ["build/keep.txt", "build/out.bin", "main.py", "pkg/util.py"]
    assert names(["build"]) == ["app.log", "main.py", "pkg/deep.log", "pkg/util.py"]
    assert names(["/build/", "!build/keep.txt"]) == [
        "app.log",
        "build/keep.txt",
        "main.py",
        "pkg/deep.log",
        "pkg/util.py",
    ]
    assert names(["pkg/*", "# comment", ""]) == [
        "app.log",
        "build/keep.txt",
        "build/out.bin",
        "main.py",
    ]
    assert names(["?ain.py", "[ab]*"]) == ["pkg/deep.log", "pkg/util.py"]  # [ab]* matches build/
    assert names(["[!ab]*"]) == ["app.log", "build/keep.txt", "build/out.bin"]


def test_ignore_patterns_follow_docker_not_git(tmp_path):
    for rel in ["a.log", "pkg/b.log", "pkg/keep.py", "pkg/sub/c.py", "pkg/sub/d.log", "x/pkg/e.py"]:
        write(tmp_path / rel)

    def names(ignore):
        return [rel for rel, _ in local_files(str(tmp_path), ignore)]

    # Without a slash a pattern names the root only (git would match at any depth).
    assert names(["pkg"]) == ["a.log", "x/pkg/e.py"]
    # A directory a pattern matches takes its contents with it, even under a re-include
    # that keeps the walk from pruning it.
    assert names(["pkg/*", "!pkg/keep.py"]) == ["a.log", "pkg/keep.py", "x/pkg/e.py"]
    # The last matching pattern wins, whichever way it points.
    assert names(["**/*.log", "!pkg/**", "pkg/sub/*.log"]) == [
        "pkg/b.log",
        "pkg/keep.py",
        "pkg/sub/c.py",
        "x/pkg/e.py",
    ]
    # Patterns are cleaned as Docker cleans them; "." and "/" name nothing.
    assert names(["/pkg/./sub/", "x//pkg", ".", "/", "!"]) == ["a.log", "pkg/b.log", "pkg/keep.py"]
    for bad in (["[z-a]"], ["a\\"], [3]):
        with pytest.raises(InvalidError, match="ignore pattern"):
            local_files(str(tmp_path), bad)


def test_ignore_patterns_need_no_pathspec_in_a_container(tmp_path, monkeypatch):
    monkeypatch.setenv("KETCH_CONTAINER_ID", "ct-123")
    monkeypatch.setitem(sys.modules, "pathspec", None)  # a container's bundle has no pathspec
    image = BASE.add_local_dir(tmp_path, "/app", ignore=["**/*.log", "!keep.log"])
    assert image.mounts[0].ignore == ("**/*.log", "!keep.log")


def test_ignored_files_do_not_change_the_hash(project):
    def image():
        return BASE.add_local_dir(project, "/app", copy=True, ignore=["**/*.log"])

    first = image().hash
    write(project / "app.log", "more log")
    write(project / "pkg" / "new.log", "new")
    assert image().hash == first
    assert BASE.add_local_dir(project, "/app", copy=True).hash != first
    with pytest.raises(InvalidError, match="ignore must be a list"):
        BASE.add_local_dir(project, "/app", ignore="*.log")  # type: ignore[arg-type]


def test_symlinks_are_listed_not_followed(project):
    os.symlink("main.py", project / "link.py")
    os.symlink("pkg", project / "linkdir")
    entries = dict(local_files(str(project)))
    assert "link.py" in entries and "linkdir" in entries and "linkdir/util.py" not in entries
    first = BASE.add_local_dir(project, "/app", copy=True).hash
    os.remove(project / "link.py")
    os.symlink("pkg/util.py", project / "link.py")
    assert BASE.add_local_dir(project, "/app", copy=True).hash != first


def test_mounts_do_not_create_layers_or_change_hashes(project):
    image = BASE.pip_install("numpy")
    mounted = image.add_local_dir(project, "/app").add_local_file(project / "main.py", "/etc/")
    assert hashes(mounted) == hashes(image)
    assert mounted.mounts == [
        Mount("dir", str(project), "/app"),
        Mount("file", str(project / "main.py"), "/etc/main.py"),
    ]
    write(project / "main.py", "changed")
    assert image.add_local_dir(project, "/app").hash == image.hash
    assert mounted.add_local_dir(project, "/more").mounts[-1].remote_path == "/more"


def test_build_steps_after_a_mount_are_rejected(project):
    mounted = BASE.add_local_dir(project, "/app")
    with pytest.raises(InvalidError, match=r"pip_install\(\) comes after local files .* copy=True"):
        mounted.pip_install("numpy")
    copied = BASE.add_local_dir(project, "/app", copy=True).pip_install("numpy")
    assert [s.kind for _, s in copied.layers] == ["debian_slim", "add_local_dir", "pip_install"]


def test_local_path_errors(project, tmp_path):
    with pytest.raises(InvalidError, match="add_local_dir: local path .* does not exist"):
        BASE.add_local_dir(tmp_path / "nope", "/app")
    with pytest.raises(InvalidError, match="is not a dir"):
        BASE.add_local_dir(project / "main.py", "/app")
    with pytest.raises(InvalidError, match="add_local_file: local path .* is not a file"):
        BASE.add_local_file(project, "/app/x")
    with pytest.raises(InvalidError, match="absolute path"):
        BASE.add_local_file(project / "main.py", "app/main.py")
    with pytest.raises(InvalidError, match="absolute path"):
        BASE.add_local_dir(project, "relative")


def test_add_local_file_remote_paths(project):
    a = BASE.add_local_file(project / "main.py", "/srv/", copy=True)
    b = BASE.add_local_file(project / "main.py", "/srv/main.py", copy=True)
    assert a.hash == b.hash
    assert a.layers[-1].step.spec["remote_path"] == "/srv/main.py"


@pytest.fixture
def sources(tmp_path, monkeypatch):
    root = tmp_path / "src"
    write(root / "ketch_demo_pkg" / "__init__.py", "raise RuntimeError('must not be imported')\n")
    write(root / "ketch_demo_pkg" / "core.py", "A = 1\n")
    write(root / "ketch_demo_pkg" / "data.json", "{}")
    write(root / "ketch_demo_pkg" / "__pycache__" / "core.cpython-311.pyc", "pyc")
    write(root / "ketch_demo_mod.py", "B = 2\n")
    monkeypatch.syspath_prepend(str(root))
    return root


def test_add_local_python_source_finds_without_importing(sources):
    image = BASE.add_local_python_source(
        "ketch_demo_pkg", ["ketch_demo_mod"], "ketch_demo_pkg.core"
    )
    assert "ketch_demo_pkg" not in sys.modules
    assert [(m.kind, m.local_path, m.remote_path) for m in image.mounts] == [
        ("python_source", str(sources / "ketch_demo_pkg"), "/root/ketch_demo_pkg"),
        ("python_source", str(sources / "ketch_demo_mod.py"), "/root/ketch_demo_mod.py"),
        (
            "python_source",
            str(sources / "ketch_demo_pkg" / "core.py"),
            "/root/ketch_demo_pkg/core.py",
        ),
    ]
    package = image.mounts[0]
    assert [rel for rel, _ in local_files(package.local_path, package.ignore)] == [
        "__init__.py",
        "core.py",
    ]


def test_add_local_python_source_copy_layer(sources):
    image = BASE.add_local_python_source("ketch_demo_pkg", copy=True)
    first = image.hash
    write(sources / "ketch_demo_pkg" / "data.json", "{changed}")
    assert BASE.add_local_python_source("ketch_demo_pkg", copy=True).hash == first
    write(sources / "ketch_demo_pkg" / "core.py", "A = 2\n")
    assert BASE.add_local_python_source("ketch_demo_pkg", copy=True).hash != first
    everything = BASE.add_local_python_source("ketch_demo_pkg", copy=True, ignore=[])
    assert everything.hash != BASE.add_local_python_source("ketch_demo_pkg", copy=True).hash


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ketch_no_such_module", "no module named 'ketch_no_such_module'"),
        ("ketch_demo_pkg.missing", "no module named 'ketch_demo_pkg.missing'"),
        ("ketch_demo_mod.sub", "no module named 'ketch_demo_mod.sub'"),
        ("sys", "not Python source"),
        ("not a name", "module names like"),
        ("../evil", "module names like"),
    ],
)
def test_add_local_python_source_errors(sources, name, message):
    with pytest.raises(InvalidError, match=message):
        BASE.add_local_python_source(name)


# --- imports() ------------------------------------------------------------------


def test_imports_swallow_import_errors_locally(monkeypatch):
    monkeypatch.delenv("KETCH_CONTAINER_ID", raising=False)
    reached = []
    with BASE.imports():
        import ketch_module_that_does_not_exist  # noqa: F401

        reached.append(True)
    assert reached == []
    with pytest.raises(ZeroDivisionError), BASE.imports():
        1 / 0  # noqa: B018


def test_imports_raise_inside_a_container(monkeypatch):
    monkeypatch.setenv("KETCH_CONTAINER_ID", "ct-123")
    with pytest.raises(ModuleNotFoundError), BASE.imports():
        import ketch_module_that_does_not_exist  # noqa: F401


# --- wire form ------------------------------------------------------------------


def test_wire_round_trip_through_msgpack(project):
    image = (
        Image.from_registry("python:3.12-slim", add_python="3.12")
        .pip_install("numpy", pre=True, force_build=True)
        .run_function(download, args=("a",))
        .add_local_dir(project, "/app", copy=True, ignore=["*.log"])
        .add_local_file(project / "main.py", "/srv/main.py")
    )
    body = msgpack.packb(image.to_wire(), use_bin_type=True)
    back = Image.from_wire(msgpack.unpackb(body, raw=False))
    assert back == image
    assert hashes(back) == hashes(image) and back.mounts == image.mounts
    assert back.rebuild_from == 1
    assert back.layers[2].step.blob == image.layers[2].step.blob


def test_wire_rejects_tampering_and_bad_shapes():
    wire = BASE.pip_install("numpy").to_wire()
    wire["layers"][1]["spec"]["packages"] = ["evil"]
    with pytest.raises(InvalidError, match="pip_install has hash"):
        Image.from_wire(wire)
    with pytest.raises(InvalidError, match="wire version"):
        Image.from_wire({"version": 99, "layers": []})
    broken = BASE.to_wire()
    del broken["layers"][0]["spec"]
    with pytest.raises(InvalidError, match="malformed"):
        Image.from_wire(broken)


def test_repr_names_the_steps(project):
    text = repr(BASE.apt_install("git").add_local_dir(project, "/app"))
    assert text.startswith("Image(debian_slim -> apt_install, 1 mounts, hash=")


def test_hash_is_stable_in_a_fresh_process(tmp_path):
    # Layer hashes must not depend on PYTHONHASHSEED or on this process.
    script = textwrap.dedent(
        """
        from ketch.image import Image
        print(Image.debian_slim(python_version="3.12").pip_install("numpy").env({"B": "1", "A": "2"}).hash)
        """
    )
    import subprocess

    env = dict(os.environ, PYTHONHASHSEED="123", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == BASE.pip_install("numpy").env({"A": "2", "B": "1"}).hash


def test_app_image_is_the_default_of_its_functions():
    """``App(image=)`` is ``app.image`` and the image of functions that name none (Modal's);
    an app without one has the default image; ``app.image.imports()`` works as a block."""
    import ketch
    from ketch.image import default_image

    image = ketch.Image.debian_slim().pip_install("six")
    app = ketch.App("with-image", image=image)

    @app.function(serialized=True)
    def f():
        return 1

    assert app.image.hash == image.hash
    assert app.registered_functions["f"]._ketch_impl._spec.image == image.to_wire()
    assert ketch.App("plain").image.hash == default_image().hash
    with app.image.imports():
        import json  # noqa: F401


def test_pip_sources_and_flags_reach_the_installer():
    from ketch.images.builder import _uv_pip_argv

    step = (
        BASE.pip_install(
            "torch==2.5.1",
            index_url="https://download.example/cpu",
            find_links="/wheels",
            extra_options="--no-deps --no-index",
            pre=True,
        )
        .layers[-1]
        .step
    )
    argv = _uv_pip_argv(step.spec, "python3")
    assert argv[argv.index("--index-url") + 1] == "https://download.example/cpu"
    assert argv[argv.index("--find-links") + 1] == "/wheels"
    assert {"--no-deps", "--no-index", "--prerelease"} <= set(argv)
    assert "--extra-index-url" not in argv


def test_a_plain_pip_step_keeps_the_hash_it_always_had():
    # Sources that were not given are left out of the step, so older caches still match.
    assert dict(BASE.pip_install("numpy").layers[-1].step.spec) == {
        "packages": ("numpy",),
        "extra_index_url": None,
        "pre": False,
    }
