"""The test side of the Kubernetes emulator: a small synchronous client and a polling helper.

Tests call it from their own thread (never on the emulator's event loop). It
speaks plain HTTP with the standard library, ignores proxy settings, and
finds resources' plural names through the server's discovery documents.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, TypeVar


class ApiError(Exception):
    """A non-2xx answer from the API server, with its Kubernetes ``Status`` fields."""

    def __init__(self, status: int, reason: str, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body


T = TypeVar("T")


class WaitTimeout(AssertionError):
    """Raised by :func:`wait_for` when the condition never held."""


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, message: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy and return that.

    ``ApiError`` (e.g. 404 before an object exists), ``LookupError`` (a status
    field not written yet) and ``AssertionError`` count as "not yet"; the last
    one is reported if ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = predicate()
        except (ApiError, LookupError, AssertionError) as e:
            result, last = None, e  # type: ignore[assignment]
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


class KubeClient:
    """A minimal synchronous Kubernetes client over plain HTTP (stdlib only) for the test thread.

    Objects are plain dicts; resources are named by ``api_version`` and plural,
    e.g. ``client.get("batch/v1", "jobs", "team-a", "job-1")``. Cluster-scoped
    resources take ``namespace=None``.
    """

    wait_for = staticmethod(wait_for)

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        # Never send loopback traffic through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._plurals: dict[tuple[str, str], str] = {}

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", **params: str | None
    ) -> Any:
        """Send one request; return the decoded JSON answer or raise :class:`ApiError`."""
        query = {key: value for key, value in params.items() if value is not None}
        url = self.base_url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = dict(self._headers, **({"Content-Type": content_type} if data is not None else {}))
        http_request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with self._opener.open(http_request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                status = json.loads(raw)
            except ValueError:
                status = {"message": raw.decode("utf-8", errors="replace")}
            raise ApiError(e.code, status.get("reason", e.reason), status.get("message", ""), status) from None
        return json.loads(payload) if payload else None

    @staticmethod
    def path(
        api_version: str,
        plural: str,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        """The URL path of a collection, an object or its subresource."""
        parts = ["/api/v1" if api_version == "v1" else f"/apis/{api_version}"]
        if namespace is not None:
            parts.append(f"namespaces/{namespace}")
        parts.append(plural)
        if name is not None:
            parts.append(name)
        if subresource is not None:
            parts.append(subresource)
        return "/".join(parts)

    def plural(self, api_version: str, kind: str) -> str:
        """The plural resource name of a kind, from the server's discovery (cached)."""
        if (api_version, kind) not in self._plurals:
            discovery = self.request("GET", "/api/v1" if api_version == "v1" else f"/apis/{api_version}")
            for resource in discovery["resources"]:
                if "/" not in resource["name"]:
                    self._plurals[api_version, resource["kind"]] = resource["name"]
        try:
            return self._plurals[api_version, kind]
        except KeyError:
            raise ApiError(404, "NotFound", f"the server does not serve {kind} in {api_version}") from None

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object (its namespace, if any, comes from ``metadata.namespace``)."""
        plural = self.plural(obj["apiVersion"], obj["kind"])
        namespace = obj.get("metadata", {}).get("namespace")
        return self.request("POST", self.path(obj["apiVersion"], plural, namespace), obj)

    def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        """Read one object; raises ``ApiError`` (status 404) if it does not exist."""
        return self.request("GET", self.path(api_version, plural, namespace, name))

    def list(
        self, api_version: str, plural: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """List objects in one namespace, or in all namespaces when ``namespace`` is None."""
        answer = self.request("GET", self.path(api_version, plural, namespace), labelSelector=label_selector)
        return answer["items"]

    def patch(
        self, api_version: str, plural: str, namespace: str | None, name: str, patch: Mapping[str, Any] | list[Any]
    ) -> dict[str, Any]:
        """Merge-patch an object (a list is sent as a JSON patch)."""
        content_type = "application/json-patch+json" if isinstance(patch, list) else "application/merge-patch+json"
        return self.request("PATCH", self.path(api_version, plural, namespace, name), patch, content_type)

    def patch_status(
        self, api_version: str, plural: str, namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch ``.status`` through the status subresource (how controllers and kubelets write it)."""
        path = self.path(api_version, plural, namespace, name, "status")
        return self.request("PATCH", path, {"status": status}, "application/merge-patch+json")

    def delete(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        """Delete an object (with finalizers, it only gets a deletionTimestamp)."""
        return self.request("DELETE", self.path(api_version, plural, namespace, name))
