"""Authenticated handlers under ``/fednb/``: the browser's only way to a domain.

Each handler requires a Jupyter login (no Jupyter token: 403), accepts only configured
domain names and well-formed ids, calls the domain with the token kept on the server,
and answers the domain's JSON (which never holds a token). A domain that refuses the
configured token answers 502 here, so JupyterLab does not take it for its own login.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from fednb.client import Transport
from fednb.client.review import fetch_review
from fednb.errors import AuthenticationError, FednbError
from fednb.lab._config import DomainEntry, FednbLab
from fednb.lab._templates import AUDIT_LIMIT, template_json, templates_overview

__all__ = ["setup_handlers"]

_NAME = r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,63})"
_ID = r"(?P<item>[A-Za-z0-9_-]{8,64})"
_TEMPLATE = r"(?P<template>[A-Za-z0-9][A-Za-z0-9._-]{0,47})"


class Lab:
    """The configured domains and one HTTP transport per domain (made on first use)."""

    def __init__(self, config: FednbLab, log: logging.Logger) -> None:
        self.config, self.log = config, log
        self._transports: dict[DomainEntry, Transport] = {}
        self._lock = threading.Lock()

    def entries(self) -> list[DomainEntry]:
        return self.config.entries()

    def transport(self, name: str) -> Transport:
        entry = next((e for e in self.entries() if e.name == name), None)
        if entry is None:
            raise web.HTTPError(404, f"no domain {name!r} is configured")
        with self._lock:
            if entry not in self._transports:
                self._transports[entry] = Transport(
                    None if entry.relay else entry.url, entry.token, insecure=self.config.insecure,
                    timeout=self.config.timeout, relay=entry.relay, domain=entry.relay_name,
                    identity=entry.identity,
                )
            return self._transports[entry]


class _Base(APIHandler):
    lab: Lab
    auth_resource = "fednb"  # for jupyter_server's Authorizer: reading and reviewing requests

    def initialize(self, lab: Lab) -> None:
        self.lab = lab

    async def domain(self, name: str, method: str, path: str, **kw: Any) -> Any:
        """Call the domain off the event loop; its errors become this handler's."""
        return await self.with_transport(name, lambda t: t.json(method, path, **kw))

    async def with_transport(self, name: str, fn: Callable[[Transport], Any]) -> Any:
        """Run ``fn`` with the domain's transport off the event loop; its errors become ours."""
        try:
            t = self.lab.transport(name)
            return await asyncio.to_thread(fn, t)
        except AuthenticationError as exc:
            raise _Refused(502, f"domain {name!r} refused the configured token: {exc.message}") from None
        except FednbError as exc:  # the domain's answer, or a configuration it cannot be reached with
            raise _Refused(exc.status, exc.message, exc.code) from None

    def reply(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, _Refused):
            self.set_status(exc.status)
            self.reply({"error": {"code": exc.code, "message": exc.message}})
            return
        reason = getattr(exc, "log_message", None) or self._reason
        self.reply({"error": {"code": "http_error", "message": str(reason)}})

    def body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise _Refused(400, "the body is not JSON", "invalid_input") from None
        if not isinstance(data, dict):
            raise _Refused(400, "the body must be a JSON object", "invalid_input")
        return data


class _Refused(web.HTTPError):
    def __init__(self, status: int, message: str, code: str = "domain_error") -> None:
        super().__init__(status, message.replace("%", "%%"))
        self.status, self.message, self.code = status, message, code


class DomainsHandler(_Base):
    """The configured domains, who we are on each, and the counts the status bar shows."""

    async def _one(self, e: DomainEntry) -> dict[str, Any]:
        out: dict[str, Any] = {"name": e.name, "url": e.address}
        try:
            me = await self.domain(e.name, "GET", "/me")
            info = await self.domain(e.name, "GET", "/info")
            owner = me["role"] == "owner"
            pending = await self.domain(e.name, "GET", "/requests", params={"status": "pending"})
            held = (
                await self.domain(e.name, "GET", "/runs", params={"release_state": "held"}) if owner else []
            )
            out.update(
                title=info["name"],
                user=me["name"],
                role=me["role"],
                pending=len(pending),
                held=len(held),
                error=None,
            )
        except (web.HTTPError, FednbError) as exc:  # one domain's trouble is shown, not raised
            out.update(
                title=e.name,
                user=None,
                role=None,
                pending=0,
                held=0,
                error=getattr(exc, "message", None) or str(exc),
            )
        return out

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        try:
            entries = self.lab.entries()
        except FednbError as exc:
            raise _Refused(500, f"fednb lab configuration: {exc.message}", exc.code) from None
        self.reply(list(await asyncio.gather(*(self._one(e) for e in entries))))


