"""An in-memory Kubernetes API for integration tests: kmock 0.8's emulator, made faithful enough for kopf.

The real operator runs as a subprocess (see ``operator_process``) and talks
HTTP to :class:`SFTJobEmulator`, served on 127.0.0.1 from a background
thread by :func:`running_emulator`. The test thread talks to the same server
with the small synchronous :class:`KubeClient`.

What the subclass adds over stock ``kmock.KubernetesEmulator`` (0.8), and why:

* **Server-owned metadata.** Stock stores bodies as sent: no ``uid``,
  ``resourceVersion``, ``generation`` or ``creationTimestamp``. Without a
  uid, ``kopf.adopt`` writes owner references that point nowhere; without a
  resourceVersion, kopf's finalizer JSON patch (``test`` on
  ``/metadata/resourceVersion``) cannot succeed. Here they are stamped on
  create; the resourceVersion (one global counter, as in etcd) moves on
  every change; ``generation`` moves only when something outside
  ``metadata``/``status`` changes; clients cannot overwrite any of them.
  ``metadata.generateName`` is honoured (stock ignores it, and kopf's
  Kubernetes events rely on it).
* **Kubernetes status codes.** A failed JSON-patch ``test`` op is 422 (stock:
  500, which kopf retries as a server error instead of re-reading the object);
  a duplicate name is 409 ``AlreadyExists``; a stale
  ``metadata.resourceVersion`` in a merge patch or PUT is 409 ``Conflict``;
  unknown resources and objects are 404; server-side apply is 415.
* **Subresources.** For resources that declare ``status`` (SFTJob, Job, Pod),
  ``/status`` changes only ``.status`` and the main endpoint ignores
  ``.status`` (stock merges the whole body anywhere), so an operator that
  writes status the wrong way fails here as on a cluster. Create drops
  ``status`` for such resources, as the API server does. A no-op patch
  changes nothing and emits no event.
* **Deletion.** An object with finalizers gets ``deletionTimestamp`` and
  stays until a patch removes the last finalizer; then it is gone (and a
  ``DELETED`` event is sent). No new finalizers once deletion has begun.
  There is no garbage collector: owned objects outlive their owner.
* **Watches.** ``?resourceVersion=N`` resumes after N from an event log (stock
  replays every object as ``ADDED``); without it the current objects come
  first as ``ADDED``. The watcher subscribes under the same lock that
  publishes events, so nothing falls between the snapshot and the stream.
  ``timeoutSeconds``, ``sendInitialEvents`` (with the closing ``BOOKMARK``),
  equality/set ``labelSelector`` and equality ``fieldSelector`` work in lists
  and watches. On shutdown all watch streams end, so the server never waits
  ~50 s for clients that still hold a watch open.
* **Speed.** Stock dispatch asks every reaction "have you seen this request?"
  by scanning all requests recorded so far, and finds objects by scanning all
  objects: quadratic, and 100 SFTJobs at once took ~24 s to get their Jobs.
  Here reactions are matched against the request itself (slicers and other
  history-dependent views still take the slow, exact path) and objects are
  found by key. 4xx answers are not recorded in ``emulator.errors``: they are
  API answers, not server faults, so ``errors`` stays a useful assertion.
* **Paths.** ``/api/v1/namespaces[/name[/status]]`` crashes stock kmock's path
  parser (500); here namespaces are an ordinary cluster-scoped resource.
* **PUT** (replace) works, with the same metadata rules as PATCH.

Not emulated (tests must not rely on them): validation and defaulting,
strategic merge (treated as a JSON merge patch: lists are replaced),
server-side apply, garbage collection, namespace existence and termination,
``deletecollection``, periodic bookmarks, pagination (lists come whole), and
any controller (tests play the Job controller and the kubelet by patching
status).

As in stock kmock, user reactions (``emulator['post', ...] << 500``) see a
request *after* the emulator stored its effect: an injected 500 on create
simulates "created, but the answer was lost", which is what an idempotent
operator must survive.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import json
import math
import pathlib
import random
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import dsl, enums, parsing, rendering

from tests.support.kube_client import ApiError, KubeClient, WaitTimeout, wait_for  # noqa: F401 (re-exported)

# The SFTJob API (DESIGN.md section 3; fixed names).
SFTJOB_GROUP = "sftjob.dev"
SFTJOB_VERSION = "v1alpha1"
SFTJOB_API_VERSION = f"{SFTJOB_GROUP}/{SFTJOB_VERSION}"
SFTJOB_PLURAL = "sftjobs"
SFTJOB_KIND = "SFTJob"

SFTJOB_RESOURCE = kmock.resource(SFTJOB_GROUP, SFTJOB_VERSION, SFTJOB_PLURAL)
SFTJOB_RESOURCE_INFO = kmock.ResourceInfo(
    kind=SFTJOB_KIND,
    singular="sftjob",
    namespaced=True,
    shortnames={"sft"},
    # kopf ignores resources that lack list/watch/patch.
    verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    subresources={"status"},
)

# Metadata that only the server writes; a client's value is ignored.
_SYSTEM_METADATA = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)

# The alphabet Kubernetes uses for generateName suffixes (no vowels, no look-alikes).
_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

_NAMESPACE_PATH = re.compile(r"/api/v1/namespaces(?:/([^/]+)(?:/(status|finalize))?)?/?")


class _StreamClosed(Exception):
    """Put into the event buses at shutdown: every watch stream ends on it."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_version(resource: kmock.resource) -> str:
    return resource.version if not resource.group else f"{resource.group}/{resource.version}"


