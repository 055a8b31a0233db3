"""`endpointd images build`: each image is rebuilt only when the digest of its inputs changes (its
files, the torch wheel's name, endpointd's sources), and the images it builds are the ones the
presets and the tests run."""

from __future__ import annotations

import re
import shutil

import pytest

from engines import images
from engines.presets import DEFAULT_IMAGES


def copy_context(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_a_changed_file_changes_the_digest_and_nothing_else_does(tmp_path):
    context = copy_context(images.TOOLKIT_CONTEXT, tmp_path / "toolkit")
    before = images.context_digest(context, images.TOOLKIT_FILES)
    assert images.context_digest(context, images.TOOLKIT_FILES) == before  # stable
    (context / "notes.txt").write_text("not an input")
    assert images.context_digest(context, images.TOOLKIT_FILES) == before
    (context / "server.py").write_text((context / "server.py").read_text() + "\n# edited\n")
    assert images.context_digest(context, images.TOOLKIT_FILES) != before


def test_the_toolkits_digest_names_its_torch_wheel(tmp_path):
    wheel = tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    other = tmp_path / "torch-2.14.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    digests = {images.Toolkit(torch=None).digest, images.Toolkit(torch=wheel).digest, images.Toolkit(torch=other).digest}
    assert len(digests) == 3


def test_the_torch_wheel_is_the_newest_cpu_one_on_disk(tmp_path):
    assert images.torch_wheel(tmp_path / "absent") is None
    assert images.torch_wheel(tmp_path) is None
    for name in ("torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"):  # CUDA: never
        (tmp_path / name).write_bytes(b"")
    assert images.torch_wheel(tmp_path).name == "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


def test_endpointds_image_is_built_from_its_packages_sources(tmp_path):
    files = [str(path) for path in images.project_files()]
    assert files[:3] == ["Dockerfile", "pyproject.toml", "README.md"]
    assert "engines/presets.py" in files and "proxy/server.py" in files and "autoscaler/serve.py" in files
    assert not [f for f in files if "__pycache__" in f or f.startswith("tests/") or f.endswith(".pyc")]


def test_the_images_built_are_the_ones_the_presets_run():
    assert images.TOOLKIT_IMAGE == DEFAULT_IMAGES["huggingface"]
    assert not images.TOOLKIT_IMAGE.endswith(":latest")
    # The toolkit's files that the Dockerfile copies are the ones the digest covers.
    dockerfile = (images.TOOLKIT_CONTEXT / "Dockerfile").read_text()
    for name in images.TOOLKIT_FILES[1:]:
        assert name in dockerfile, name


class Labels:
    """image_labels of an engine holding the given images."""

    def __init__(self, held):
        self.held = held

    async def image_labels(self, image):
        return self.held.get(image)


@pytest.mark.parametrize("held, rebuilt_base, stale", [
    ({}, False, True),  # no image
    ({"img": {images.CONTEXT_LABEL: "d1"}}, False, False),  # same inputs
    ({"img": {images.CONTEXT_LABEL: "d0"}}, False, True),  # other inputs
    ({"img": {}}, False, True),  # built by hand, no label
    ({"img": {images.CONTEXT_LABEL: "d1"}}, True, True),  # a new base under it
])
async def test_an_image_is_rebuilt_only_when_stale(held, rebuilt_base, stale):
    assert await images._stale(Labels(held), "img", "d1", rebuilt_base) is stale


@pytest.mark.docker
@pytest.mark.parametrize("which, image", [
    ("echo", images.ECHO_IMAGE), ("toolkit", images.TOOLKIT_IMAGE), ("llamacpp", images.LLAMA_CPP_IMAGE),
])
async def test_a_second_build_finds_the_image_up_to_date(docker_engine, which, image):
    """After `endpointd images build` (CI's setup runs it), nothing is rebuilt."""
    said: list[str] = []
    await images.build_all(False, said.append, only=[which])
    assert f"{image} is up to date" in said, said


def _settings_names() -> set[str]:
    """Every ENDPOINTD_* variable endpointd reads: its settings' names, and the few read directly."""
    import dataclasses

    from autoscaler.config import ENGINE_ENV_PREFIX, ServeConfig
    from autoscaler.model.settings import env_name
    from engines.presets import DEFAULT_IMAGES
    from proxy.core.config import ProxyConfig

    names = {env_name(f.name) for config in (ServeConfig, ProxyConfig) for f in dataclasses.fields(config)}
    engines = {ENGINE_ENV_PREFIX + key.upper().replace("-", "_") for key in DEFAULT_IMAGES}
    return names | engines | {"ENDPOINTD_DATA_DIR", "ENDPOINTD_ADMIN_TOKEN", "ENDPOINTD_SELF_CONTAINER"}


def _commented_settings(text: str) -> dict[str, str]:
    """The `# ENDPOINTD_X: "value"` lines a user uncomments: they must name real settings too."""
    found = re.findall(r'^\s*#\s*(ENDPOINTD_[A-Z0-9_]+):\s*"([^"]*)"', text, re.MULTILINE)
    return dict(found)


def test_the_documented_compose_file_runs_the_image_as_designed():
    import yaml

    compose = yaml.safe_load((images.PROJECT_ROOT / "docs" / "compose.yaml").read_text())
    service = compose["services"]["endpointd"]
    assert service["image"] == images.ENDPOINTD_IMAGE
    assert "/var/run/docker.sock:/var/run/docker.sock" in service["volumes"]
    assert any(volume.endswith(":/data") for volume in service["volumes"])  # the image's ENDPOINTD_DATA_DIR
    assert set(service["environment"]) <= _settings_names()
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])  # not every interface by default


def test_the_compose_files_commented_settings_are_real_and_take_effect():
    from autoscaler.config import EnginesConfig

    commented = _commented_settings((images.PROJECT_ROOT / "docs" / "compose.yaml").read_text())
    assert commented and set(commented) <= _settings_names()
    engine_pins = {name: value for name, value in commented.items() if name.startswith("ENDPOINTD_ENGINE_IMAGE_")}
    assert engine_pins  # the file shows how to pin an engine's image
    assert set(EnginesConfig.load(env=engine_pins).images.values()) == set(engine_pins.values())


def test_the_documented_systemd_unit_sets_only_real_settings():
    unit = (images.PROJECT_ROOT / "docs" / "endpointd.service").read_text()
    names = {line.split("=", 2)[1] for line in unit.splitlines() if line.startswith("Environment=")}
    assert names and names <= _settings_names()
    assert "ExecStart=/opt/endpointd/bin/endpointd serve" in unit


def test_the_images_dockerfile_serves_on_every_interface_with_the_data_on_a_volume():
    dockerfile = (images.PROJECT_ROOT / "Dockerfile").read_text()
    for needed in ("ARG BASE=python:3.11-slim", "ENDPOINTD_HOST=0.0.0.0", "ENDPOINTD_DATA_DIR=/data", "VOLUME /data",
                   'CMD ["serve"]', "wheelhouse"):
        assert needed in dockerfile, needed