class RequestsHandler(_Base):
    @web.authenticated
    @authorized("read")
    async def get(self, name: str) -> None:
        status = self.get_query_argument("status", None)
        if status not in (None, "pending", "approved", "denied"):
            raise _Refused(400, "status must be pending, approved or denied", "invalid_input")
        self.reply(await self.domain(name, "GET", "/requests", params={"status": status} if status else None))


class RequestHandler(_Base):
    @web.authenticated
    @authorized("read")
    async def get(self, name: str, item: str) -> None:
        self.reply(await self.domain(name, "GET", f"/requests/{item}"))


class ReviewHandler(_Base):
    @web.authenticated
    @authorized("write")
    async def post(self, name: str, item: str, action: str) -> None:
        body = self.body()
        if action == "approve":
            payload = {"release": body.get("release", "manual")}
        else:
            payload = {"reason": str(body.get("reason", ""))}
        self.reply(await self.domain(name, "POST", f"/requests/{item}/{action}", json=payload))


class RunsHandler(_Base):
    @web.authenticated
    @authorized("read")
    async def get(self, name: str) -> None:
        params = {
            k: v
            for k in ("release_state", "request_id")
            if (v := self.get_query_argument(k, None)) is not None
        }
        self.reply(await self.domain(name, "GET", "/runs", params=params or None))


class ReleaseHandler(_Base):
    @web.authenticated
    @authorized("write")
    async def post(self, name: str, item: str, action: str) -> None:
        self.reply(await self.domain(name, "POST", f"/runs/{item}/{action}"))


class ResultReviewHandler(_Base):
    """A run's result as the owner reviews it before release (fednb.client.review): values
    or summaries, metrics, parameters, the change since the previous release."""

    @web.authenticated
    @authorized("read")
    async def get(self, name: str, item: str) -> None:
        self.reply(await self.with_transport(name, lambda t: fetch_review(t, item)))


class BudgetHandler(_Base):
    @web.authenticated
    @authorized("read")
    async def get(self, name: str) -> None:
        self.reply(await self.domain(name, "GET", "/budget"))


class TemplatesHandler(_Base):
    """(Owner) the domain's stats templates, the requests they approved and the disclosure
    refusals (fednb.lab._templates); a scientist's token is refused by the domain (403)."""

    @web.authenticated
    @authorized("read")
    async def get(self, name: str) -> None:
        raw = self.get_query_argument("limit", str(AUDIT_LIMIT))
        if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
            raise _Refused(400, "limit must be a whole number from 1 to 10000", "invalid_input")
        self.reply(await self.with_transport(name, lambda t: templates_overview(t, int(raw))))


class TemplateApproveHandler(_Base):
    """(Owner) a second owner's approval of a two-reviewer template, which makes it active."""

    @web.authenticated
    @authorized("write")
    async def post(self, name: str, template: str) -> None:
        self.reply(template_json(await self.domain(name, "POST", f"/templates/{template}/approve")))


def setup_handlers(web_app: Any, config: FednbLab, log: logging.Logger) -> None:
    base = url_path_join(web_app.settings["base_url"], "fednb")
    lab = Lab(config, log)
    routes: list[tuple[str, type[_Base]]] = [
        (r"/domains", DomainsHandler),
        (rf"/domains/{_NAME}/requests", RequestsHandler),
        (rf"/domains/{_NAME}/requests/{_ID}", RequestHandler),
        (rf"/domains/{_NAME}/requests/{_ID}/(?P<action>approve|deny)", ReviewHandler),
        (rf"/domains/{_NAME}/runs", RunsHandler),
        (rf"/domains/{_NAME}/runs/{_ID}/(?P<action>release|withhold)", ReleaseHandler),
        (rf"/domains/{_NAME}/runs/{_ID}/review", ResultReviewHandler),
        (rf"/domains/{_NAME}/budget", BudgetHandler),
        (rf"/domains/{_NAME}/templates", TemplatesHandler),
        (rf"/domains/{_NAME}/templates/{_TEMPLATE}/approve", TemplateApproveHandler),
    ]
    web_app.add_handlers(".*$", [(base + path, cls, {"lab": lab}) for path, cls in routes])
