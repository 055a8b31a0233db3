"""The dashboard's own modules, run in Chromium without endpointd or Docker: the SSE reader (events
split across chunks, CRLF, multi-line data, comments), the mapping of an API error sentence to
its form field, and the "copy as curl / Python" snippets, which must be a shell command whose body
is the request's JSON and Python that compiles, with no secret value in either."""

from __future__ import annotations

import ast
import functools
import http.server
import json
import shlex
import threading
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from autoscaler.api.dashboard import CSP, STATIC
from engines.progress import PullProgress, download_message
from tests.browser.test_e2e_dashboard import CHROMIUM, CHROMIUM_ARGS


class _Files(http.server.SimpleHTTPRequestHandler):
    """The dashboard's folder, plus `/blank`: an empty page of the same origin to import modules into;
    every answer under the dashboard's own Content-Security-Policy."""

    def end_headers(self):
        self.send_header("Content-Security-Policy", CSP)
        super().end_headers()

    def do_GET(self):
        if self.path != "/blank":
            return super().do_GET()
        body = b"<!doctype html><title>modules</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def page():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (tests/run's setup installs it)")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(STATIC)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.csp = []
            page.on("console", lambda m: page.csp.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/blank")
            yield page
            browser.close()
            assert errors == []
            assert page.csp == []
    finally:
        server.shutdown()
        thread.join()


SSE_CASES = [
    (["data: one\n\n"], ["one"]),
    (["da", "ta: split", " across\n", "\ndata: two\n\n"], ["split across", "two"]),
    (["data: a\r\ndata: b\r\n\r\n"], ["a\nb"]),
    ([": keep-alive\n\n", "event: x\nid: 3\ndata:{\"k\":1}\n\n"], ['{"k":1}']),
    (["data: cut off before its blank line\n"], []),  # not dispatched: the SSE specification's rule
    (["data: cut off mid-line"], []),
    (["data: [DONE]\n\n"], ["[DONE]"]),
    (["data: a\r", "\ndata: b\r", "\n\r", "\n"], ["a\nb"]),  # CRLF split between chunks: one event
    (["data: x\r\rdata: y\n\n"], ["x", "y"]),  # lone CRs end lines too
]


@pytest.mark.parametrize("chunks, events", SSE_CASES)
def test_sse_reader(page, chunks, events):
    got = page.evaluate("""async (chunks) => {
        const { readEvents } = await import('/sse.js');
        const enc = new TextEncoder();
        const body = new ReadableStream({ start(c) { for (const x of chunks) c.enqueue(enc.encode(x)); c.close(); } });
        const seen = [];
        await readEvents(new Response(body), (d) => seen.push(d));
        return seen; }""", chunks)
    assert got == events


def test_sse_reader_refuses_an_endless_line(page):
    message = page.evaluate("""async () => {
        const { readEvents, MAX_EVENT_CHARS } = await import('/sse.js');
        const chunk = new TextEncoder().encode('x'.repeat(65536));
        let sent = 0;
        const body = new ReadableStream({ pull(c) { sent += chunk.length; c.enqueue(chunk);
            if (sent > 4 * MAX_EVENT_CHARS) c.close(); } });
        try { await readEvents(new Response(new Blob(['data: ']).stream()), () => {});
              await readEvents(new Response(body), () => {}); return 'read it all: ' + sent; }
        catch (e) { return e.message + ' after ' + sent; } }""")
    assert message.startswith("the event stream sent a line longer than 1048576 characters after ")
    assert int(message.rsplit(" ", 1)[1]) <= 1048576 + 3 * 65536


ERROR_CASES = [
    ("compute.scaling.maxReplica must be at most 32 on this host; got 999", "compute.scaling.maxReplica"),
    ("compute.scaling.measure.pendingRequests must be a number greater than 0; got -1", "compute.scaling.measure"),
    ("model.image.custom.url must be the image to run; got nothing", "model.image.custom.url"),
    ("model.image.vLLM.tensorParallelSize = 4 GPUs, but the instance has 1", "model.image"),
    ("route.domain localhost is one of this server's own names", "route.domain"),
    ("name must be 1 to 32 lowercase letters; got \"A\"", "name"),
    ("model.env and model.secrets both set X; keep each name in one of them", "model.env"),
    ("the request body is not valid JSON", None),
    ("namespaces differ: nothing matches", None),
]


@pytest.mark.parametrize("message, slot", ERROR_CASES)
def test_an_api_error_lands_at_the_field_it_names(page, message, slot):
    where = page.evaluate("""async (message) => {
        const { showError } = await import('/fields.js');
        const form = document.createElement('form');
        for (const f of ['name', 'namespace', 'compute.scaling.maxReplica', 'compute.scaling.measure', 'model.image',
                         'model.image.custom.url', 'route.domain', 'model.env']) {
            const p = document.createElement('p'); p.className = 'field-error'; p.dataset.field = f; form.append(p);
        }
        const fallback = document.createElement('p'); fallback.className = 'field-error'; form.append(fallback);
        document.body.append(form);
        const target = showError(form, message, fallback);
        const result = { field: target.dataset.field || null, text: target.textContent,
                         others: [...form.querySelectorAll('.field-error')].filter((p) => p !== target && p.textContent).length };
        form.remove();
        return result; }""", message)
    assert where == {"field": slot, "text": message, "others": 0}


BODY = {
    "name": "it's-a-test", "type": "private", "provider": {"vendor": "local", "region": "local"},
    "compute": {"accelerator": "cpu", "instanceType": "intel-icl", "instanceSize": "x1",
                "scaling": {"minReplica": 0, "maxReplica": 2, "scaleToZeroTimeout": 5, "measure": {"pendingRequests": 1.5}}},
    "model": {"repository": "/models/o'brien", "framework": "custom", "image": {"custom": {"url": "endpointd/echo:latest",
              "healthRoute": "/health", "credentials": {"username": "u", "password": "registry-pass-123"}}},
              "env": {"A": "x'y\"z"}, "secrets": {"HF_TOKEN": "hf_secret_value_42"}},
    "tags": ["<b>", "quote'd"], "route": {"domain": "e1.example.com"},
}


def test_copy_as_curl_is_the_request_without_secrets(page):
    text = page.evaluate("""async (body) => {
        const { curl, withoutSecrets } = await import('/snippets.js');
        return curl('POST', '/v2/endpoint/alice', withoutSecrets(body)); }""", BODY)
    words = shlex.split(text.replace("\\\n", " "))
    assert words[:3] == ["curl", "-X", "POST"] and words[3].endswith("/v2/endpoint/alice")
    assert "Authorization: Bearer $HF_TOKEN" in words
    sent = json.loads(words[words.index("-d") + 1])
    expected = json.loads(json.dumps(BODY))
    expected["model"]["secrets"] = {"HF_TOKEN": "<HF_TOKEN>"}
    expected["model"]["image"]["custom"]["credentials"]["password"] = "<registry password>"
    assert sent == expected
    assert "hf_secret_value_42" not in text and "registry-pass-123" not in text


def test_copy_as_python_compiles_and_calls_the_client(page):
    text = page.evaluate("""async (body) => {
        const { pythonCreate } = await import('/snippets.js');
        return pythonCreate('alice', body); }""", BODY)
    tree = ast.parse(text)
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "create_inference_endpoint"]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert ast.literal_eval(call.args[0]) == "it's-a-test"
    assert kwargs["namespace"] == "alice" and kwargs["repository"] == "/models/o'brien"
    assert kwargs["min_replica"] == 0 and kwargs["max_replica"] == 2 and kwargs["scale_to_zero_timeout"] == 5
    assert kwargs["scaling_metric"] == "pendingRequests" and kwargs["scaling_threshold"] == 1.5
    assert kwargs["custom_image"]["custom"]["url"] == "endpointd/echo:latest"
    assert kwargs["env"] == {"A": "x'y\"z"} and kwargs["secrets"] == {"HF_TOKEN": "<HF_TOKEN>"}
    assert kwargs["tags"] == ["<b>", "quote'd"] and kwargs["domain"] == "e1.example.com"
    assert "hf_secret_value_42" not in text


