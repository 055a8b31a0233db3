"""compute.scaling.sleepAfter in the presets: the flags that let vLLM, SGLang and llama.cpp sleep,
and the refusals (an engine that cannot, a value out of range, a command that drops the flags)."""

from __future__ import annotations

import pytest

from engines.presets import PresetError, build_container_spec
from engines.sleep import sleep_kind
from engines.spec_rules import VARIANTS
from tests.unit.test_presets import CPU2, GPU1, MODEL, SGLANG_BASE, VLLM_BASE

KEY = "k3y"
GGUF = {"llamacpp": {"modelPath": "model.gguf"}}


def spec(image, resources=CPU2, **kw):
    kw.setdefault("model_dir", MODEL)
    return build_container_spec(image, served_model_name="e1", resources=resources, **kw)


@pytest.mark.parametrize("image, resources, args", [
    ({"vLLM": {}}, CPU2, (*VLLM_BASE, "--enable-sleep-mode")),
    ({"vLLM": {"maxNumSeqs": 8}}, GPU1, (*VLLM_BASE, "--tensor-parallel-size", "1", "--max-num-seqs", "8",
                                          "--enable-sleep-mode")),
    ({"sGLang": {}}, GPU1, (*SGLANG_BASE, "--tp", "1", "--enable-memory-saver", "--api-key", KEY)),  # the key last
    (GGUF, CPU2, ("--sleep-idle-seconds", "300")),  # after the image's own entrypoint, llama-server
    (GGUF, GPU1, ("--sleep-idle-seconds", "300")),
])
def test_each_engine_that_can_sleep_gets_its_flags(image, resources, args):
    got = spec(image, resources, api_key=KEY, sleep_after_s=300)
    assert got.args == args
    without = spec(image, resources, api_key=KEY)
    assert got.entrypoint == without.entrypoint and got.secret_env == without.secret_env
    assert {**got.env} == {**without.env, **({"VLLM_SERVER_DEV_MODE": "1"} if "vLLM" in image else {})}


def test_user_args_still_follow_the_presets_and_the_sleep_flags():
    got = spec({"vLLM": {}}, args=["--max-model-len", "4096"], sleep_after_s=60)
    assert got.args == (*VLLM_BASE, "--enable-sleep-mode", "--max-model-len", "4096")
    got = spec(GGUF, args=["--flash-attn", "on"], sleep_after_s=60)
    assert got.args == ("--sleep-idle-seconds", "60", "--flash-attn", "on")


@pytest.mark.parametrize("value", [1, 86400])
def test_the_bounds_are_accepted(value):
    assert spec(GGUF, sleep_after_s=value).args == ("--sleep-idle-seconds", str(value))


@pytest.mark.parametrize("value", [0, -1, 86401, True, 1.5, "60"])
def test_a_value_out_of_range_is_refused(value):
    with pytest.raises(PresetError) as raised:
        spec({"vLLM": {}}, sleep_after_s=value)
    assert str(raised.value) == (
        f"compute.scaling.sleepAfter must be a whole number of seconds from 1 to 86400, got {value!r}")


@pytest.mark.parametrize("image", [
    {"tgi": {}}, {"tei": {}}, {"huggingface": {}}, {"hfServe": {}},
    {"custom": {"url": "endpointd/echo:latest"}},  # the echo engine too: a custom image is the user's own
    {"custom": {"url": "ghcr.io/acme/server:1"}},
])
def test_an_engine_that_cannot_sleep_is_refused(image):
    (variant,) = image
    with pytest.raises(PresetError) as raised:
        spec(image, sleep_after_s=60)
    assert str(raised.value) == (
        f"compute.scaling.sleepAfter is set, but the {variant} engine (model.image.{variant}) cannot sleep: "
        f"only vLLM, sGLang and llamacpp can; remove compute.scaling.sleepAfter (or scale to zero instead)")


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_presets_refuse_exactly_the_engines_sleep_py_cannot_drive(variant):
    image = GGUF if variant == "llamacpp" else {variant: {"url": "img:1"} if variant == "custom" else {}}
    try:
        spec(image, sleep_after_s=60)
        refused = False
    except PresetError:
        refused = True
    assert refused is (sleep_kind(image) is None)


@pytest.mark.parametrize("image", [{"vLLM": {}}, {"sGLang": {}}, GGUF])
def test_a_command_that_replaces_the_presets_arguments_is_refused(image):
    with pytest.raises(PresetError, match=r"^compute.scaling.sleepAfter needs the \w+ preset's own arguments"):
        spec(image, command=["serve"], sleep_after_s=60)
    assert spec(image, command=["serve"]).entrypoint == ("serve",)  # without sleepAfter, as before


@pytest.mark.parametrize("arg", ["--sleep-idle-seconds", "--sleep-idle-seconds=5"])
def test_llamacpp_args_that_set_the_idle_time_themselves_are_refused(arg):
    with pytest.raises(PresetError, match="model.args sets --sleep-idle-seconds, which endpointd sets"):
        spec(GGUF, args=[arg, "5"], sleep_after_s=60)
    assert spec(GGUF, args=[arg, "5"]).args == (arg, "5")  # without sleepAfter, the user's own


@pytest.mark.parametrize("where", ["env", "secrets"])
def test_vllm_dev_mode_is_endpointds_to_set_when_it_sleeps(where):
    with pytest.raises(PresetError) as raised:
        spec({"vLLM": {}}, sleep_after_s=60, **{where: {"VLLM_SERVER_DEV_MODE": "0"}})
    assert str(raised.value) == (
        f"model.{where} sets VLLM_SERVER_DEV_MODE, which endpointd sets to 1 when compute.scaling.sleepAfter "
        f"is set (the engine serves its sleep routes only then); remove it")
    assert spec({"vLLM": {}}, env={"VLLM_SERVER_DEV_MODE": "1"}).env["VLLM_SERVER_DEV_MODE"] == "1"  # else the user's
