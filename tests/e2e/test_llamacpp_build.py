"""The llama.cpp image's inputs and the packaged models: pinned downloads, sha256 checks, the
compile's progress lines, and the preset's choice of the image built on this host."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from engines import images, models, pinned
from engines.build_progress import CompileProgress
from engines.presets import DEFAULT_IMAGES, LOCAL_IMAGES, with_local_images


def test_compile_progress_is_shown_every_tenth_of_the_way_once():
    progress = CompileProgress()
    shown = [line for i in range(1, 213) if (line := progress.see(f"[{i}/212] Building CXX object f{i}.o"))]
    assert shown[0] == "1 of 212 files (0 %)" and shown[-1] == "212 of 212 files (100 %)"
    assert len(shown) == 11
    assert progress.see("[3/212] Linking") is None  # already past that tenth
    assert progress.see("-- Configuring done") is None and progress.see("[9/3] odd") is None
    progress.reset()  # a new build step counts from the start
    assert progress.see("[1/5] Building") == "1 of 5 files (20 %)"


def test_the_image_digest_follows_the_dockerfile_and_the_pinned_source(monkeypatch, tmp_path):
    before = images.llamacpp_digest()
    monkeypatch.setattr(images, "LLAMA_CPP_SOURCE", pinned.Pinned("x==1", "x.tar.gz", "0" * 64, sdist=True))
    assert images.llamacpp_digest() != before
    assert images.LLAMA_CPP_IMAGE == f"endpointd/llama-cpp:{pinned.LLAMA_CPP_BUILD}"


def test_the_dockerfile_keeps_build_tools_out_of_the_served_image():
    dockerfile = (images.LLAMA_CPP_CONTEXT / "Dockerfile").read_text()
    build, served = dockerfile.split("FROM ${RUN_BASE}")
    assert "build-essential" in build and "build-essential" not in served
    assert "COPY --from=build /out /app" in served and 'ENTRYPOINT ["/app/llama-server"]' in served
    cuda = (images.LLAMA_CPP_CONTEXT / "Dockerfile.cuda").read_text()
    assert "-DGGML_CUDA=ON" in cuda and "FROM ${RUN_BASE}" in cuda
    assert images.llamacpp_digest(cuda=True) != images.llamacpp_digest()


async def test_local_images_replace_upstream_tags_only_when_present_and_not_pinned():
    async def present(image):
        return image in held

    held = {LOCAL_IMAGES["llamacpp"]}
    assert await with_local_images({}, present) == {"llamacpp": LOCAL_IMAGES["llamacpp"]}
    assert await with_local_images({"llamacpp": "mine:1"}, present) == {"llamacpp": "mine:1"}
    held = set()
    assert await with_local_images({}, present) == {}
    assert DEFAULT_IMAGES["llamacpp"].startswith("ghcr.io/")  # the upstream tag stays the default elsewhere


async def test_a_cached_file_with_another_sha256_is_downloaded_again_and_refused_when_still_wrong(tmp_path):
    """A damaged cache is never used; a download that does not match the pin is refused (here pip
    finds no such package at all: the error names the requirement)."""
    wrong = pinned.Pinned("endpointd-no-such-package-zzz==0.0.1", "nope.tar.gz", "0" * 64, sdist=True)
    (tmp_path / wrong.filename).write_bytes(b"damaged")
    said: list[str] = []
    with pytest.raises(pinned.FetchError, match="endpointd-no-such-package-zzz==0.0.1"):
        await pinned.fetch(wrong, said.append, tmp_path)
    assert not (tmp_path / wrong.filename).exists()
    assert any("does not have the pinned sha256" in line for line in said)


def _fake_package(path: Path, member: str, content: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, content)


async def test_a_packaged_model_whose_file_differs_from_its_pin_is_not_written(tmp_path, monkeypatch):
    package = tmp_path / "cache" / "pkg.whl"
    package.parent.mkdir()
    _fake_package(package, "m/model.gguf", b"not the model")

    async def fetched(*_args):
        return package

    monkeypatch.setattr(models, "fetch", fetched)
    model = models.PackagedModel(pinned.SMOLLM2_WHEEL, "m/model.gguf", "1" * 64, "m", "a model")
    monkeypatch.setitem(models.MODELS, "fake", model)
    root = tmp_path / "models"
    root.mkdir()
    with pytest.raises(models.ModelError, match="not the pinned"):
        await models.add("fake", root, print)
    assert not list((root / "m").iterdir())  # no partial file left behind


async def test_an_unknown_model_name_lists_the_known_ones(tmp_path):
    with pytest.raises(models.ModelError, match="known: smollm2"):
        await models.add("gpt-5", tmp_path, print)


async def test_smollm2_is_fetched_once_checked_and_put_under_the_root(tmp_path):
    """The real pinned wheel from the package index (cached after the first run)."""
    root = tmp_path / "models"
    root.mkdir()
    said: list[str] = []
    directory = await models.add("smollm2", root, said.append)
    gguf = directory / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf.stat().st_size == 98_362_432
    assert gguf.read_bytes()[:4] == b"GGUF"
    said.clear()
    await models.add("smollm2", root, said.append)
    assert said == [f"{gguf} is already there"]