@pytest.mark.parametrize("kind, route", [("chat", "/v1/chat/completions"), ("generate", "/generate_stream"),
                                         ("embeddings", "/v1/embeddings"), ("toolkitEmbeddings", "/"),
                                         ("toolkitGenerate", "/"), ("toolkit", "/")])
def test_playground_python_compiles(page, kind, route):
    payloads = {"chat": {"model": "b", "messages": [{"role": "user", "content": "it's \"quoted\""}], "max_tokens": 8, "stream": True},
                "generate": {"inputs": "it's", "parameters": {"max_new_tokens": 8}},
                "embeddings": {"input": "it's", "model": "b"},
                "toolkitEmbeddings": {"inputs": "it's"}, "toolkitGenerate": {"inputs": "it's", "parameters": {"max_new_tokens": 8}},
                "toolkit": {"inputs": "it's"}}
    text = page.evaluate("""async ([kind, payload, route]) => {
        const { pythonInference } = await import('/snippets.js');
        return pythonInference(kind, 'http://127.0.0.1:8080/endpoints/a/b', payload, route); }""", [kind, payloads[kind], route])
    tree = ast.parse(text)
    called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert {"chat": "chat_completion", "generate": "text_generation"}.get(kind, "post") in called
    assert "X-Scale-Up-Timeout" in text
    if "post" in called:  # the same route the Playground calls
        urls = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and str(n.value).startswith("http")]
        assert urls == ["http://127.0.0.1:8080/endpoints/a/b" + ("" if route == "/" else route)]


