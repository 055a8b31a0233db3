"""`endpointd quotas set|show|list|unset`: its flags as argparse reads them (bounded, with units,
`none` to lift a limit), and each command against the management API in process (real HTTP, a
real store; the CLI's blocking client runs in a thread beside the server's loop)."""

from __future__ import annotations

import asyncio

import pytest

from autoscaler import quota_cli
from autoscaler.cli import build_parser
from autoscaler.client import Client, ClientError
from tests.api_harness import ApiWorld


@pytest.mark.parametrize("argv, given", [
    (["--gpus", "2", "--cpus", "8", "--memory", "32GiB", "--replicas", "6", "--endpoints", "10"],
     {"gpus": 2, "cpus": 8.0, "memory": 32 << 30, "replicas": 6, "endpoints": 10}),
    (["--cpus", "0.5"], {"cpus": 0.5}),
    (["--memory", "1073741824", "--gpus", "none"], {"memory": 1 << 30, "gpus": None}),
    (["--memory", "512 MiB", "--endpoints", "unlimited"], {"memory": 512 << 20, "endpoints": None}),
    ([], {}),
])
def test_the_flags_give_only_the_limits_named(argv, given):
    args = build_parser().parse_args(["quotas", "set", "acme", *argv])
    assert {key: getattr(args, key) for key in quota_cli.FLAGS if hasattr(args, key)} == given


@pytest.mark.parametrize("argv, error", [
    (["--gpus", "-1"], "argument --gpus: quota gpus must be from 0 to 1024; got -1"),
    (["--gpus", "1.5"], "argument --gpus: quota gpus must be a whole number; got 1.5"),
    (["--cpus", "lots"], "argument --cpus: 'lots' is not a number (or none, for unlimited)"),
    (["--cpus", "1e9"], "argument --cpus: quota cpus must be from 0 to 65536; got 1e+09"),
    (["--memory", "32GB"], "argument --memory: quota memory '32GB' is not a size"),
    (["--memory", "2048TiB"], "argument --memory: quota memory must be from 0 to 1024 TiB"),
    (["--replicas", "100001"], "argument --replicas: quota replicas must be from 0 to 100000; got 100001"),
])
def test_a_bad_flag_is_refused_before_anything_is_sent(argv, error, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["quotas", "set", "acme", *argv])
    assert done.value.code == 2 and error in capsys.readouterr().err


@pytest.fixture
async def api(tmp_path):
    w = await ApiWorld().start(tmp_path)
    w.world.launcher.cpus_per_replica = 1
    yield w
    await w.close()


async def run(api, *argv: str, who: str = "admin") -> list[str]:
    args = build_parser().parse_args(["quotas", *argv])
    client = Client(str(api.client.make_url("")), api.tokens[who])
    command = {"set": quota_cli.set_quota, "show": quota_cli.show, "list": quota_cli.listing,
               "unset": quota_cli.unset}[args.quotas_command]
    return await asyncio.to_thread(command, client, args)


async def test_set_keeps_the_limits_it_is_not_given_and_show_list_unset_say_what_is(api):
    assert await run(api, "list") == ["no namespace has a quota"]
    await run(api, "set", "acme", "--cpus", "2", "--memory", "32GiB", "--endpoints", "10")
    assert (await api.client.post("/v2/endpoint/acme", json=api.body(), headers=api.auth("alice"))).status == 200
    await api.world.settle()
    assert await run(api, "set", "acme", "--gpus", "1", "--endpoints", "none") == [
        "namespace acme",
        "  limit             quota       in use",
        "  gpus                  1            0",
        "  cpus                  2            1",
        "  memory           32 GiB          0 B",
        "  replicas      unlimited            1",
        "  endpoints     unlimited            1",
    ]
    assert (await run(api, "show", "acme", who="alice"))[3] == "  cpus                  2            1"  # a member reads it
    assert await run(api, "list") == [
        "NAMESPACE                       GPUS            CPUS          MEMORY        REPLICAS       ENDPOINTS"
        "   (in use / quota)",
        "acme                             0/1             1/2      0 B/32 GiB             1/-             1/-",
    ]
    assert await run(api, "unset", "acme") == ["namespace acme has no quota now: nothing bounds it but the host"]
    with pytest.raises(ClientError, match="DELETE /v2/quotas/acme: 404 namespace acme has no quota"):
        await run(api, "unset", "acme")


async def test_set_without_a_limit_and_a_member_setting_are_refused_with_a_sentence(api):
    with pytest.raises(ClientError, match="give at least one limit: --gpus, --cpus, --memory, --replicas, --endpoints"):
        await run(api, "set", "acme")
    with pytest.raises(ClientError, match="PUT /v2/quotas/acme: 403 only an admin may set the quota of namespace acme"):
        await run(api, "set", "acme", "--gpus", "1", who="alice")
