"""Local model repositories only from under the operator's model roots: a table of paths a
hostile user may name, and the roots an operator may not configure."""

from __future__ import annotations

import os
import socket

import pytest

from engines.model_roots import ModelRoots, RootsError


@pytest.fixture
def host(tmp_path):
    """A data dir, a model root with one good repository, and things around it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "endpointd.db").write_text("secrets")
    root = tmp_path / "models"
    good = root / "good"
    (good / "sub").mkdir(parents=True)
    (good / "config.json").write_text("{}")
    (good / "sub" / "weights.bin").write_bytes(b"\0")
    os.symlink("../config.json", good / "sub" / "link-inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x")
    return tmp_path, data, root


def test_the_default_root_is_created_under_the_data_dir(tmp_path):
    data = tmp_path / "data"
    roots = ModelRoots.configure([], data)
    assert roots.roots == ((data / "models").resolve(),) and (data / "models").is_dir()


@pytest.mark.parametrize("make, message", [
    (lambda t, d, r: str(d), "is or contains the data directory"),
    (lambda t, d, r: str(t), "is or contains the data directory"),  # a parent of it
    (lambda t, d, r: "relative/dir", "must be an absolute path"),
    (lambda t, d, r: str(t / "missing"), "is not a directory"),
])
def test_roots_an_operator_may_not_configure(host, make, message):
    tmp, data, root = host
    with pytest.raises(RootsError, match=message):
        ModelRoots.configure([make(tmp, data, root)], data)


def test_a_repository_under_a_root_is_its_resolved_directory(host):
    tmp, data, root = host
    roots = ModelRoots.configure([str(root)], data)
    assert roots.check(str(root / "good")) == (root / "good").resolve()
    assert roots.check(str(root / "good" / ".." / "good")) == (root / "good").resolve()


@pytest.mark.parametrize("name, prepare, message", [
    ("the data dir", lambda t, d, r: str(d), "is not under a model root"),
    ("a file in it", lambda t, d, r: str(d / "endpointd.db"), "is not under a model root"),
    ("/var/run", lambda t, d, r: "/var/run", "is not under a model root"),
    ("the docker socket", lambda t, d, r: "/var/run/docker.sock", "not under a model root|does not exist"),
    ("/", lambda t, d, r: "/", "is not under a model root"),
    ("dot-dot out", lambda t, d, r: str(r / ".." / "outside"), "is not under a model root"),
    ("missing", lambda t, d, r: str(r / "nope"), "does not exist on this host"),
    ("a file, not a dir", lambda t, d, r: str(r / "good" / "config.json"), "is not a directory"),
])
def test_paths_outside_a_root_are_refused_naming_the_roots(host, name, prepare, message):
    tmp, data, root = host
    roots = ModelRoots.configure([str(root)], data)
    with pytest.raises(RootsError, match=message) as info:
        roots.check(prepare(tmp, data, root))
    assert str(root.resolve()) in str(info.value)  # the 400 names the allowed roots


def test_a_symlink_to_outside_a_root_is_refused(host):
    tmp, data, root = host
    roots = ModelRoots.configure([str(root)], data)
    os.symlink(tmp / "outside", root / "escape")  # the repository itself
    with pytest.raises(RootsError, match="is not under a model root"):
        roots.check(str(root / "escape"))
    os.symlink(data, root / "good" / "data")  # a link inside the tree
    with pytest.raises(RootsError, match="links outside the model root"):
        roots.check(str(root / "good"))


@pytest.mark.parametrize("kind", ["socket", "fifo"])
def test_a_tree_with_a_socket_or_a_pipe_is_refused(host, kind):
    tmp, data, root = host
    roots = ModelRoots.configure([str(root)], data)
    target = root / "good" / "sub" / "special"
    if kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(target))
        s.close()
    else:
        os.mkfifo(target)
    with pytest.raises(RootsError, match="not a regular file or directory"):
        roots.check(str(root / "good"))
