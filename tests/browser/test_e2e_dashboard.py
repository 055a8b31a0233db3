"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against `endpointd
serve` on the real Docker engine with the echo engine: sign in, create an endpoint from the form,
see it run, chat with it (streamed), find the request in Analytics and Logs, scale it to zero, wake
it from the playground, delete it; a field error from the API is shown at its field; a tag holding
HTML is shown as text. Every page is screenshotted into SCREENSHOTS (CI keeps the folder), and no
page may break the Content-Security-Policy or throw."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.serve_process import Serve

pytestmark = pytest.mark.docker
CHROMIUM = os.environ.get("ENDPOINTD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
# Analytics every second, so that a request shows in the graph within moments.
FAST = {"ENDPOINTD_ANALYTICS_INTERVAL_S": "1", "ENDPOINTD_LIVENESS_INTERVAL_S": "1"}
HOSTILE_TAG = '<img src=x onerror="window.__pwned=1">'
START_S = 120  # an echo replica starts in seconds; the image is local
WAIT_MS = START_S * 1000


@pytest.fixture
def serve(tmp_path, docker_engine):
    s = Serve(tmp_path / "data", admin_token="test-admin-token", extra_env=FAST)
    s.start()
    yield s
    s.close()


@pytest.fixture
def page(serve):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (tests/run's setup installs it)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=serve.url)
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
        page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
        page.problems = problems
        try:
            yield page
        finally:
            context.close()
            browser.close()
    assert problems == [], f"the page broke its CSP or threw: {problems}"


def shot(page: Page, name: str) -> None:
    """Save the page's screenshot, once every control on it has a name a screen reader can say."""
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter((el) => el.offsetParent !== null && el.type !== 'hidden')
        .filter((el) => !((el.labels && el.labels.length) || el.getAttribute('aria-label')
                          || el.getAttribute('aria-labelledby') || (el.tagName === 'BUTTON' && el.textContent.trim())))
        .map((el) => el.outerHTML.slice(0, 120))""")
    assert unnamed == [], f"{name}: controls without a label: {unnamed}"
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def api_status(serve: Serve, path: str) -> int:
    request = urllib.request.Request(serve.url + path, headers={"Authorization": f"Bearer {serve.admin_token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def api_json(serve: Serve, path: str, method: str = "GET", body: dict | None = None) -> dict:
    request = urllib.request.Request(serve.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {serve.admin_token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def sign_in(page: Page, serve: Serve) -> None:
    page.goto(serve.url + "/")
    page.get_by_label("Token").fill("not-a-token-of-anyone")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".field-error")).to_contain_text("refused")
    shot(page, "01-sign-in-refused")
    page.get_by_label("Token").fill(serve.admin_token)
    page.get_by_label("Token").press("Enter")  # the keyboard alone signs in
    expect(page.get_by_role("heading", name="Endpoints of admin")).to_be_visible()
    assert serve.admin_token not in page.url


def fill_form(page: Page, serve: Serve, name: str) -> None:
    page.get_by_role("link", name="New endpoint").first.click()
    expect(page.get_by_role("radiogroup", name="Hardware").locator("input").first).to_be_checked()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Security level").select_option("authenticated")
    page.get_by_label("Repository").fill(serve.model)
    page.get_by_label("Framework").select_option("custom")
    page.get_by_label("Engine", exact=True).select_option("custom")
    page.get_by_label("Image (url)").fill("endpointd/echo:latest")
    page.get_by_label("healthRoute").fill("/health")
    # Tokens a fifth of a second apart: the test sees the answer arrive in pieces.
    page.get_by_role("button", name="Add a variable").click()
    page.get_by_label("Environment name").fill("ECHO_TOKEN_DELAY_S")
    page.get_by_label("Environment value").fill("0.2")
    page.get_by_label("Tags").fill(f"dashboard-e2e, {HOSTILE_TAG}")


def test_the_dashboard_drives_an_endpoint_through_its_life(serve, page):
    name = f"dash-{uuid.uuid4().hex[:6]}"
    sign_in(page, serve)
    shot(page, "02-endpoints-empty")
    fill_form(page, serve, name)
    shot(page, "03-create")

    # A field error from the API is shown at its field.
    page.get_by_label("Max replicas").fill("999")
    page.get_by_role("button", name="Create endpoint").click()
    at_field = page.locator('[data-field="compute.scaling.maxReplica"]')
    expect(at_field).to_contain_text("compute.scaling.maxReplica must be at most")
    expect(page.locator(".form-error")).to_be_empty()
    shot(page, "04-create-field-error")
    page.get_by_label("Max replicas").fill("1")
    page.get_by_role("button", name="Create endpoint").click()

    # Created: the Overview shows it become running.
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    shot(page, "05-overview-starting")
    header_state = page.locator(".title-row .badge")
    expect(header_state).to_have_attribute("data-state", "running", timeout=WAIT_MS)
    expect(page.locator(".facts")).to_contain_text(f"/endpoints/admin/{name}")
    shot(page, "06-overview-running")

    # The list: the endpoint's row, its hostile tag shown as text and never run.
    page.get_by_role("link", name="Endpoints", exact=True).first.click()
    row = page.locator(f'tr[data-name="{name}"]')
    expect(row.locator(".badge")).to_have_attribute("data-state", "running")
    expect(row.locator(".tag", has_text="onerror")).to_have_text(HOSTILE_TAG)
    assert row.locator("img").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.get_by_label("Tag").select_option(HOSTILE_TAG)
    expect(row).to_be_visible()
    # A change made elsewhere (here: the API) shows without a reload.
    api_json(serve, f"/v2/endpoint/admin/{name}", "PUT", {"tags": ["dashboard-e2e", HOSTILE_TAG, "changed-elsewhere"]})
    expect(row.locator(".tag", has_text="changed-elsewhere")).to_be_visible()
    shot(page, "07-endpoints")
    row.get_by_role("link", name=name).click()

    # Playground: the answer streams in, token by token.
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Message").fill("one two three four five six")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function("""() => {
        const b = document.querySelector('.bubble.assistant');
        return b && !b.dataset.done && b.querySelector('.text').textContent.trim().length > 0; }""")
    reply = page.locator(".bubble.assistant").last
    expect(reply).to_have_attribute("data-done", "true", timeout=WAIT_MS)
    expect(reply.locator(".text")).to_have_text("one two three four five six ")
    expect(page.locator(".code")).to_contain_text("X-Scale-Up-Timeout")
    shot(page, "08-playground-chat")
    page.get_by_role("button", name="Text generation").click()
    page.get_by_label("Message").fill("generate these words")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".bubble.assistant").last).to_have_attribute("data-done", "true", timeout=WAIT_MS)
    expect(page.locator(".bubble.assistant .text").last).to_have_text("generate these words ")
    page.get_by_role("button", name="Embeddings").click()
    page.get_by_label("Message").fill("embed me")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".bubble.assistant .text").last).to_contain_text("8 dimensions", timeout=WAIT_MS)
    page.get_by_role("button", name="Chat").click()

    # Analytics: the request is in the graph of requests.
    page.get_by_role("link", name="Analytics").click()
    expect(page.locator('figure[data-graph="requests"] canvas').first).to_be_visible()
    expect(page.locator('.summary[data-graph="requests"]')).to_contain_text(re.compile(r"2xx [1-9]"), timeout=WAIT_MS)
    for label in ("1 h", "24 h", "30 d", "15 min"):
        page.get_by_role("button", name=label, exact=True).click()
        expect(page.get_by_role("button", name=label, exact=True)).to_have_attribute("aria-pressed", "true")
    expect(page.locator('.summary[data-graph="requests"]')).to_contain_text(re.compile(r"2xx [1-9]"), timeout=WAIT_MS)
    shot(page, "09-analytics")

    # Logs: the request's line, live; the search hides other lines.
    page.get_by_role("link", name="Logs").click()
    line = page.locator(".log li", has_text="POST /v1/chat/completions 200")
    expect(line.first).to_be_visible(timeout=WAIT_MS)
    page.get_by_label("Search").fill("chat/completions")
    expect(page.locator(".log li:visible", has_text="GET /health")).to_have_count(0)
    expect(line.first).to_be_visible()
    shot(page, "10-logs")
    replica = page.locator(".log li code.replica").first.text_content()
    page.get_by_label("Replica", exact=True).select_option(replica)  # asked of the server: only that replica's lines
    expect(line.first).to_be_visible(timeout=WAIT_MS)
    assert set(page.locator(".log li code.replica").all_text_contents()) == {replica}

    for tab, ready in (("Replicas", ".timeline .track"), ("Events", "table[aria-label=Events] tbody tr"),
                       ("Audit", "table[aria-label='Audit log'] tbody tr")):
        page.get_by_role("link", name=tab, exact=True).click()
        expect(page.locator(ready).first).to_be_visible()
        shot(page, f"11-{tab.lower()}")
    expect(page.locator("table[aria-label='Audit log']")).to_contain_text("create")
    expect(page.get_by_role("button", name="Older entries")).to_be_hidden()  # one page holds them all

    page.get_by_role("link", name="Settings").click()
    expect(page.locator(".verdict")).to_have_text("Nothing changed yet.")
    page.get_by_label("Max replicas").fill("2")
    expect(page.locator(".verdict")).to_contain_text("without restarting")
    page.get_by_label("Environment value").fill("0.1")
    expect(page.locator(".verdict")).to_contain_text("rolls the replicas")
    shot(page, "12-settings")
    page.get_by_label("Environment value").fill("0.2")
    expect(page.locator(".verdict")).to_have_text("Saving changes the scaling without restarting a replica.")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status").filter(has_text="Saved.")).to_be_visible()
    assert api_json(serve, f"/v2/endpoint/admin/{name}")["compute"]["scaling"]["maxReplica"] == 2

    # Scale to zero from the Overview, then wake it from the playground.
    page.get_by_role("link", name="Overview").click()
    page.get_by_role("button", name="Scale to zero").click()
    expect(header_state).to_have_attribute("data-state", "scaledToZero", timeout=WAIT_MS)
    page.get_by_role("link", name="Playground").click()
    expect(header_state).to_have_attribute("data-state", "scaledToZero")
    page.get_by_label("Message").fill("wake up")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".waking")).to_contain_text("Waking up")
    shot(page, "13-playground-waking")
    reply = page.locator(".bubble.assistant").last
    expect(reply).to_have_attribute("data-done", "true", timeout=WAIT_MS)
    expect(reply.locator(".text")).to_have_text("wake up ")
    expect(page.locator(".waking")).to_be_hidden()
    expect(header_state).to_have_attribute("data-state", "running", timeout=WAIT_MS)

    # An admin sees every namespace at once with "*".
    page.get_by_label("Namespace").select_option("*")
    expect(page.get_by_role("heading", name="Endpoints of every namespace")).to_be_visible()
    expect(page.locator(f'tr[data-name="{name}"]')).to_contain_text("admin")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone's screen
    shot(page, "15-endpoints-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.locator(f'tr[data-name="{name}"]').get_by_role("link", name=name).click()

    # Delete: only once the name is typed.
    page.get_by_role("link", name="Overview").click()
    page.get_by_text("Delete this endpoint").click()
    delete = page.get_by_role("button", name="Delete", exact=True)
    expect(delete).to_be_disabled()
    page.get_by_label(re.compile(f"Type {name} to delete")).fill(name)
    shot(page, "14-delete")
    delete.click()
    expect(page.get_by_role("heading", name="Endpoints of every namespace")).to_be_visible()
    expect(page.locator(f'tr[data-name="{name}"]')).to_have_count(0)
    assert api_status(serve, f"/v2/endpoint/admin/{name}") == 404

    assert json.loads(page.evaluate("JSON.stringify(sessionStorage.getItem('endpointd.token'))")) == serve.admin_token


def test_a_catalog_recipe_deploys_from_the_dashboard(serve, page):
    """The catalog panel lists the shipped recipes (GET /api/v1/catalog/list) and deploys one."""
    name = f"dash-cat-{uuid.uuid4().hex[:6]}"
    sign_in(page, serve)
    page.get_by_role("link", name="New endpoint").first.click()
    recipe = page.locator(".recipe", has_text="endpointd/echo")
    expect(recipe).to_be_visible()
    # A recipe this host cannot deploy (TEI's image is neither here nor pullable) says why, and offers no Deploy.
    tei = page.locator('.recipe-row[data-recipe="minilm-l6-tei-cpu"]')
    expect(tei.locator(".reason")).to_contain_text("Cannot deploy on this host: the image")
    expect(tei.get_by_role("button", name="Deploy")).to_be_disabled()
    shot(page, "16-catalog")
    recipe.get_by_role("textbox").fill(name)
    recipe.get_by_role("button", name="Deploy").click()
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    expect(page.locator(".title-row .badge")).to_have_attribute("data-state", "running", timeout=WAIT_MS)
    assert api_json(serve, f"/v2/endpoint/admin/{name}")["model"]["image"]["custom"]["url"] == "endpointd/echo:latest"
    page.get_by_role("link", name="Overview").click()
    page.get_by_text("Delete this endpoint").click()
    page.get_by_label(re.compile(f"Type {name} to delete")).fill(name)
    page.get_by_role("button", name="Delete", exact=True).click()
    expect(page.locator(f'tr[data-name="{name}"]')).to_have_count(0)


def test_the_usage_page_shows_an_endpoints_replica_hours_requests_and_cost(serve, page):
    name = f"dash-use-{uuid.uuid4().hex[:6]}"
    api_json(serve, "/v2/endpoint/admin", "POST", {
        "name": name, "type": "private", "provider": {"vendor": "local", "region": "local"},
        "compute": {"accelerator": "cpu", "instanceType": "intel-icl", "instanceSize": "x1",
                    "scaling": {"minReplica": 1, "maxReplica": 1}},
        "model": {"repository": serve.model, "framework": "custom",
                  "image": {"custom": {"url": "endpointd/echo:latest", "healthRoute": "/health"}}},
    })
    request = urllib.request.Request(f"{serve.url}/endpoints/admin/{name}/generate", data=b'{"inputs": "metered"}',
                                     headers={"Authorization": f"Bearer {serve.admin_token}",
                                              "Content-Type": "application/json", "X-Scale-Up-Timeout": str(START_S)})
    with urllib.request.urlopen(request, timeout=START_S + 10) as response:
        assert response.status == 200
    sign_in(page, serve)
    page.get_by_role("link", name="Usage", exact=True).click()
    expect(page.get_by_role("heading", name="Usage of admin")).to_be_visible()
    row = page.locator(f'table.usage tbody tr[data-name="{name}"]')
    expect(row.locator('td[data-label="Requests"]')).to_have_text("1", timeout=WAIT_MS)
    expect(row.locator('td[data-label="Hardware"]')).to_contain_text("intel-icl x1")
    expect(row.locator('td[data-label="Replica-hours"]')).not_to_have_text("0.000", timeout=WAIT_MS)  # 3.6 s or more
    expect(row.locator('td[data-label="Tokens in"]')).to_have_text("–")  # the echo engine counts no tokens
    expect(page.locator("section > p.muted").last).to_contain_text("Unpriced")  # no [rates] here
    page.get_by_role("button", name="Last 30 days").click()
    expect(page.get_by_role("button", name="Last 30 days")).to_have_attribute("aria-pressed", "true")
    expect(row.locator('td[data-label="Requests"]')).to_have_text("1")
    shot(page, "18-usage")


def test_a_user_sees_their_namespaces_and_the_apis_refusals(serve, page):
    """A user's token offers their own namespace and their orgs', never `*`; what the API refuses
    (another namespace's endpoint) is said in the API's words."""
    alice = serve.add_user("alice", "acme")
    page.goto(serve.url + "/")
    page.get_by_label("Token").fill(alice)
    page.get_by_label("Token").press("Enter")
    expect(page.get_by_role("heading", name="Endpoints of alice")).to_be_visible()
    assert page.get_by_label("Namespace").locator("option").all_text_contents() == ["alice", "acme"]
    page.get_by_label("Namespace").select_option("acme")
    expect(page.get_by_role("heading", name="Endpoints of acme")).to_be_visible()
    page.goto(serve.url + "/#/endpoint/admin/someone-elses/overview")
    expect(page.get_by_role("status").filter(has_text="may not manage namespace admin")).to_be_visible()
    shot(page, "17-refused")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Token")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('endpointd.token')") is None


def test_the_playground_and_its_snippets_reach_the_inference_toolkit(serve, page, monkeypatch):
    """The default engine (the toolkit, `{"huggingface": {}}`) serves `POST /` only: the Playground
    and both copied snippets must call that, and show a real MiniLM's vector."""
    import shutil
    import subprocess
    import sys

    import huggingface_hub.constants as hub_constants
    from huggingface_hub import HfApi

    from tests.e2e.test_e2e_toolkit import MINILM_DIM, READY_TIMEOUT_S, minilm_files, require_toolkit_image

    require_toolkit_image()
    model = Path(serve.model).parent / "pg-minilm"
    shutil.copytree(minilm_files(), model)
    name = f"pg-tk-{uuid.uuid4().hex[:6]}"
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{serve.url}/v2")
    HfApi(endpoint=serve.url, token=serve.admin_token).create_inference_endpoint(
        name, repository=str(model), framework="pytorch", task="feature-extraction", accelerator="cpu",
        instance_size="x2", instance_type="intel-icl", region="local", vendor="local", type="authenticated")

    sign_in(page, serve)
    page.goto(f"{serve.url}/#/endpoint/admin/{name}/playground")
    expect(page.locator(".title-row .badge")).to_have_attribute("data-state", "running", timeout=READY_TIMEOUT_S * 1000)
    tabs = page.get_by_role("group", name="Playground mode").get_by_role("button")
    expect(tabs).to_have_text(["Embeddings"])  # what the toolkit serves for this task, nothing it does not
    page.get_by_label("Message").fill("endpointd serves a real model")
    page.get_by_role("button", name="Send").click()
    reply = page.locator(".bubble.assistant").last
    expect(reply).to_have_attribute("data-done", "true", timeout=WAIT_MS)
    expect(reply.locator(".text")).to_contain_text(f"{MINILM_DIM} dimensions: [")
    shot(page, "17-playground-toolkit")

    env = {**os.environ, "HF_TOKEN": serve.admin_token}
    curl = page.locator('pre[aria-label="curl"]').text_content()
    assert "/generate_stream" not in curl and "/v1/" not in curl
    done = subprocess.run(["bash", "-c", curl + " --fail-with-body -sS"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(json.loads(done.stdout)) == MINILM_DIM
    python = page.locator('pre[aria-label="Python"]').text_content()
    done = subprocess.run([sys.executable, "-c", python], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("[") and len(done.stdout.split(",")) == MINILM_DIM