def _error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    # Explicit details keep stock kmock from putting a server traceback into a 4xx answer.
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details or {"causes": []})


def _not_found(resource: kmock.resource, name: str | None = None) -> kmock.KubernetesError:
    plural = f"{resource.plural}.{resource.group}"
    what = f'{plural} "{name}"' if name else f"the resource {plural}"
    return _error(404, "NotFound", f"{what} not found", name=name, group=resource.group, kind=resource.plural)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _beyond_metadata(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a generation counts: everything except metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


_SELECTOR_TERM = re.compile(
    r"^\s*(?:(?P<neg>!)\s*(?P<absent>[\w./-]+)"
    r"|(?P<key>[\w./-]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*$"
)


def label_selector_matches(labels: Mapping[str, str], selector: str) -> bool:
    """Whether labels satisfy a Kubernetes label selector (``a=b,c!=d,e,!f,g in (x,y)``)."""
    terms = []
    for term in re.split(r",(?![^()]*\))", selector):  # commas inside "in (x,y)" do not split
        if term.strip():
            match = _SELECTOR_TERM.match(term)
            if match is None:
                raise _error(400, "BadRequest", f"unable to parse requirement: {term!r}")
            terms.append(match)  # parse every term first: a bad selector fails even if an early term misses
    for match in terms:
        if match["absent"]:
            if match["absent"] in labels:
                return False
        elif match["op"]:
            equal = labels.get(match["key"]) == match["value"]
            if equal != (match["op"] != "!="):
                return False
        elif match["setop"]:
            values = {value.strip() for value in match["values"].split(",")}
            present = match["key"] in labels and labels[match["key"]] in values
            if present != (match["setop"] == "in"):
                return False
        elif match["key"] not in labels:
            return False
    return True


def field_selector_matches(obj: Mapping[str, Any], selector: str) -> bool:
    """Whether an object satisfies an equality field selector (``metadata.name=x,status.phase!=y``)."""
    terms = []
    for term in selector.split(","):
        if term.strip():
            match = re.fullmatch(r"\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*", term)
            if match is None:
                raise _error(400, "BadRequest", f"invalid field selector: {term!r}")
            terms.append(match)
    for match in terms:
        value: Any = obj
        for part in match[1].split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        equal = ("" if value is None else str(value)) == match[3]
        if equal != (match[2] != "!="):
            return False
    return True


@attrs.define(kw_only=True)
class SFTJobEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the API-server behaviour kopf relies on (see the module docstring).

    Declares the built-in resources from kmock's bundled discovery (Jobs,
    Pods, ConfigMaps, Events, Namespaces, ...) and the SFTJob resource.
    Usable with kmock's pytest plugin (``@pytest.mark.kmock(cls=SFTJobEmulator)``)
    or in a thread with :func:`running_emulator`.
    """

    _resource_version: int = attrs.field(default=0, init=False)
    # Per resource: (resourceVersion, event) in order, for resuming watches.
    _event_log: dict[kmock.resource, list[tuple[int, dict[str, Any]]]] = attrs.field(
        factory=lambda: collections.defaultdict(list), init=False
    )
    # What a modifying request did, read by the fallback reaction that answers it.
    _outcomes: dict[rendering.Request, Any] = attrs.field(factory=dict, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    # (plural, namespace) -> (status, reason, message): creations the "API server" refuses, as
    # RBAC, a ResourceQuota or an admission policy would. Set from tests with refuse()/allow().
    _refusals: dict[tuple[str, str | None], tuple[int, str, str]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_outcome
        with warnings.catch_warnings():  # kmock 0.8 reads its bundled file with a deprecated importlib call
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        self.resources[SFTJOB_RESOURCE] = SFTJOB_RESOURCE_INFO

    # -- declarations -------------------------------------------------------------------------

    def declare_crd(self, crd: Mapping[str, Any] | str | pathlib.Path) -> None:
        """Serve every version of a CustomResourceDefinition (a manifest dict or a YAML file)."""
        if not isinstance(crd, Mapping):
            crd = yaml.safe_load(pathlib.Path(crd).read_text(encoding="utf-8"))
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            self.resources[kmock.resource(spec["group"], version["name"], names["plural"])] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                subresources=set(version.get("subresources") or {}),
            )

    def refuse(self, plural: str, namespace: str | None, status: int, reason: str, message: str) -> None:
        """Refuse every create of `plural` in `namespace` with this answer until allow()."""
        self._refusals[plural, namespace] = (status, reason, message)

    def allow(self, plural: str, namespace: str | None) -> None:
        """Undo refuse()."""
        self._refusals.pop((plural, namespace), None)

    @property
    def request_count(self) -> int:
        """How many requests the server has answered so far (for benchmarks)."""
        return len(self._requests)

    # -- request parsing and dispatch ---------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # Same contract as kmock's RawHandler.__call__, with our own path parsing (see _parse).
        await raw_request.read()
        raw_response: aiohttp.web.StreamResponse | None = None
        try:
            if self.limit is not None and len(self._requests) >= self.limit:
                raise kmock.KMockError("Too many requests have been served so far.")
            request = await self._parse(raw_request)
            self._requests.append(request)
            try:
                return await self._handle(request)
            except rendering.StreamingError as e:
                raw_response = e.args[0]
                raise e.__cause__ or e
        except Exception as e:
            if not self._errors:
                raise
            if not (isinstance(e, kmock.KubernetesError) and e.status < 500):
                self._errors[-1].append(e)
            if raw_response is None or not raw_response.prepared:
                return await self._render_error(e)
            await self._stream_error(e, raw_response)
            await raw_response.write_eof()
            return raw_response

    async def _parse(self, raw_request: aiohttp.web.BaseRequest) -> rendering.Request:
        body = await raw_request.read()
        text = body.decode("utf-8", errors="replace")
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        match = _NAMESPACE_PATH.fullmatch(raw_request.path)
        if match:
            k8s = parsing.ParsedPath("", "v1", "namespaces", None, match[1], match[2])
        else:
            try:
                k8s = parsing.parse_path(raw_request.path)
            except ValueError:  # kmock's parser cannot unpack some paths; they are simply unknown
                k8s = parsing.ParsedPath()
        resource = None
        if k8s.group is not None:
            resource = kmock.resource(group=k8s.group, version=k8s.version, plural=k8s.plural)
        return rendering.Request(
            id=len(self._requests),
            raw_request=raw_request,
            url=raw_request.url,
            method=raw_request.method,
            params=dict(raw_request.query),
            headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies),
            data=data,
            body=body,
            text=text,
            action=parsing.guess_k8s(k8s, enums.method(raw_request.method), dict(raw_request.query)),
            resource=resource,
            namespace=k8s.namespace,
            name=k8s.name,
            subresource=k8s.subresource,
        )

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # Like stock: the change is stored first, then reactions (user's or the fallbacks) answer.
        if request.resource is not None and request.resource.plural:
            outcome = await self._modify(request)
            if outcome is not None:
                self._outcomes[request] = outcome
        try:
            return await self._dispatch(request)
        finally:
            self._outcomes.pop(request, None)

    async def _dispatch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # kmock's ordering: higher priority first; within one, the order of declaration.
        payloads = list(self._payloads)
        width = max((len(p.priorities) for p in payloads), default=0)
        keys = [tuple(-x for x in p.priorities) + (0,) * (width - len(p.priorities)) for p in payloads]
        for index in sorted(range(len(payloads)), key=keys.__getitem__):
            payload = payloads[index]
            if payload._disabled.is_set() or not self._sees(payload._source, request):
                continue
            try:
                return await payload(request)
            except rendering.ReactionMismatchError:
                payload._disabled.set()
            except NotImplementedError:  # matched, but had nothing to answer with
                pass
        raise NotImplementedError("No reaction matches the request.")

    def _sees(self, view: dsl.View, request: rendering.Request) -> bool:
        """Whether a request passes through a view, judged from the request alone where possible."""
        if view is self:
            return True
        if isinstance(view, dsl.Filter):
            return bool(view.criteria(request)) and self._sees(view._source, request)
        if isinstance(view, dsl.Exclusion):
            return self._sees(view._source, request) and not any(self._sees(v, request) for v in view._exclusions)
        if isinstance(view, (dsl.Priority, dsl.Reaction)):
            return self._sees(view._source, request)
        if isinstance(view, dsl.OrGroup):
            return any(self._sees(v, request) for v in view._sources)
        if isinstance(view, dsl.AndGroup):
            return all(self._sees(v, request) for v in view._sources)
        # Slices and live streams depend on the history of requests: kmock's exact (slow) test.
        return request in view

    # -- state changes ------------------------------------------------------------------------

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo:
        if resource not in self.resources:
            raise _not_found(resource)
        return self.resources[resource]

    def _live(self, key: tuple[kmock.resource, str | None, str]) -> kmock.Object:
        if key not in self._objects or self._objects[key].deleted:
            raise _not_found(key[0], key[2])
        return self._objects[key]

    def _key(self, request: rendering.Request, info: kmock.ResourceInfo) -> tuple[kmock.resource, str | None, str]:
        assert request.resource is not None and request.name is not None
        return (request.resource, request.namespace if info.namespaced else None, request.name)

    def _next_resource_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    async def _emit(self, resource: kmock.resource, kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": obj}
        self._event_log[resource].append((int(obj["metadata"]["resourceVersion"]), event))
        await self._buses[resource].put(event)

    async def _modify(self, request: rendering.Request) -> Any:
        assert request.resource is not None
        action = request.action
        if action == kmock.action.CREATE:
            handler = self._create
        elif action == kmock.action.UPDATE:
            handler = self._patch
        elif action == kmock.action.DELETE:
            handler = self._delete
        elif request.method == kmock.method.PUT and request.name:
            handler = self._replace
        else:
            return None
        info = self._info(request.resource)
        async with self._lock:
            return await handler(request, info)

    async def _create(self, request: rendering.Request, info: kmock.ResourceInfo) -> Any:
        resource = request.resource
        assert resource is not None
        if not isinstance(request.data, Mapping) or not isinstance(request.data.get("metadata", {}), Mapping):
            raise _error(400, "BadRequest", "the body must be a JSON object with an object in .metadata")
        obj = copy.deepcopy(dict(request.data))
        meta = obj["metadata"] = dict(obj.get("metadata") or {})

        namespace: str | None = None
        if info.namespaced:
            namespace = request.namespace or meta.get("namespace")
            if namespace is None:
                message = f"{resource.plural} are namespaced: POST to .../namespaces/NS/{resource.plural}"
                raise _error(404, "NotFound", message)
            if request.namespace and meta.get("namespace") not in (None, request.namespace):
                message = "the namespace of the object does not match the namespace of the request"
                raise _error(400, "BadRequest", message)

        refusal = self._refusals.get((resource.plural, namespace))
        if refusal is not None:
            raise _error(*refusal)
        name = meta.get("name")
        if not name and meta.get("generateName"):
            while True:
                name = meta["generateName"] + "".join(random.choices(_NAME_SUFFIX_ALPHABET, k=5))
                if (resource, namespace, name) not in self._objects or self._objects[resource, namespace, name].deleted:
                    break
        if not name:
            raise _error(422, "Invalid", "metadata.name or metadata.generateName is required", kind=info.kind)
        key = (resource, namespace, name)
        if key in self._objects and not self._objects[key].deleted:
            raise _error(
                409, "AlreadyExists", f'{resource.plural}.{resource.group} "{name}" already exists',
                name=name, group=resource.group, kind=resource.plural,
            )

        for field in _SYSTEM_METADATA:
            meta.pop(field, None)
        meta.update(
            name=name,
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_resource_version(),
            generation=1,
            creationTimestamp=_now(),
        )
        if namespace is not None:
            meta["namespace"] = namespace
        obj.setdefault("apiVersion", _api_version(resource))
        obj.setdefault("kind", info.kind)
        if "status" in info.subresources:
            obj.pop("status", None)  # status is written through /status only

        if key in self._objects:
            self._objects[key].create(obj)
        else:
            self._objects[key] = obj
        await self._emit(resource, "ADDED", obj)
        return rendering.Response(status=201, payload=obj)

    async def _patch(self, request: rendering.Request, info: kmock.ResourceInfo) -> Any:
        key = self._key(request, info)
        old = self._live(key).raw
        self._check_subresource(request, info)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        patch = request.data
        if content_type == "application/apply-patch+yaml":
            raise _error(415, "UnsupportedMediaType", "server-side apply is not emulated")
        if content_type == "application/json-patch+json" or isinstance(patch, list):
            if not isinstance(patch, list):
                raise _error(400, "BadRequest", "a JSON patch must be a list of operations")
            try:
                new = jsonpatch.apply_patch(old, patch, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                # 422 is what tells kopf "re-read the object and try again" (e.g. a stale resourceVersion).
                raise _error(422, "Invalid", f"the JSON patch cannot be applied: {e}", kind=info.kind, name=key[2])
        else:
            if not isinstance(patch, Mapping):
                raise _error(400, "BadRequest", "a merge patch must be a JSON object")
            self._check_precondition(patch, old)
            new = _merge_patch(old, patch)
        return await self._update(key, info, old, new, request.subresource)

    async def _replace(self, request: rendering.Request, info: kmock.ResourceInfo) -> Any:
        key = self._key(request, info)
        old = self._live(key).raw
        self._check_subresource(request, info)
        if not isinstance(request.data, Mapping):
            raise _error(400, "BadRequest", "the body must be a JSON object")
        self._check_precondition(request.data, old)
        return await self._update(key, info, old, copy.deepcopy(dict(request.data)), request.subresource)

    @staticmethod
    def _check_subresource(request: rendering.Request, info: kmock.ResourceInfo) -> None:
        if request.subresource is not None and (request.subresource != "status" or "status" not in info.subresources):
            raise _error(404, "NotFound", f"the subresource {request.subresource!r} is not served here")

    @staticmethod
    def _check_precondition(body: Mapping[str, Any], old: Mapping[str, Any]) -> None:
        meta = body.get("metadata")
        expected = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
        if expected is not None and str(expected) != old["metadata"]["resourceVersion"]:
            raise _error(
                409, "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
                name=old["metadata"]["name"],
            )

    async def _update(
        self,
        key: tuple[kmock.resource, str | None, str],
        info: kmock.ResourceInfo,
        old: dict[str, Any],
        new: Any,
        subresource: str | None,
    ) -> Any:
        if not isinstance(new, dict):
            raise _error(422, "Invalid", "the object must stay a JSON object", kind=info.kind, name=key[2])
        if subresource == "status":
            # /status changes .status and nothing else.
            status = new.get("status")
            new = {k: v for k, v in old.items() if k != "status"}
            if status is not None:
                new["status"] = status
        elif "status" in info.subresources:
            # The main endpoint ignores .status when /status exists.
            new.pop("status", None)
            if "status" in old:
                new["status"] = old["status"]
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        meta = new["metadata"] = dict(new["metadata"]) if isinstance(new.get("metadata"), Mapping) else {}
        old_meta = old["metadata"]
        for field in _SYSTEM_METADATA:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if old_meta.get("deletionTimestamp") and set(meta.get("finalizers", [])) - set(old_meta.get("finalizers", [])):
            raise _error(422, "Invalid", "no new finalizers can be added if the object is being deleted", name=key[2])
        if new == old:
            return old  # a no-op: no new resourceVersion, no event
        if _beyond_metadata(new) != _beyond_metadata(old):
            meta["generation"] = int(old_meta.get("generation", 0)) + 1
        meta["resourceVersion"] = self._next_resource_version()

        obj = self._objects[key]
        obj.history.append(new)
        await self._emit(key[0], "MODIFIED", new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._remove(key, new)
        return new

    async def _delete(self, request: rendering.Request, info: kmock.ResourceInfo) -> Any:
        if request.subresource is not None:
            raise _error(405, "MethodNotAllowed", "subresources cannot be deleted")
        key = self._key(request, info)
        old = self._live(key).raw
        meta = old["metadata"]
        if not meta.get("finalizers"):
            return await self._remove(key, old)
        if meta.get("deletionTimestamp"):
            return old  # already being deleted; waiting for the finalizers
        new = dict(old)
        new["metadata"] = dict(
            meta,
            deletionTimestamp=_now(),
            deletionGracePeriodSeconds=0,
            resourceVersion=self._next_resource_version(),
        )
        self._objects[key].history.append(new)
        await self._emit(key[0], "MODIFIED", new)
        return new

    async def _remove(self, key: tuple[kmock.resource, str | None, str], last: dict[str, Any]) -> dict[str, Any]:
        gone = dict(last)
        gone["metadata"] = dict(last["metadata"], resourceVersion=self._next_resource_version())
        self._objects[key].delete()
        await self._emit(key[0], "DELETED", gone)
        return gone

    # -- answers (the fallback reactions registered by kmock's emulator) --------------------

    async def _serve_outcome(self, request: rendering.Request) -> Any:
        if request not in self._outcomes:
            raise NotImplementedError  # not a change we stored: let the next reaction answer
        return self._outcomes[request]

    _serve_create = _serve_update = _serve_delete = _serve_outcome

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        assert request.resource is not None
        info = self._info(request.resource)
        self._check_subresource(request, info)
        return self._live(self._key(request, info)).raw

    def _select(self, request: rendering.Request) -> Callable[[Mapping[str, Any]], bool]:
        labels = request.params.get("labelSelector", "")
        fields = request.params.get("fieldSelector", "")
        namespace = request.namespace
        label_selector_matches({}, labels)  # a malformed selector is a 400 now, not mid-stream
        field_selector_matches({}, fields)

        def selected(obj: Mapping[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            return (
                (namespace is None or meta.get("namespace") == namespace)
                and (not labels or label_selector_matches(meta.get("labels") or {}, labels))
                and (not fields or field_selector_matches(obj, fields))
            )

        return selected

    def _current(self, request: rendering.Request) -> list[dict[str, Any]]:
        selected = self._select(request)
        found = [
            obj.raw
            for (resource, _, _), obj in self._objects.items()
            if resource == request.resource and not obj.deleted
        ]
        found = [obj for obj in found if selected(obj)]
        found.sort(key=lambda obj: (obj["metadata"].get("namespace") or "", obj["metadata"]["name"]))
        return found

    async def _serve_list(self, request: rendering.Request) -> Any:
        assert request.resource is not None
        info = self._info(request.resource)
        return {
            "apiVersion": _api_version(request.resource),
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": str(self._resource_version)},
            "items": self._current(request),
        }

    async def _serve_watch(self, request: rendering.Request) -> Any:
        assert request.resource is not None
        resource = request.resource
        info = self._info(resource)
        since_param = request.params.get("resourceVersion", "")
        since = int(since_param) if since_param.isdigit() and since_param != "0" else None
        selected = self._select(request)
        timeout = float(request.params["timeoutSeconds"]) if "timeoutSeconds" in request.params else math.inf
        deadline = time.monotonic() + timeout

        yield b""  # send the headers now: the client is waiting for the stream to open
        if self._closing:
            return
        bus = self._buses[resource]
        async with self._lock:  # the same lock that publishes: no event slips between backlog and bus
            marker = await bus.mark()
            if since is None:
                backlog = [{"type": "ADDED", "object": obj} for obj in self._current(request)]
            else:
                backlog = [e for rv, e in self._event_log[resource] if rv > since and selected(e["object"])]
            snapshot_version = str(self._resource_version)
        try:
            for event in backlog:
                yield event
            if request.params.get("sendInitialEvents") == "true":
                yield {
                    "type": "BOOKMARK",
                    "object": {
                        "apiVersion": _api_version(resource),
                        "kind": info.kind,
                        "metadata": {
                            "resourceVersion": snapshot_version,
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    },
                }
            events = bus.stream(since=marker)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    if math.isinf(remaining):
                        event = await anext(events)
                    else:
                        event = await asyncio.wait_for(anext(events), remaining)
                except (TimeoutError, _StreamClosed):
                    return
                if selected(event["object"]):
                    yield event
        finally:
            with contextlib.suppress(ValueError):  # already released if the bus stream was closed
                await bus.unmark(marker)

    async def close_streams(self) -> None:
        """End every watch stream now and refuse new ones (called before the server stops)."""
        self._closing = True
        for bus in list(self._buses.values()):
            await bus.put(_StreamClosed)


# ---------------------------------------------------------------------------------------------
# Running it: a server thread with its own event loop.
# ---------------------------------------------------------------------------------------------

KUBECONFIG_TOKEN = "emulator-token"  # accepted and ignored: the emulator has no auth


@attrs.define
class RunningEmulator:
    """A live emulator: its URL, a kubeconfig pointing at it, and a client for the test thread."""

    url: str
    kubeconfig: pathlib.Path
    client: KubeClient
    emulator: SFTJobEmulator
    loop: asyncio.AbstractEventLoop

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
        """Run ``fn(*args)`` on the emulator's loop (awaiting it if it is a coroutine) and return its result.

        Use it to touch the emulator itself (``emulator.objects``, reactions)
        without racing the server thread.
        """

        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)


def write_kubeconfig(path: pathlib.Path, server: str, namespace: str = "default") -> pathlib.Path:
    """Write a kubeconfig whose current context points at ``server`` with a dummy token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "emulator", "user": {"token": KUBECONFIG_TOKEN}}],
        "contexts": [
            {"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}
        ],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@contextlib.contextmanager
def running_emulator(
    *,
    crds: tuple[Mapping[str, Any] | str | pathlib.Path, ...] = (),
    host: str = "127.0.0.1",
    startup_timeout: float = 30.0,
    shutdown_timeout: float = 10.0,
) -> Iterator[RunningEmulator]:
    """Serve a fresh :class:`SFTJobEmulator` on a free port of ``host`` from a background thread.

    Yields a :class:`RunningEmulator` (``.url``, ``.client``, ``.kubeconfig``).
    Extra CRDs (manifests or YAML paths) are declared before serving. Stop
    operators before leaving the block; if one is still connected, its watch
    streams are ended so that shutdown does not wait for it.
    """
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="sftjob-kube-"))
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        emulator = SFTJobEmulator()
        for crd in crds:
            emulator.declare_crd(crd)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((host, 0))
        server = aiohttp.web.Server(emulator, handler_cancellation=True, access_log=None)
        runner = aiohttp.web.ServerRunner(server, shutdown_timeout=shutdown_timeout / 2)
        async with emulator:
            await runner.setup()
            try:
                await aiohttp.web.SockSite(runner, sock).start()
                stop = asyncio.Event()
                state.update(emulator=emulator, loop=asyncio.get_running_loop(), stop=stop, port=sock.getsockname()[1])
                ready.set()
                await stop.wait()
            finally:
                await emulator.close_streams()
                await runner.cleanup()

    def thread_main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as e:  # reported to the test thread, which would otherwise wait forever
            state["error"] = e
            ready.set()

    thread = threading.Thread(target=thread_main, name="kube-emulator", daemon=True)
    thread.start()
    try:
        if not ready.wait(startup_timeout):
            raise RuntimeError(f"the Kubernetes emulator did not start within {startup_timeout}s")
        if "error" in state:
            raise RuntimeError("the Kubernetes emulator failed to start") from state["error"]
        url = f"http://{host}:{state['port']}"
        yield RunningEmulator(
            url=url,
            kubeconfig=write_kubeconfig(tmp / "kubeconfig", url),
            client=KubeClient(url, token=KUBECONFIG_TOKEN),
            emulator=state["emulator"],
            loop=state["loop"],
        )
    finally:
        if "stop" in state:
            state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(shutdown_timeout)
        shutil.rmtree(tmp, ignore_errors=True)
        if thread.is_alive():
            raise RuntimeError(f"the Kubernetes emulator did not stop within {shutdown_timeout}s")
        if "error" in state and "port" in state:
            raise RuntimeError("the Kubernetes emulator failed while serving") from state["error"]
