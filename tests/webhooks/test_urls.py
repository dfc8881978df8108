"""Webhook URLs that reach private, loopback, link-local or otherwise non-public addresses are refused, however
the address is spelt, unless webhooks.allow_private names them."""

from __future__ import annotations

import pytest

from appliance.config.webhooks import WebhookSettings
from appliance.webhooks import WebhookRefused, WebhookRequest
from appliance.webhooks.urls import AllowList, check_url

REFUSED = [
    "http://127.0.0.1/hook",
    "http://127.1.2.3:8080/hook",
    "http://[::1]/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.5/hook",
    "http://172.16.3.4/hook",
    "http://192.168.1.1/hook",
    "http://100.64.0.1/hook",  # shared address space (carrier NAT)
    "http://0.0.0.0/hook",
    "http://[::]/hook",
    "http://224.0.0.1/hook",
    "http://[fe80::1]/hook",
    "http://[fd00::1]/hook",
    "http://localhost/hook",  # a host name resolving to loopback
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped IPv6
    "http://[::ffff:a9fe:a9fe]/hook",  # 169.254.169.254, mapped and in hex
    "http://[64:ff9b::a00:1]/hook",  # NAT64 of 10.0.0.1
    "http://2130706433/hook",  # 127.0.0.1 as one decimal number
    "http://0177.0.0.1/hook",  # octal
    "http://0x7f.0.0.1/hook",  # hex
    "http://127.1/hook",  # short form
    "http://017700000001/hook",  # one octal number
]


@pytest.mark.parametrize("url", REFUSED)
async def test_non_public_address_is_refused(url: str) -> None:
    with pytest.raises(WebhookRefused) as caught:
        await check_url(url, AllowList([]))
    message = str(caught.value)
    assert "\n" not in message and "webhooks.allow_private" in message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("http://user:pw@example.com/x", "credentials"),
        ("http:///x", "no host"),
        ("http://example.com:99999/x", "valid URL"),
        ("http://no-such-host.invalid/x", "does not resolve"),
    ],
)
async def test_malformed_url_is_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(WebhookRefused, match=reason):
        await check_url(url, AllowList([]))


async def test_allow_list_permits_named_networks_and_hosts_only() -> None:
    await check_url("http://127.0.0.1:9/x", AllowList(["127.0.0.0/8"]))
    await check_url("http://[::1]:9/x", AllowList(["::1"]))
    await check_url("http://[::ffff:127.0.0.1]:9/x", AllowList(["127.0.0.1"]))
    await check_url("http://2130706433/x", AllowList(["127.0.0.1/32"]))
    with pytest.raises(WebhookRefused):  # loopback allowed is not the metadata service allowed
        await check_url("http://169.254.169.254/x", AllowList(["127.0.0.0/8"]))
    with pytest.raises(WebhookRefused):
        await check_url("http://10.1.1.1/x", AllowList(["10.0.0.0/16"]))


async def test_public_address_is_accepted() -> None:
    await check_url("https://93.184.215.14/hook", AllowList([]))
    await check_url("http://[2606:4700::1111]/hook", AllowList([]))


def test_request_model_names_what_is_wrong() -> None:
    assert WebhookRequest(url="https://x.example/h").events[0].value == "job.completed"
    with pytest.raises(ValueError, match="events"):
        WebhookRequest(url="https://x.example/h", events=["job.exploded"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="url"):
        WebhookRequest(url="gopher://x.example/h")
    with pytest.raises(ValueError, match="allow_private"):
        WebhookSettings(allow_private=["10.0.0.0/33"])


async def test_connection_time_resolver_refuses_what_the_name_resolves_to_now() -> None:
    """The resolver aiohttp connects through judges the addresses it hands over (no gap for DNS rebinding)."""
    from appliance.webhooks.urls import GuardedResolver

    strict = GuardedResolver(AllowList([]))
    with pytest.raises(WebhookRefused, match="loopback"):
        await strict.resolve("localhost", 80)
    await strict.close()
    loose = GuardedResolver(AllowList(["127.0.0.0/8", "::1"]))
    hosts = {r["host"] for r in await loose.resolve("localhost", 80)}
    await loose.close()
    assert hosts and hosts <= {"127.0.0.1", "::1"}
