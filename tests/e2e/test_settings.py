"""Config loading: precedence, coercion, and errors that name key, value, source and range."""

import pytest

from autoscaler.cli import build_parser, main
from autoscaler.model import settings
from proxy.core.config import ProxyConfig
from proxy.static_routes import RoutesError, parse


def test_defaults_and_precedence():
    cfg = settings.load(
        ProxyConfig, "proxy",
        file_values={"port": 9000, "retry_after_s": 7, "max_held_per_endpoint": 5},
        env={"ENDPOINTD_PORT": "9001", "ENDPOINTD_RETRY_AFTER_S": "8"},
        flags={"port": "9002"},
    )
    assert cfg.port == 9002  # flag beats env beats file
    assert cfg.retry_after_s == 8
    assert cfg.max_held_per_endpoint == 5
    assert cfg.max_scale_up_timeout_s == ProxyConfig().max_scale_up_timeout_s


@pytest.mark.parametrize(
    "layer, key, value, message",
    [
        ("flags", "port", "70000", "proxy.port = '70000' (from --port) is invalid: it must be an integer between 1 and 65535"),
        ("env", "ENDPOINTD_MAX_HELD_PER_ENDPOINT", "0", "proxy.max_held_per_endpoint = '0' (from ENDPOINTD_MAX_HELD_PER_ENDPOINT)"),
        ("env", "ENDPOINTD_TOKEN_CACHE_TTL_S", "soon", "must be a number between 0.0 and 300.0"),
        ("file", "retry_after_s", 1.5, "proxy.retry_after_s = 1.5 (from the config file [proxy]) is invalid: it must be an integer"),
        ("file", "upstream_idle_timeout_s", "nan", "upstream_idle_timeout_s"),
        ("file", "port", True, "proxy.port = True"),
    ],
)
def test_invalid_values_name_key_value_source_and_range(layer, key, value, message):
    kwargs = {"flags": {}, "env": {}, "file_values": {}}
    kwargs[{"flags": "flags", "env": "env", "file": "file_values"}[layer]][key] = value
    with pytest.raises(settings.SettingsError) as info:
        settings.load(ProxyConfig, "proxy", **kwargs)
    assert message in str(info.value)


def test_unknown_file_key_lists_valid_ones():
    with pytest.raises(settings.SettingsError, match="unknown key proxy.prot .*valid keys: .*port"):
        settings.load(ProxyConfig, "proxy", file_values={"prot": 1})


@pytest.mark.parametrize("kwargs, source", [
    ({"file_values": {"http": "aiohttp"}}, "the config file"),
    ({"env": {"ENDPOINTD_HTTP": "aiohttp"}}, "ENDPOINTD_HTTP"),
])
def test_a_removed_setting_fails_at_start_saying_so(kwargs, source):
    with pytest.raises(settings.SettingsError) as info:
        settings.load(ProxyConfig, "proxy", **kwargs)
    assert str(info.value) == (
        f"proxy.http = 'aiohttp' (from {source}) is no longer a setting: the aiohttp data plane was retired; "
        "the raw server (proxy/raw/) is the only one: remove the setting"
    )


def test_every_config_field_has_a_flag():
    args = build_parser().parse_args(["proxy", "--routes", "r.toml", "--max-body-bytes", "12"])
    assert settings.flags_of(args, ProxyConfig)["max_body_bytes"] == "12"


