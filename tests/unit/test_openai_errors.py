"""Refusals on an endpoint's OpenAI routes (`{url}/v1/...`) in OpenAI's error shape, so that the
real `openai` SDK shows the sentence, while the `huggingface_hub` client still shows it too; on
every other route the usual `{"error": "<sentence>"}`. On both data-plane servers."""

from __future__ import annotations

import openai
import pytest
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import HfHubHTTPError

from proxy.core.control import AuthType
from tests.proxy_harness import free_port

CHAT = [{"role": "user", "content": "hi"}]


async def test_the_openai_sdk_shows_the_sentence_of_a_refusal(harness):
    await harness.start()
    harness.endpoint("priv", auth=AuthType.PRIVATE)
    client = openai.AsyncOpenAI(base_url=harness.url("/endpoints/acme/priv/v1"), api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await client.chat.completions.create(model="m", messages=CHAT)
    error = caught.value
    sentence = error.response.headers["X-Error-Message"]
    assert "token" in sentence and sentence in str(error)
    assert error.body == {"message": sentence, "type": "unauthorized", "code": 401}
    await client.close()


async def test_a_missing_endpoint_and_a_dead_replica_in_openai_shape(harness):
    await harness.start()
    harness.endpoint("dead", upstreams=(f"127.0.0.1:{free_port()}",))
    client = openai.AsyncOpenAI(base_url=harness.url("/endpoints/acme/nowhere/v1"), api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="acme/nowhere"):
        await client.chat.completions.create(model="m", messages=CHAT)
    await client.close()
    client = openai.AsyncOpenAI(base_url=harness.url("/endpoints/acme/dead/v1"), api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.completions.create(model="m", prompt="hi")
    assert caught.value.status_code == 502 and caught.value.response.headers["X-Error-Message"] in str(caught.value)
    await client.close()


async def test_the_hf_client_still_shows_the_sentence_on_openai_routes(harness):
    await harness.start()
    harness.endpoint("priv", auth=AuthType.PRIVATE)
    client = AsyncInferenceClient(model=harness.url("/endpoints/acme/priv"), token="not-a-token")
    with pytest.raises(HfHubHTTPError) as caught:
        await client.chat_completion(CHAT)  # POST {url}/v1/chat/completions
    sentence = caught.value.response.headers["X-Error-Message"]
    assert "token" in sentence and sentence in str(caught.value)
    await client.close()


@pytest.mark.parametrize("path", ["/endpoints/acme/priv/generate", "/endpoints/acme/priv/v1x", "/v2/whatever/v1/x"])
async def test_other_routes_keep_the_plain_shape(harness, path):
    await harness.start()
    harness.endpoint("priv", auth=AuthType.PRIVATE)
    async with harness.request("POST", path, json={}, headers={"Authorization": "Bearer nope"}) as r:
        body = await r.json()
    assert r.status in (401, 404) and body == {"error": r.headers["X-Error-Message"]}


async def test_a_route_domain_serves_openai_errors_at_its_root(harness):
    await harness.start()
    harness.endpoint("priv", auth=AuthType.PRIVATE, domain="chat.example")
    async with harness.request("POST", "/v1/chat/completions", json={}, headers={"Host": "chat.example"}) as r:
        body = await r.json()
    assert r.status == 401
    assert body == {"error": {"message": r.headers["X-Error-Message"], "type": "unauthorized", "code": 401}}