# The routes each engine really serves (engines/echo/server.py, engines/toolkit/server.py, the
# engines' own docs): the toolkit serves `POST /` only, never /generate_stream nor /v1/embeddings.
MODE_CASES = [
    ({"vLLM": {}}, None, ["chat"], ["/v1/chat/completions"]),
    ({"sGLang": {}}, None, ["chat"], ["/v1/chat/completions"]),
    ({"llamacpp": {"modelPath": "m.gguf"}}, None, ["chat"], ["/v1/chat/completions"]),
    ({"llamacpp": {"modelPath": "m.gguf", "mode": "embedding"}}, None, ["embeddings"], ["/v1/embeddings"]),
    ({"tgi": {}}, "text-generation", ["chat", "generate"], ["/v1/chat/completions", "/generate_stream"]),
    ({"tei": {}}, "sentence-embeddings", ["embeddings"], ["/v1/embeddings"]),
    ({"huggingface": {}}, "text-generation", ["toolkitGenerate"], ["/"]),
    ({"huggingface": {}}, "feature-extraction", ["toolkitEmbeddings"], ["/"]),
    ({"hfServe": {}}, "sentence-embeddings", ["toolkitEmbeddings"], ["/"]),
    ({"huggingface": {}}, "text-classification", ["toolkit"], ["/"]),
    ({"custom": {"url": "endpointd/echo:latest"}}, "text-generation", ["chat", "generate", "embeddings"],
     ["/v1/chat/completions", "/generate_stream", "/v1/embeddings"]),
]


@pytest.mark.parametrize("image, task, modes, routes", MODE_CASES)
def test_the_playground_calls_the_routes_each_engine_serves(page, image, task, modes, routes):
    got = page.evaluate("""async (endpoint) => {
        const { MODES, modesFor } = await import('/calls.js');
        const modes = modesFor(endpoint);
        return { modes, routes: modes.map((m) => MODES[m].route), bodies: modes.map((m) => MODES[m].body('hi', 'e1')) };
    }""", {"model": {"image": image, "task": task}})
    assert (got["modes"], got["routes"]) == (modes, routes)
    for mode, body in zip(modes, got["bodies"], strict=True):
        if mode.startswith("toolkit"):
            assert body["inputs"] == "hi" and set(body) <= {"inputs", "parameters"}  # what the toolkit takes


@pytest.mark.parametrize("mode, answer, shown", [
    ("toolkitEmbeddings", {"embeddings": [0.5, 0.25]}, "2 dimensions: [0.5000, 0.2500]"),  # sentence-embeddings
    ("toolkitEmbeddings", [0.5, 0.25, 1], "3 dimensions: [0.5000, 0.2500, 1.0000]"),  # feature-extraction
    ("toolkitEmbeddings", [[0.5, 0.25]], "2 dimensions: [0.5000, 0.2500]"),
    ("toolkitGenerate", [{"generated_text": "Hello world"}], "Hello world"),
    ("embeddings", {"data": [{"embedding": [1, 2]}]}, "2 dimensions: [1.0000, 2.0000]"),
    ("toolkit", [{"label": "POSITIVE", "score": 0.9}], '[\n  {\n    "label": "POSITIVE",\n    "score": 0.9\n  }\n]'),
])
def test_the_playground_shows_each_answer(page, mode, answer, shown):
    got = page.evaluate("""async ([mode, answer]) => {
        const { answerText } = await import('/calls.js');
        return answerText(mode, answer); }""", [mode, answer])
    assert got == shown


