"""The dashboard's static side, without a browser: what `/` and `/ui/…` serve and with which
headers (the strict CSP), that nothing outside the folder is reachable, that the pages carry no
inline script or style, that the JavaScript builds the page without HTML strings and imports only
files that exist, and that each vendored library has its licence and pinned version."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.api.dashboard import CSP, STATIC, add_dashboard
from proxy.core.config import ProxyConfig
from proxy.core.control import InMemoryControlPlane
from proxy.core.pipeline import Pipeline
from proxy.management.app import add_proxy

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for p in STATIC.rglob("*.js") if "vendor" not in p.parts)
VENDORED = sorted(p for p in (STATIC / "vendor").iterdir() if p.is_dir())
REFRESH = ROOT / "scripts" / "refresh-dashboard-vendor.sh"
# Ways to turn a string into markup or code: none may appear in the dashboard's own scripts, so that
# names, tags and log lines from users can only ever be text.
FORBIDDEN = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
             "setAttribute(\"style\"", "setAttribute('style'", "javascript:")
IMPORT = re.compile(r"""^\s*import\s+(?:[^'"]+\s+from\s+)?["']([^"']+)["']""", re.M)


@pytest.fixture
async def client():
    app = web.Application()
    add_dashboard(app)
    add_proxy(app, Pipeline(ProxyConfig(), InMemoryControlPlane()))
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


def test_csp_forbids_inline_code_and_foreign_origins():
    directives = dict(part.strip().split(" ", 1) for part in CSP.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CSP


@pytest.mark.parametrize("path, kind", [
    ("/", "text/html"),
    ("/ui/app.js", "text/javascript"),
    ("/ui/style.css", "text/css"),
    ("/ui/vendor/uplot/uPlot.esm.js", "text/javascript"),
])
async def test_files_are_served_with_the_security_headers(client, path, kind):
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type in (kind, "application/javascript" if kind == "text/javascript" else kind)
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("path", [
    "/ui/../dashboard.py", "/ui/%2e%2e/dashboard.py", "/ui/..%2fdashboard.py", "/ui/nothing.js",
    "/ui/vendor", "/ui/%2fetc%2fpasswd", "/ui//etc/passwd", "/ui/a%00b.js", "/ui/" + "a" * 5000,
    "/ui/vendor/uplot/..%2f..%2f..%2fdashboard.py",
])
async def test_nothing_outside_the_folder_is_served(client, path):
    response = await client.get(path)
    assert response.status == 404
    assert "from __future__" not in await response.text()


class _Markup(HTMLParser):
    def __init__(self):
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        names = dict(attrs)
        if tag == "style":
            self.problems.append("a <style> element")
        if "style" in names:
            self.problems.append(f"a style attribute on <{tag}>")
        self.problems += [f"an inline handler {name} on <{tag}>" for name in names if name.startswith("on")]
        if tag == "script":
            self._in_script = True
            if not names.get("src"):
                self.problems.append("a <script> without src")
            else:
                self.scripts.append(names["src"])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.problems.append("code inside <script>")


def test_the_page_has_no_inline_script_or_style():
    markup = _Markup()
    markup.feed((STATIC / "index.html").read_text())
    assert markup.problems == []
    assert markup.scripts == ["/ui/app.js"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(STATIC)))
def test_scripts_build_the_page_without_html_strings(script):
    text = script.read_text()
    assert [word for word in FORBIDDEN if word in text] == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(STATIC)))
def test_every_import_is_a_file_of_the_dashboard(script):
    imports = IMPORT.findall(script.read_text())
    for spec in imports:
        assert spec.startswith("./") or spec.startswith("../"), f"{script.name} imports {spec!r}: only relative files"
        target = (script.parent / spec).resolve()
        assert target.is_file(), f"{script.name} imports {spec}, which does not exist"
        assert STATIC.resolve() in target.parents


def test_scripts_never_put_the_token_in_a_url():
    for script in SCRIPTS:
        text = script.read_text()
        assert "new EventSource" not in text, f"{script.name}: EventSource cannot send the token in a header"
        assert not re.search(r"[?&]token=|access_token", text), f"{script.name} puts a token in a URL"


@pytest.mark.parametrize("library", VENDORED, ids=lambda p: p.name)
def test_vendored_libraries_carry_licence_and_pinned_version(library):
    assert (library / "LICENSE").read_text().strip()
    name_version, integrity = (library / "VERSION").read_text().split()
    name, version = name_version.rsplit("@", 1)
    assert integrity.startswith("sha512-")
    pinned = re.search(rf'{name.upper()}_VERSION="\$\{{{name.upper()}_VERSION:-([^}}]+)\}}"', REFRESH.read_text())
    assert pinned and pinned.group(1) == version, f"{name}: refresh script pins {pinned and pinned.group(1)}, vendored {version}"
    sums = dict(reversed(line.split()) for line in (library / "SHA256SUMS").read_text().splitlines())
    assert "LICENSE" in sums and len(sums) >= 2
    for file, digest in sums.items():
        assert hashlib.sha256((library / file).read_bytes()).hexdigest() == digest, f"{library.name}/{file} was edited by hand"


def test_the_dashboard_uses_no_route_outside_the_public_api():
    """Every path the scripts build is one the README documents for clients."""
    api = (STATIC / "api.js").read_text()
    built = set(re.findall(r"`(/[^`$?]*)", api)) | set(re.findall(r'"(/[^"]+)"', api))
    public = ("/api/whoami-v2", "/v2/endpoint/", "/v2/provider/", "/v2/audit/", "/v2/usage/", "/api/v1/catalog",
              "/v2/engines/suggest", "/endpoints/")
    assert built and all(path.startswith(public) for path in built), sorted(built)


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


CSS = (STATIC / "style.css").read_text()
VARS = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6})", CSS))
PHASES = dict(re.findall(r"\.phase-([a-z]+) \{ color: (#[0-9a-fA-F]{6}); \}", CSS))


@pytest.mark.parametrize("text, background", [
    ("fg", "bg"), ("muted", "bg"), ("muted", "panel"), ("accent", "bg"), ("ok", "ok-bg"), ("bad", "bad-bg"),
    ("busy", "busy-bg"), ("idle", "idle-bg"), ("bad", "bg"),
    ("bg", "accent"), ("bg", "bad"),  # white text on the primary and the danger buttons
])
def test_text_colours_meet_wcag_aa(text, background):
    assert _contrast(VARS[text], VARS[background]) >= 4.5, (text, background)


@pytest.mark.parametrize("phase", ["pending", "initializing", "running", "draining", "stopped", "failed"])
def test_replica_phase_colours_are_readable_as_text(phase):
    assert _contrast(PHASES[phase], "#ffffff") >= 4.5
