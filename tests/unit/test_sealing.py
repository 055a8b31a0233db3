"""Secrets sealed at rest: round trip, plain text from an older store, the key file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from autoscaler.store.sealing import KEY_FILE, Sealer, SealingError, needs_sealing

SPEC = {
    "name": "e1",
    "model": {
        "secrets": {"HF_TOKEN": "hf_very_secret", "DB": "pw"},
        "image": {"custom": {"url": "ghcr.io/x/y", "credentials": {"username": "u", "password": "registry-pw"}}},
        "env": {"PLAIN": "visible"},
    },
}


def test_secrets_are_sealed_and_read_back(tmp_path):
    old = os.umask(0)
    try:
        sealer = Sealer.open(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    sealed = sealer.seal(SPEC)
    text = json.dumps(sealed)
    for secret in ("hf_very_secret", "registry-pw", '"pw"'):
        assert secret not in text
    assert "visible" in text and not needs_sealing(sealed)
    assert sealer.unseal(sealed) == SPEC
    assert Sealer.open(tmp_path).unseal(sealed) == SPEC  # the same key next start


def test_plain_text_from_an_older_store_reads_as_is(tmp_path):
    assert needs_sealing(SPEC)
    assert Sealer.open(tmp_path).unseal(SPEC) == SPEC


def test_another_key_is_a_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sealed = Sealer.open(tmp_path / "a").seal(SPEC)
    with pytest.raises(SealingError, match="sealed with another key"):
        Sealer.open(tmp_path / "b").unseal(sealed)