PROGRESS_CASES = [
    ("initializing", "fetching model artifacts of org/model", "Downloading the model"),
    ("initializing", "pulling image vllm/vllm-openai:v0.9.1", "Pulling the image"),
    ("initializing", "pulling image vllm/vllm-openai:v0.9.1: 2 of 9 layers done, 1.2 GiB of 3.1 GiB downloaded (41 %)",
     "Pulling the image"),
    ("initializing", "fetching model artifacts of org/model: 10.0 MiB of 24.0 MiB (41 %)", "Downloading the model"),
    ("initializing", "starting replica ab12cd", "Initializing"),
    ("initializing", "waiting for replica ab12cd to answer /health", "Waiting for the engine to answer its health route"),
    ("pending", "waiting for 1 GPU: 0 of 0 free", "Waiting for a place to run"),
    ("updating", "rolling to revision 3", "Updating"),
    ("running", "1/1 replicas ready", None),
    ("scaledToZero", "", None),
]


@pytest.mark.parametrize("state, message, what", PROGRESS_CASES)
def test_long_waits_say_what_they_wait_for(page, state, message, what):
    got = page.evaluate("""async ([state, message]) => {
        const { progressOf } = await import('/format.js');
        const p = progressOf({ state, message });
        return p && p.what; }""", [state, message])
    assert got == what


def test_the_progress_bar_fills_as_a_download_and_a_pull_go(page):
    """The sentences the status says (engines/progress.py), in order: the bar's value follows them."""
    pulled = PullProgress("vllm/vllm-openai:v0.9.1")
    for item in ({"status": "Pulling fs layer", "id": "a"}, {"status": "Pulling fs layer", "id": "b"},
                 {"status": "Downloading", "id": "a", "progressDetail": {"current": 5, "total": 10}}):
        pulled.feed(item)
    messages = [download_message("org/m", 0, None), download_message("org/m", 10 << 20, 24 << 20),
                download_message("org/m", 24 << 20, 24 << 20), pulled.message()]
    bars = page.evaluate("""async (messages) => {
        const { progressBlock } = await import('/format.js');
        return messages.map((message) => {
          const bar = progressBlock({ state: "initializing", message }).querySelector("progress");
          return bar.hasAttribute("value") ? bar.value : null; }); }""", messages)
    assert bars == [None, 41, 100, 12]  # no number yet: an indeterminate bar, never a made-up one


def test_the_csp_refuses_inline_code_and_the_tests_see_it(page):
    """What the browser tests listen for is what Chromium reports: an inline style and an inline
    script are refused, and each refusal is logged."""
    refused = lambda m: "Content Security Policy" in m.text  # noqa: E731
    with page.expect_console_message(refused) as style:
        page.evaluate("() => document.body.setAttribute('style', 'color: rgb(255, 0, 0)')")
    with page.expect_console_message(refused) as script:
        page.evaluate("""() => { const s = document.createElement('script');
            s.textContent = 'window.__ran = true'; document.body.append(s); }""")
    assert "style" in style.value.text and "script" in script.value.text
    assert page.evaluate("window.__ran") is None
    assert page.evaluate("getComputedStyle(document.body).color") != "rgb(255, 0, 0)"
    page.csp.clear()  # refusals this test caused on purpose


PROVIDER = {"vendors": [{"name": "local", "regions": [{"name": "local", "computes": [
    {"id": "local-intel-icl-x1", "accelerator": "cpu", "instanceType": "intel-icl", "instanceSize": "x1",
     "architecture": "Intel/AMD CPU", "numAccelerators": 1, "numCpus": 1, "memoryGb": 2, "pricePerHour": 0,
     "status": "available", "quota": {"maxAccelerators": 2, "usedAccelerators": 0}},
    {"id": "local-nvidia-l4-x2", "accelerator": "gpu", "instanceType": "nvidia-l4", "instanceSize": "x2",
     "architecture": "NVIDIA L4", "numAccelerators": 2, "numCpus": 2, "memoryGb": 4, "gpuMemoryGb": 24, "pricePerHour": 0,
     "status": "not_available", "quota": {"maxAccelerators": 2, "usedAccelerators": 1}},
    {"id": "local-nvidia-l4-x1", "accelerator": "gpu", "instanceType": "nvidia-l4", "instanceSize": "x1",
     "architecture": "NVIDIA L4", "numAccelerators": 1, "numCpus": 1, "memoryGb": 2, "gpuMemoryGb": 24, "pricePerHour": 0,
     "status": "available", "quota": {"maxAccelerators": 2, "usedAccelerators": 1}},
]}]}]}