def test_cli_reports_bad_config_without_traceback(tmp_path, capsys):
    routes = tmp_path / "routes.toml"
    routes.write_text("")
    assert main(["proxy", "--routes", str(routes), "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "endpointd: proxy.port = '0' (from --port) is invalid: it must be an integer between 1 and 65535"
    )
    assert main(["proxy", "--routes", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read the routes file" in capsys.readouterr().err


def test_static_routes():
    control = parse({
        "users": [{"name": "alice", "orgs": ["acme"], "tokens": ["t1"]}],
        "endpoints": [{"namespace": "acme", "name": "e", "type": "protected",
                       "replicas": ["127.0.0.1:1", "127.0.0.1:2"], "domain": "E.example"}],
    })
    entry = control.lookup("acme", "e")
    assert entry.auth == "authenticated"
    assert [r.address for r in entry.replicas] == ["127.0.0.1:1", "127.0.0.1:2"]
    assert control.lookup_host("e.example") is entry


@pytest.mark.parametrize(
    "data, message",
    [
        ({"endpoints": [{"namespace": "a", "name": "e", "type": "secret"}]}, "endpoints[0].type must be public"),
        ({"endpoints": [{"namespace": "a", "name": "e", "replicas": "127.0.0.1:1"}]}, "endpoints[0].replicas must be a list"),
        ({"endpoints": [{"name": "e"}]}, "endpoints[0].namespace must be a non-empty string"),
        ({"users": [{"name": "u", "tokens": [1]}]}, "users[0].tokens must be a list of strings"),
    ],
)
def test_static_routes_errors(data, message):
    with pytest.raises(RoutesError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(data)


@pytest.mark.parametrize("layer, value", [
    ("flags", ["/srv/models", "/data/hub"]),  # --model-root given twice
    ("env", "/srv/models:/data/hub"),  # ENDPOINTD_MODEL_ROOTS, ':'-separated like PATH
    ("file", ["/srv/models", "/data/hub"]),  # a TOML list
])
def test_model_roots_is_a_list_from_every_layer(layer, value):
    from autoscaler.config import ServeConfig

    kwargs = {"flags": {}, "env": {}, "file_values": {}}
    key = "ENDPOINTD_MODEL_ROOTS" if layer == "env" else "model_roots"
    kwargs[{"flags": "flags", "env": "env", "file": "file_values"}[layer]][key] = value
    assert settings.load(ServeConfig, "serve", **kwargs).model_roots == ("/srv/models", "/data/hub")


def test_a_bad_model_roots_value_names_the_key():
    from autoscaler.config import ServeConfig

    with pytest.raises(settings.SettingsError, match=r"serve.model_roots = \[1\] \(from the config file \[serve\]\) is invalid: it must be a list of non-empty strings"):
        settings.load(ServeConfig, "serve", file_values={"model_roots": [1]})


def test_the_model_root_flag_repeats():
    args = build_parser().parse_args(["serve", "--model-root", "/a", "--model-root", "/b"])
    assert args.model_roots == ["/a", "/b"]


def test_a_model_root_holding_the_data_dir_stops_serve_at_start(tmp_path):
    import subprocess
    import sys

    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", "serve", "--data-dir", str(data), "--model-root", str(tmp_path),
         "--port", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert f"serve.model_roots: {str(tmp_path)!r} is or contains the data directory" in done.stderr
    assert "Traceback" not in done.stderr


# --- [engines]: the operator's pinned engine images ------------------------------------------------


def test_engine_images_are_pinned_by_file_env_and_flag():
    from autoscaler.config import EnginesConfig

    config = EnginesConfig.load(
        file_values={"vllm": "vllm/vllm-openai:v0.8.5", "tei": "ghcr.io/huggingface/text-embeddings-inference:cpu-1.5"},
        env={"ENDPOINTD_ENGINE_IMAGE_LLAMACPP_GPU": "ghcr.io/ggml-org/llama.cpp:server-cuda-b4000",
             "ENDPOINTD_ENGINE_IMAGE_TEI": "registry.local/tei:1.6"},
        flags=["sGLang=lmsysorg/sglang:v0.4.6"],
    )
    assert config.images == {  # keys in any case become the presets' own; env beats file
        "vLLM": "vllm/vllm-openai:v0.8.5", "tei": "registry.local/tei:1.6",
        "llamacpp-gpu": "ghcr.io/ggml-org/llama.cpp:server-cuda-b4000", "sGLang": "lmsysorg/sglang:v0.4.6",
    }
    assert EnginesConfig.load().images == {}


@pytest.mark.parametrize("kwargs, message", [
    ({"file_values": {"vlm": "x:1"}}, "unknown key engines.vlm (from the config file [engines]); valid keys: vLLM, tgi"),
    ({"flags": ["nope=x:1"]}, "unknown key engines.nope (from --engine-image)"),
    ({"flags": ["vllm"]}, "--engine-image 'vllm' is invalid: it must be KEY=IMAGE"),
    ({"file_values": {"vllm": "has space:1"}}, "engines.vllm = 'has space:1' (from the config file [engines]) is invalid"),
    ({"file_values": {"vllm": 3}}, "engines.vllm = 3 (from the config file [engines]) is invalid"),
    ({"env": {"ENDPOINTD_ENGINE_IMAGE_TGI": "x" * 300}}, "(from ENDPOINTD_ENGINE_IMAGE_TGI) is invalid"),
])
def test_bad_engine_images_stop_the_start(kwargs, message):
    from autoscaler.config import EnginesConfig

    with pytest.raises(settings.SettingsError) as info:
        EnginesConfig.load(**kwargs)
    assert message in str(info.value)


def test_serve_reads_the_engines_table_and_stops_on_an_unknown_key(tmp_path, capsys):
    from autoscaler.cli import _engines

    good = tmp_path / "good.toml"
    good.write_text('[engines]\nvllm = "vllm/vllm-openai:v0.8.5"\n')
    args = build_parser().parse_args(["serve", "--config", str(good), "--engine-image", "tgi=ghcr.io/x/tgi:3.0"])
    assert _engines(args).images == {"vLLM": "vllm/vllm-openai:v0.8.5", "tgi": "ghcr.io/x/tgi:3.0"}
    bad = tmp_path / "bad.toml"
    bad.write_text('[engines]\nvllm2 = "x:1"\n')
    assert main(["serve", "--config", str(bad), "--data-dir", str(tmp_path / "data")]) == 2
    assert "endpointd: unknown key engines.vllm2" in capsys.readouterr().err


def test_a_bad_catalog_file_stops_the_start(tmp_path, capsys):
    bad = tmp_path / "recipes.toml"
    bad.write_text("[[model]]\nrepo_id = 'a/b'\n")
    assert main(["serve", "--catalog-file", str(bad), "--data-dir", str(tmp_path / "data"), "--port", "1"]) == 2
    assert f"endpointd: catalog {bad}, model a/b: task is required" in capsys.readouterr().err


def test_engine_image_variables_clash_with_no_other_option():
    import dataclasses

    from autoscaler.cli import _sections
    from autoscaler.config import ENGINE_ENV_PREFIX
    from engines.presets import DEFAULT_IMAGES

    ours = {ENGINE_ENV_PREFIX + key.upper().replace("-", "_") for key in DEFAULT_IMAGES}
    theirs = {settings.env_name(f.name) for cls, _ in _sections() for f in dataclasses.fields(cls)}
    assert len(ours) == len(DEFAULT_IMAGES) and not ours & theirs


# --- [rates]: the operator's prices, for usage's cost ------------------------------------------


def test_rates_come_from_file_env_and_flag_a_later_one_winning():
    from autoscaler.config import load_rates

    rates = load_rates(
        file_values={"intel-icl": 0.12, "nvidia-l4": 1, "nvidia-a100": 0},
        env={"ENDPOINTD_RATES": " nvidia-l4 = 0.8 ,nvidia-t4=0.5,"},
        flags=["nvidia-t4=0.45", "nvidia-h100=4.5"],
    )
    assert rates.per_hour == {"intel-icl": 0.12, "nvidia-l4": 0.8, "nvidia-a100": 0.0, "nvidia-t4": 0.45,
                              "nvidia-h100": 4.5}
    assert load_rates().per_hour == {}


@pytest.mark.parametrize("kwargs, message", [
    ({"file_values": {"nvidia-l4": -1}},
     "rates.nvidia-l4 = -1 (from the config file [rates]) is invalid: it must be a price per hour, a number between 0 and 1e+06"),
    ({"file_values": {"nvidia-l4": "cheap"}}, "rates.nvidia-l4 = 'cheap' (from the config file [rates]) is invalid"),
    ({"file_values": {"nvidia-l4": True}}, "rates.nvidia-l4 = True (from the config file [rates]) is invalid"),
    ({"file_values": {"nvidia-l4": {"x1": 1}}}, "rates.nvidia-l4 = {'x1': 1} (from the config file [rates]) is invalid"),
    ({"env": {"ENDPOINTD_RATES": "nvidia-l4=nan"}}, "rates.nvidia-l4 = 'nan' (from ENDPOINTD_RATES) is invalid"),
    ({"env": {"ENDPOINTD_RATES": "nvidia-l4"}}, "ENDPOINTD_RATES 'nvidia-l4' is invalid: it must be TYPE=PRICE"),
    ({"flags": ["nvidia-l4=2e6"]}, "rates.nvidia-l4 = '2e6' (from --rate) is invalid"),
    ({"flags": ["bad type=1"]}, "rates.bad type (from --rate) is not an instance type"),
    ({"flags": ["=1"]}, "rates. (from --rate) is not an instance type"),
])
def test_a_bad_rate_stops_the_start_naming_key_value_and_range(kwargs, message):
    from autoscaler.config import load_rates

    with pytest.raises(settings.SettingsError) as info:
        load_rates(**kwargs)
    assert message in str(info.value)


def test_serve_reads_the_rates_table_and_the_usage_interval(tmp_path, capsys):
    from autoscaler.cli import _load, _rates

    good = tmp_path / "good.toml"
    good.write_text('[rates]\nintel-icl = 0.12\n"nvidia-l4" = 0.8\n[usage]\nusage_interval_s = 30\n')
    args = build_parser().parse_args(["serve", "--config", str(good), "--rate", "nvidia-t4=0.5", "--usage-keep-days", "90"])
    assert _rates(args).per_hour == {"intel-icl": 0.12, "nvidia-l4": 0.8, "nvidia-t4": 0.5}
    usage = _load(args)[-1]
    assert (usage.usage_interval_s, usage.usage_keep_days) == (30.0, 90.0)
    bad = tmp_path / "bad.toml"
    bad.write_text("[usage]\nusage_interval_s = 0.5\n")
    assert main(["serve", "--config", str(bad), "--data-dir", str(tmp_path / "data")]) == 2
    assert ("endpointd: usage.usage_interval_s = 0.5 (from the config file [usage]) is invalid: it must be a number "
            "between 1.0 and 3600.0") in capsys.readouterr().err
    bad.write_text("[rates]\nnvidia-l4 = -0.1\n")
    assert main(["serve", "--config", str(bad), "--data-dir", str(tmp_path / "data")]) == 2
    assert "endpointd: rates.nvidia-l4 = -0.1 (from the config file [rates]) is invalid" in capsys.readouterr().err


def test_the_rates_variable_clashes_with_no_option():
    import dataclasses

    from autoscaler.cli import _sections
    from autoscaler.config import RATES_ENV

    assert RATES_ENV not in {settings.env_name(f.name) for cls, _ in _sections() for f in dataclasses.fields(cls)}


def test_the_readmes_rates_example_loads():
    import re
    import tomllib
    from pathlib import Path

    from autoscaler.config import load_rates

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Usage and cost", 1)[1]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None, "the README's Usage and cost section has no [rates] example"
    assert load_rates(file_values=tomllib.loads(example[1])["rates"]).per_hour == {"intel-icl": 0.12, "nvidia-l4": 0.8}
