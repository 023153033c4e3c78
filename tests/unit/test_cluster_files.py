"""``ketch.cluster.files``: a node's changes to a Volume's copy, back on the control plane."""

from __future__ import annotations

import os
from pathlib import Path


def _tree(root):
    out = {}
    for top, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            out[rel] = None if os.path.isdir(path) else Path(path).read_text()
    return out


def test_changes_travel_alone_and_never_through_a_symlink(tmp_path):
    """A node's changed entries (``write_changes``) applied to the control plane's working
    copy (``apply_changes``): new folders whole, replaced files, deletions; an entry under
    a folder the container swapped for a symlink is left out."""
    import subprocess

    from ketch.cluster.files import apply_changes, write_changes

    node, here, outside = tmp_path / "node", tmp_path / "here", tmp_path / "outside"
    for root in (node, here):
        (root / "old").mkdir(parents=True)
        (root / "old" / "gone.txt").write_text("gone")
        (root / "same.txt").write_text("same")
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (node / "old" / "gone.txt").unlink()
    (node / "dir").mkdir()
    (node / "dir" / "x").write_text("x")
    (here / "dir").symlink_to(outside)  # (only a broken stream could leave one: never followed)
    (node / "new" / "deeper").mkdir(parents=True)
    (node / "new" / "deeper" / "f.txt").write_text("f")
    (node / "same.txt").write_text("changed")
    (node / "link").symlink_to("same.txt")
    (node / "sneaky").symlink_to(outside)
    rels = ["dir/x", "link", "new", "new/deeper", "new/deeper/f.txt", "same.txt", "sneaky/secret"]
    with open(tmp_path / "stream.tar", "w+b") as out:
        included = write_changes(node, rels, out)
    assert "sneaky/secret" not in included and included["same.txt"][0] == "f"
    staging = tmp_path / "staging"
    staging.mkdir()
    subprocess.run(["tar", "-C", str(staging), "-xf", str(tmp_path / "stream.tar")], check=True)
    apply_changes(staging, here, sorted(included), ["old/gone.txt"])
    assert sorted(os.listdir(outside)) == ["secret"]
    (here / "dir").unlink()
    assert _tree(here) == {
        "old": None,
        "new": None,
        "new/deeper": None,
        "new/deeper/f.txt": "f",
        "same.txt": "changed",
        "link": "changed",
    }
    assert os.readlink(here / "link") == "same.txt"
