"""The few Kubernetes API calls the operator makes itself: create, get, merge-patch.

kopf watches and patches the SFTJob it is handling, but it has no public
client for other objects. Rather than adding the official client (large,
synchronous or a second async stack) for four calls, this is a small
aiohttp client (aiohttp is already kopf's own HTTP stack) that logs in
exactly as kopf does: kopf's own `login_with_service_account` (in a pod)
or `login_with_kubeconfig` (elsewhere) return a `kopf.ConnectionInfo`,
whose `as_ssl_context()`/`as_http_headers()` give TLS and auth. On HTTP
401 it logs in again once, because projected service-account tokens are
rotated on disk while the operator runs.

Errors are `ApiError` with the Kubernetes `Status` fields; callers decide
what a status code means for them (409 on create is success to an
idempotent handler; 404 on a patch means the object is gone).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf
import pydantic_core

logger = logging.getLogger(__name__)

# Plurals of the kinds this operator creates or patches (no discovery round-trip needed).
PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Event"): "events",
    ("v1", "Pod"): "pods",
    ("batch/v1", "Job"): "jobs",
    ("sftjob.dev/v1alpha1", "SFTJob"): "sftjobs",
}

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """Whether retrying the same request later can help (throttling, server trouble)."""
        return self.status == 429 or self.status >= 500


def owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """Whether `obj` has an ownerReference to the object with this uid."""
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Credentials the way kopf finds them: the pod's service account, else the kubeconfig."""
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("No Kubernetes credentials: neither a service account nor a kubeconfig was found.")
    return info


def resource_path(api_version: str, plural: str, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
    """The URL path of a collection, an object or a subresource."""
    parts = ["/api/v1" if api_version == "v1" else f"/apis/{api_version}"]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


class KubeClient:
    """An async client for create/get/patch of namespaced objects."""

    def __init__(
        self,
        connect: Callable[[], kopf.ConnectionInfo],
        *,
        request_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        user_agent: str = "sftjob-operator",
    ) -> None:
        self._connect = connect
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, connect=connect_timeout)
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._lock = asyncio.Lock()
        self.requests = 0  # how many requests this client sent (exposed as a metric)

    async def _open(self) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is None or self._session.closed:
                info = self._connect()
                headers = {**info.as_http_headers(), "User-Agent": self._user_agent, "Accept": "application/json"}
                ssl = info.as_ssl_context() if info.server.startswith("https") else None
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0, ssl=ssl),
                    headers=headers,
                    timeout=self._timeout,
                    trust_env=info.trust_env,
                )
                self._server = info.server.rstrip("/")
            return self._session

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", *, decode: bool = True
    ) -> Any:
        """Send one request; return the decoded JSON (None with `decode=False`) or raise ApiError."""
        for attempt in (1, 2):
            session = await self._open()
            # pydantic's compiled serializer: a Job is 5 KB of JSON, and json.dumps was a tenth of a create.
            data = None if body is None else pydantic_core.to_json(body)
            headers = {"Content-Type": content_type} if data is not None else {}
            self.requests += 1
            try:
                async with session.request(method, self._server + path, data=data, headers=headers) as response:
                    raw = await response.read()  # read to the end, so the connection is reused
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                raise ApiError(503, type(e).__name__, str(e) or "connection failed") from e
            if status == 401 and attempt == 1:
                logger.info("the API server answered 401; logging in again")
                await self.close()
                continue
            if status >= 400:
                text = raw.decode("utf-8", errors="replace")
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = {}
                payload = payload if isinstance(payload, dict) else {}
                raise ApiError(status, payload.get("reason") or "", payload.get("message") or text[:500])
            return json.loads(raw) if decode and raw else None
        raise AssertionError("unreachable")  # pragma: no cover

    async def create(self, obj: Mapping[str, Any]) -> None:
        """Create a namespaced object (namespace from its metadata); ApiError 409 if the name is taken.

        The answer (the object as stored) is not decoded: a created Job is
        several kilobytes of JSON, and no caller reads it back.
        """
        plural = PLURALS[obj["apiVersion"], obj["kind"]]
        path = resource_path(obj["apiVersion"], plural, obj["metadata"].get("namespace"))
        await self.request("POST", path, obj, decode=False)

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """Read one object; None if it does not exist."""
        try:
            return await self.request("GET", resource_path(api_version, PLURALS[api_version, kind], namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any] | None:
        """JSON-merge-patch an object (or its /status); None if it does not exist."""
        path = resource_path(api_version, PLURALS[api_version, kind], namespace, name, subresource)
        try:
            return await self.request("PATCH", path, patch, MERGE_PATCH)
        except ApiError as e:
            if e.status == 404:
                return None
            raise