def test_hardware_that_cannot_fit_is_greyed_out_with_the_reason(page):
    rows = page.evaluate("""async (provider) => {
        const { hardwareSection } = await import('/fields.js');
        const section = hardwareSection(provider);
        document.body.append(section.el);
        const rows = [...section.el.querySelectorAll('label.choice')].map((l) => ({
            id: l.querySelector('input').value, disabled: l.querySelector('input').disabled,
            checked: l.querySelector('input').checked, reason: l.querySelector('.reason')?.textContent || null }));
        const picked = section.value();
        section.el.remove();
        return { rows, picked: [picked.vendor, picked.region, picked.instanceType, picked.instanceSize] }; }""", PROVIDER)
    assert rows["rows"] == [
        {"id": "local-intel-icl-x1", "disabled": False, "checked": True, "reason": None},
        {"id": "local-nvidia-l4-x2", "disabled": True, "checked": False,
         "reason": "not available now (not_available): 1 of 2 in use"},
        {"id": "local-nvidia-l4-x1", "disabled": False, "checked": False, "reason": None},
    ]
    assert rows["picked"] == ["local", "local", "intel-icl", "x1"]


def _endpoint(name, state, tags, updated, ready=1, target=1):
    return {"name": name, "namespace": "alice", "type": "private", "tags": tags,
            "model": {"repository": f"org/{name}", "image": {"tgi": {}}},
            "compute": {"accelerator": "cpu", "instanceType": "intel-icl", "instanceSize": "x1"},
            "status": {"state": state, "message": f"{name} is {state}", "updatedAt": updated,
                       "readyReplica": ready, "targetReplica": target}}


LISTING = {"items": [
    _endpoint("bravo", "running", ["prod"], "2026-12-01T10:00:00.000Z"),
    _endpoint("alpha", "scaledToZero", ["dev", "<i>x</i>"], "2026-12-01T12:00:00.000Z", ready=0, target=0),
    _endpoint("charlie", "failed", ["prod"], "2026-12-01T11:00:00.000Z", ready=0),
]}


def test_the_endpoints_table_filters_and_sorts(page):
    """The list page against a canned answer of the API (Playwright answers the fetch): filters by
    name, state and tag, sorts by any column both ways, shows the status message on hover."""
    page.route("**/v2/endpoint/alice", lambda route: route.fulfill(json=LISTING))
    page.evaluate("""async () => {
        const { render } = await import('/pages/endpoints.js');
        const root = document.createElement('main'); root.id = 'list'; document.body.append(root);
        window.__stopList = render(root, { namespace: 'alice', seen: new Set(), refreshPicker() {} }); }""")
    rows = lambda: page.locator("#list tbody tr").evaluate_all("rows => rows.map((r) => r.dataset.name)")  # noqa: E731
    page.wait_for_function("() => document.querySelectorAll('#list tbody tr[data-name]').length === 3")
    assert rows() == ["alpha", "bravo", "charlie"]
    assert page.locator('#list tr[data-name="charlie"] .badge').get_attribute("title") == "charlie is failed"
    assert page.locator('#list tr[data-name="alpha"] .tag').all_text_contents() == ["dev", "<i>x</i>"]

    page.locator("#list th button", has_text="Name").click()
    assert rows() == ["charlie", "bravo", "alpha"]
    page.locator("#list th button", has_text="Last update").click()
    assert rows() == ["bravo", "charlie", "alpha"]
    assert page.locator("#list th", has_text="Last update").get_attribute("aria-sort") == "ascending"

    page.locator("#list select").nth(1).select_option("prod")
    assert rows() == ["bravo", "charlie"]
    page.locator("#list select").nth(0).select_option("failed")
    assert rows() == ["charlie"]
    page.locator("#list input[type=search]").fill("zzz")
    assert page.locator("#list tbody").inner_text() == "No endpoint matches the filters."
    page.evaluate("() => { window.__stopList(); document.getElementById('list').remove(); }")
    page.unroute("**/v2/endpoint/alice")


