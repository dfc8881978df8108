"""One delivery attempt: a signed POST that follows no redirect, to addresses judged at connect time."""

from __future__ import annotations

import asyncio

import aiohttp

from appliance.webhooks.errors import WebhookRefused
from appliance.webhooks.models import Delivery
from appliance.webhooks.signing import headers
from appliance.webhooks.urls import AllowList, GuardedResolver, check_url, describe

USER_AGENT = "appliance-webhooks/1"
#: Bytes of a response body read (and dropped): enough to let the connection be reused, no more.
RESPONSE_READ_BYTES = 4096


class Sender:
    def __init__(self, allow: AllowList, timeout_s: float, concurrency: int) -> None:
        self.allow = allow
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self.allow),
                # Resolve (and judge) at every connection: a cached answer would outlive a DNS change.
                use_dns_cache=False,
                limit=self.concurrency,
            )
            # trust_env stays off: no proxy from the environment sees the deliveries.
            self._session = aiohttp.ClientSession(connector=connector, headers={"user-agent": USER_AGENT})
        return self._session

    async def send(self, delivery: Delivery, signing: list[str]) -> str | None:
        """POST the delivery; None when the receiver answered 2xx, else a one-line reason (a redirect is a
        failure: it is not followed)."""
        try:
            # IP literals never reach the resolver; names are judged again by it when connecting.
            await check_url(delivery.url, self.allow)
            async with asyncio.timeout(self.timeout_s):
                async with self.session().post(
                    delivery.url,
                    data=delivery.body.encode(),
                    headers=headers(delivery.id, delivery.body, signing),
                    allow_redirects=False,
                ) as response:
                    await response.content.read(RESPONSE_READ_BYTES)
                    if 200 <= response.status < 300:
                        return None
                    if 300 <= response.status < 400:
                        return f"HTTP {response.status}: redirect not followed"
                    return f"HTTP {response.status}"
        except WebhookRefused as exc:
            return f"refused: {exc}"
        except TimeoutError:
            return f"no answer within {self.timeout_s:g}s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return describe(exc)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
