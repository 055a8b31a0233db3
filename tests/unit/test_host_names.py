"""No endpoint takes a name this host answers to: the names are found at start (host name, FQDN,
canonical name, every local address's reverse name), not taken from a fixed list, and a resolver
that hangs cannot stall the start."""

from __future__ import annotations

import socket
import threading

import pytest

from autoscaler.config import ServeConfig
from autoscaler.control.host_names import local_addresses, names_of_this_host
from autoscaler.parts import own_names
from proxy.core.config import ProxyConfig
from tests.api_harness import ApiWorld


class Resolver:
    """A host whose FQDN, canonical name and reverse names all differ from its host name."""

    def __init__(self, hang: threading.Event | None = None):
        self.hang = hang

    def gethostname(self):
        return "Node7"

    def getfqdn(self):
        return "node7.corp.example."

    def gethostbyname_ex(self, name):
        assert name == "Node7"
        return "node7.corp.example", ["node7-alias.corp.example"], ["10.1.2.3"]

    def gethostbyaddr(self, address):
        if address == "192.0.2.66" and self.hang is not None:
            self.hang.wait(60)  # a resolver that never answers (released when the test ends)
        table = {"10.1.2.3": ("PTR-10-1-2-3.dc.example.", ["alias.dc.example"], ["10.1.2.3"]),
                 "192.0.2.9": ("gw.lab.example", [], ["192.0.2.9"])}
        if address not in table:
            raise socket.herror(1, "Unknown host")
        return table[address]


def test_every_name_of_the_host_is_found_and_normalized():
    names = names_of_this_host(resolver=Resolver(), addresses=lambda: ["192.0.2.9", "127.0.0.1"])
    assert names == {"node7", "node7.corp.example", "node7-alias.corp.example", "ptr-10-1-2-3.dc.example",
                     "alias.dc.example", "gw.lab.example"}


def test_a_hanging_resolver_cannot_stall_the_start():
    hang = threading.Event()
    try:
        names = names_of_this_host(0.5, resolver=Resolver(hang), addresses=lambda: ["192.0.2.66", "192.0.2.9"])
    finally:
        hang.set()
    assert {"node7", "node7.corp.example", "gw.lab.example"} <= names


def test_local_addresses_come_from_every_interface(tmp_path):
    (tmp_path / "fib_trie").write_text(
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.224.0.1\n        /32 host LOCAL\n"
        "     |-- 10.224.0.255\n        /32 link BROADCAST\n     |-- 192.0.2.2\n        /32 host LOCAL\n")
    (tmp_path / "if_inet6").write_text(
        "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n"
        "fd000000000000000000000000000002 04 40 00 82     eth0\n"
        "00000000000000000000000000000001 01 80 10 80       lo\n")
    assert local_addresses(tmp_path / "fib_trie", tmp_path / "if_inet6") == ["10.224.0.1", "192.0.2.2", "fd00::2", "::1"]


def test_this_hosts_own_names_include_its_hostname_and_fqdn():
    names = own_names(ProxyConfig(), ServeConfig())
    assert {socket.gethostname().lower(), socket.getfqdn().lower().rstrip("."), "localhost", "127.0.0.1"} <= names


@pytest.fixture
def other_host(monkeypatch):
    """This host as a data-centre host is named: an FQDN and reverse names other than its host name."""
    monkeypatch.setattr(socket, "getfqdn", lambda *a: "gpu-7.corp.example")
    real = socket.gethostbyaddr

    def gethostbyaddr(address):
        if address == "127.0.0.1":
            return "lb-3.Corp.Example.", ["api.corp.example"], ["127.0.0.1"]
        return real(address)

    monkeypatch.setattr(socket, "gethostbyaddr", gethostbyaddr)


@pytest.mark.parametrize("domain", ["gpu-7.corp.example", "GPU-7.corp.EXAMPLE", "lb-3.corp.example",
                                    "api.corp.example", "__hostname__"])
async def test_a_tenant_cannot_claim_a_name_this_host_answers_to(other_host, tmp_path, domain):
    names = own_names(ProxyConfig(), ServeConfig())  # what `serve` computes at start
    api = await ApiWorld().start(tmp_path, own_names=names)
    try:
        body = api.body("mine")
        body["route"] = {"domain": socket.gethostname() if domain == "__hostname__" else domain}
        r = await api.client.post("/v2/endpoint/alice", json=body, headers=api.auth("alice"))
        assert r.status == 400, await r.text()
        error = (await r.json())["error"]
        assert "is one of this server's own names" in error and "choose a host name of your own" in error
        body["route"] = {"domain": "mine.models.example"}
        r = await api.client.post("/v2/endpoint/alice", json=body, headers=api.auth("alice"))
        assert r.status == 200, await r.text()
    finally:
        await api.close()