USAGE = {
    "namespace": "*", "from": "2026-01-01T00:00:00.000Z", "to": "2026-01-02T00:00:00.000Z", "step": 86400, "buckets": 1,
    "endpoints": [
        {"namespace": "acme", "name": "chat", "buckets": [], "total": {
            "replicaSeconds": 5400, "requests": 12345, "bytesIn": 2048, "bytesOut": 3 * 1024 * 1024,
            "tokensIn": 900, "tokensOut": 450, "cost": 1.2,
            "replicas": [{"accelerator": "gpu", "instanceType": "nvidia-l4", "instanceSize": "x1", "replicaSeconds": 3600,
                          "ratePerHour": 0.8, "cost": 0.8},
                         {"accelerator": "gpu", "instanceType": "nvidia-t4", "instanceSize": "x2", "replicaSeconds": 1800,
                          "ratePerHour": None, "cost": 0}]}},
        {"namespace": "bob", "name": "<b>mine</b>", "buckets": [], "total": {
            "replicaSeconds": 36, "requests": 0, "bytesIn": 0, "bytesOut": 0, "tokensIn": None, "tokensOut": None,
            "cost": 0, "replicas": []}},
    ],
    "total": {"replicaSeconds": 5436, "requests": 12345, "bytesIn": 2048, "bytesOut": 3 * 1024 * 1024,
              "tokensIn": 900, "tokensOut": 450, "cost": 1.2, "replicas": []},
    "unpriced": ["nvidia-t4"],
}


def test_the_usage_rows_say_hours_hardware_tokens_and_cost(page):
    rows = page.evaluate("""async (answer) => {
        const { rows } = await import('/pages/usage.js');
        return rows(answer, true); }""", USAGE)
    assert rows == [
        ["acme/chat", "1.500", "nvidia-l4 x1: 1.000 h, nvidia-t4 x2: 0.500 h (unpriced)", "12,345", "900", "450",
         "2.0 KiB / 3.0 MiB", "1.2000"],
        ["bob/<b>mine</b>", "0.010", "–", "0", "–", "–", "0 B / 0 B", "0.0000"],  # no engine tokens: a dash, not 0
        ["Total", "1.510", "–", "12,345", "900", "450", "2.0 KiB / 3.0 MiB", "1.2000"],
    ]


def test_the_usage_page_asks_for_the_chosen_period_and_shows_each_endpoint(page):
    """The page against a canned answer (Playwright answers the fetch): a row per endpoint, the total
    in the footer, names shown as text, the unpriced types named, and a period's button asks for it."""
    asked = []

    def answer(route):
        asked.append(route.request.url)
        route.fulfill(json=USAGE)

    page.route("**/v2/usage/*?*", answer)
    page.evaluate("""async () => {
        const { render } = await import('/pages/usage.js');
        const root = document.createElement('main'); root.id = 'usage'; document.body.append(root);
        window.__stopUsage = render(root, { namespace: '*' }); }""")
    page.wait_for_function("() => document.querySelectorAll('#usage tbody tr[data-name]').length === 2")
    assert page.locator("#usage h1").inner_text() == "Usage of every namespace"
    assert page.locator('#usage tbody tr[data-name="<b>mine</b>"] th').inner_text() == "bob/<b>mine</b>"
    assert page.locator("#usage tbody b").count() == 0  # a name is text, never markup
    assert page.locator("#usage tfoot th").inner_text() == "Total"
    assert "nvidia-t4" in page.locator("#usage section > p.muted").last.inner_text()
    page.locator("#usage button", has_text="Last 7 days").click()
    page.wait_for_function("() => document.querySelector('#usage [role=status]').textContent.startsWith('Last 7 days:')")
    assert len(asked) >= 2
    first, last = (dict(p.split("=") for p in url.split("?", 1)[1].split("&")) for url in (asked[0], asked[-1]))
    assert "/v2/usage/*?" in asked[0]
    assert int(first["to"]) - int(first["from"]) == 86400 and int(last["to"]) - int(last["from"]) == 7 * 86400
    page.evaluate("() => { window.__stopUsage(); document.getElementById('usage').remove(); }")
    page.unroute("**/v2/usage/*?*")
