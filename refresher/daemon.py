"""Wires config → store → platforms → refresher → scheduler → server; owns signals, sd_notify, shutdown.

Signals: SIGTERM/SIGINT stop claiming, let in-flight refreshes finish within the grace period (a refresh
that cannot finish is cancelled and its lease left to expire, so its unknown outcome is settled later),
then stop the server and exit 0. SIGHUP reloads the config; a bad new config is refused with one log line
and the old one keeps running.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from refresher import platforms as registry
from refresher.alerts import AlertPolicy, Dispatcher, HookDispatcher, build_channels
from refresher.alerts.alarm_deliveries import DeliveryRecorder
from refresher.alerts.event_delivery import EventDeliverer
from refresher.alerts.events import RefreshEvent
from refresher.alerts.lifecycle import LifecycleEvents
from refresher.config import ConfigFileError, Settings, load_config
from refresher.config.checks import reload_problem
from refresher.domain import AccountStatus, Clock, ConfigError, SystemClock, TokenSet
from refresher.health import StoreWatch
from refresher.invites import reauth_url
from refresher.logging import configure_logging
from refresher.metrics import Metrics
from refresher.owners import is_dead_predecessor, new_owner
from refresher.platforms.base import Platform, make_http_client
from refresher.pruning import Pruner
from refresher.redaction import register_secrets
from refresher.refresh import Refresher
from refresher.scheduler import Scheduler
from refresher.server.app import create_app
from refresher.server.http import EmbeddedServer, bind_listener, start_server, stop_server
from refresher.store import open_store
from refresher.store.base import Account, StoreError
from refresher.store.roles import Store
from refresher.systemd import Notifier

log = structlog.get_logger("refresher.daemon")

SHUTDOWN_GRACE = 20.0


class PortUnavailable(ConfigError):
    """``server.host:port`` cannot be bound (taken by another process, or not an address of this host)."""


def default_owner() -> str:
    """A lease owner id unique to this process, that a restarted successor can recognise (see owners)."""
    return new_owner()


def build_platforms(settings: Settings, http: httpx.AsyncClient, clock: Clock) -> dict[str, Platform]:
    """One plugin instance per configured app."""
    built = {}
    for name, app in settings.apps.items():
        built[name] = registry.get(app.platform)(app, http=http, clock=clock)
    return built


class Daemon:
    """The long-running job behind ``refresher run``."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        owner: str | None = None,
        notifier: Notifier | None = None,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = Path(config_path) if config_path else None
        self.clock: Clock = clock or SystemClock()
        self.owner = owner or default_owner()
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.store: Store = store or open_store(settings.store, self.clock)
        self.http = make_http_client()
        # Built once, here, in dependency order: the plugins, then the refresher that uses them (its
        # policies are resolved from both, once); a reload replaces both through apply_settings.
        self._platforms: dict[str, Platform] = build_platforms(settings, self.http, self.clock)
        self.dispatcher = Dispatcher(metrics=self.metrics)
        channels = build_channels(settings.alerts)
        self.alerts = AlertPolicy(
            settings.alerts,
            self.store,
            channels,
            self.clock,
            reauth_link=self.reauth_link,
            dispatcher=self.dispatcher,
        )
        # Account lifecycle events for integrators (docs/events.md): stored in the outbox, delivered by
        # this process (or another replica) through the same webhook channels, and the app's hooks.
        self.deliverer = EventDeliverer(
            self.store, settings, channels, clock=self.clock, owner=self.owner, metrics=self.metrics
        )
        self.lifecycle = LifecycleEvents(clock=self.clock, store=self.store, wake=self.deliverer.wake)
        self.alerts.lifecycle = self.lifecycle  # needs_reauth, refresh_failed and resolved follow the alarms
        self.alerts.deliveries = DeliveryRecorder(self.store, self.clock)  # per alarm and channel, for /ui/alarms
        self.hooks = HookDispatcher(settings, dispatcher=self.dispatcher)
        self.refresher = Refresher(
            settings,
            self.store,
            self._platforms,
            self.clock,
            self.owner,
            listeners=[self._on_refresh],
            on_store=self._store_report,
        )
        self.store_watch = StoreWatch(self.store, self.notifier, self._store_outage, settings.alerts.store_outage)
        self.store_health = self.store_watch.health
        self.scheduler = Scheduler(self.tick, urgent_retry=self.store.earliest_urgent_retry)
        self._server: EmbeddedServer | None = None
        self._server_task: asyncio.Task[None] | None = None
        self.port: int | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.extra_routes: list[Any] = []
        self.pruner = Pruner(self.store)

    # -- Runtime (what the HTTP routes see) -------------------------------------------------------------

    @property
    def platforms(self) -> Mapping[str, Platform]:
        return self._platforms

    async def readiness(self) -> dict[str, str]:
        problems: dict[str, str] = {}
        store_problem = await self.store_watch.readiness()
        if store_problem is not None:
            problems["store"] = store_problem
        if not self.scheduler.running:
            problems["scheduler"] = "not running"
        return problems

    def metrics_payload(self) -> tuple[bytes, str]:
        return self.metrics.render(), self.metrics.content_type

    def reauth_link(self, app: str, account_key: str) -> str | None:
        """Where a seller re-authorizes: a signed invitation bound to the account (server.invite_secret), or
        the plain connect page when connecting needs no invitation; None without server.public_url."""
        server = self.settings.server
        secret = server.invite_secret.get_secret_value() if server.invite_secret else None
        link = reauth_url(
            server.public_url, app, account_key, secret=secret, ttl=server.reauth_link_ttl, clock=self.clock
        )
        if link is None and server.public_url and not server.connect_requires_auth:
            return f"{server.public_url.rstrip('/')}/connect/{quote(app, safe='')}"
        return link

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self, *, schedule: bool = True) -> None:
        """Open the store, build the plugins, start the scheduler (unless ``schedule`` is false: simulated
        time drives :meth:`tick` itself) and the HTTP server."""
        register_secrets(self.settings.secrets())
        # The port first: a second daemon on a busy port must stop here, before it opens the store or
        # starts a single refresh (it used to run its sweeps, then fail at the bind with tracebacks).
        listener = None
        if self.settings.server.enabled:
            host, port = self.settings.server.host, self.settings.server.port
            try:
                listener = bind_listener(host, port)
            except OSError as exc:
                hint = " (another refresher running? stop it or choose another server.port)"
                busy = hint if exc.errno == errno.EADDRINUSE else ""
                reason = exc.strerror or type(exc).__name__
                raise PortUnavailable(f"server.port: cannot listen on {host}:{port}: {reason}{busy}") from None
        self.notifier.status("opening the token store")
        await self.store.open()
        await self.reclaim_dead_leases()
        if not self.store.encrypted:
            log.warning(
                "store.unencrypted",
                detail="tokens are stored in clear; set store.encryption_keys to encrypt them at rest",
            )
        await self.dispatcher.start()
        await self.deliverer.start()  # also what a predecessor stored and did not deliver
        self.store_watch.start()
        self.scheduler.configure(self.settings, _plugin_classes(self.settings, self._platforms))
        if schedule:
            self.scheduler.start()
        if self.settings.server.enabled:
            app = create_app(self)
            for router in self.extra_routes:
                app.include_router(router)
            self._server, self._server_task, self.port = await start_server(
                app,
                self.settings.server.host,
                self.settings.server.port,
                access_log=self.settings.logging.access_log,
                sock=listener,
            )
        apps = ", ".join(sorted(self._platforms)) or "none"
        log.info(
            "daemon.started",
            owner=self.owner,
            apps=apps,
            store=_safe_url(self.settings.store.url),
            http=f"{self.settings.server.host}:{self.port}" if self.port else None,
        )
        self.notifier.ready(f"refreshing {len(self._platforms)} app(s)")

    async def tick(self, app: str) -> None:
        """One scheduled sweep of an app, then its follow-ups (expiry warnings, gauges, pruning)."""
        started = asyncio.get_running_loop().time()
        outcome = "ok"
        try:
            try:
                result = await self.refresher.sweep(app)
            except StoreError as exc:
                self._store_report(exc)  # the claim itself failed: nothing of this sweep is leased
                raise
            if result.claimed:
                log.info(
                    "sweep",
                    app=app,
                    claimed=result.claimed,
                    succeeded=result.succeeded,
                    failed=result.failed,
                    skipped=result.skipped,
                )
            await self._after_sweep(app)
        except Exception:
            outcome = "error"
            raise
        finally:
            self.metrics.sweep_finished(app, outcome, asyncio.get_running_loop().time() - started)

    async def _after_sweep(self, app: str) -> None:
        now = self.clock.now()
        expiring = await self.store.accounts_refresh_expiring(app, now + self.settings.alerts.reauth_warning)
        if expiring:
            await self.alerts.check_expiring(expiring)
        stranded = await self.store.expired_while_leased(app)
        if stranded:
            log.error("accounts.expired_while_leased", app=app, accounts=[a.key for a in stranded[:20]])
            await self.alerts.check_expired_while_leased(stranded)
        counts = await self.store.count_by_status(app)
        for status, count in counts.items():
            self.metrics.set_accounts(app, str(status), count)

        async def waiting() -> list[str]:
            listed = await self.store.list(app=app, status=AccountStatus.NEEDS_REAUTH, limit=1000, secrets=False)
            return [account.key for account in listed]

        # needs_reauth accounts get no more refresh events to repeat on (or, after a crash, to alarm on)
        await self.alerts.remind(app, counts.get(AccountStatus.NEEDS_REAUTH, 0), waiting)
        earliest = await self.store.earliest_expiry(app)
        self.metrics.set_earliest_expiry(app, (earliest - now).total_seconds() if earliest else None)
        await self.pruner.after_sweep(now, self.settings.store.audit_retention)

    def _store_report(self, error: BaseException | None) -> None:
        self.store_watch.report(error)

    def _store_outage(self, verdict: str, seconds: float, last_error: str | None) -> None:
        self.alerts.store_outage(verdict, seconds, last_error)

    async def _on_refresh(self, event: RefreshEvent, account: Account, tokens: TokenSet | None) -> None:
        self.metrics.refresh_finished(event)
        await self.alerts.observe(event)
        app = self.settings.apps.get(event.app)
        if app is not None:
            await self.hooks.refreshed(app, event, account, tokens)

    async def accounts_authorized(self, app: str, accounts: Sequence[Account]) -> None:
        """A seller (re-)authorized: what was wrong with these accounts is fixed, so close their alarms."""
        for account in accounts:
            event = RefreshEvent(
                app=app,
                platform=account.platform,
                account_key=account.key,
                account_name=account.identity.name,
                outcome="success",
                error=None,
                consecutive_failures=0,
                status=account.status,
                access_expires_at=account.tokens.access_expires_at if account.tokens else None,
                refresh_expires_at=account.tokens.refresh_expires_at if account.tokens else None,
                at=self.clock.now(),
                attempts=0,
                duration_ms=0,
            )
            try:
                await self.alerts.observe(event)
            except Exception:
                log.exception("alerts.observe_failed", app=app, account=account.key)
            log.info("account.authorized", app=app, account=account.key, name=account.identity.name)

    async def reload(self) -> bool:
        """Re-read the config file; apply it if valid, else keep running on the old one."""
        if self.config_path is None:
            log.warning("config.reload_skipped", reason="started without a config file")
            return False
        self.notifier.reloading()
        try:
            new = load_config(
                self.config_path,
                credential_models=registry.credential_models(),
                access_lifetimes=registry.access_lifetimes(),
            )
            problem = reload_problem(self.settings, new)
            reason = f"{self.config_path}: {problem}" if problem else None
        except ConfigFileError as exc:
            reason = str(exc).splitlines()[0]
        if reason is not None:
            log.error("config.reload_refused", reason=reason, keeping="the running configuration")
            self.notifier.ready("reload refused; running on the previous configuration")
            return False
        register_secrets(new.secrets())
        self.settings = new
        self._platforms = build_platforms(new, self.http, self.clock)
        self.refresher.platforms = dict(self._platforms)
        self.refresher.apply_settings(new)
        self.scheduler.configure(new, _plugin_classes(new, self._platforms))
        channels = build_channels(new.alerts)
        self.alerts.apply_settings(new.alerts, channels)
        self.deliverer.apply_settings(new, channels)
        self.store_watch.apply_settings(new.alerts.store_outage)
        self.hooks.apply_settings(new)
        configure_logging(new.logging)
        log.info("config.reloaded", apps=", ".join(sorted(new.apps)))
        self.notifier.ready("configuration reloaded")
        return True

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop claiming, drain in-flight refreshes within ``grace``, then close everything."""
        self.notifier.stopping()
        log.info("daemon.stopping", grace_seconds=grace)
        self.scheduler.pause()
        self.refresher.stop()
        drained = await self.scheduler.drain(grace)
        if not drained:
            log.warning("daemon.drain_timeout", detail="cancelling refreshes still in flight")
            self.scheduler.cancel_running()
            await self.scheduler.drain(5)
        self.scheduler.shutdown()
        self.store_watch.stop()
        if self._server is not None and self._server_task is not None:
            await stop_server(self._server, self._server_task)
        await self.dispatcher.aclose(grace=5)
        await self.deliverer.aclose(grace=5)
        await self.http.aclose()
        await self.store.close()
        log.info("daemon.stopped")

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; SIGHUP reloads. Returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        await self.start()
        watchdog = asyncio.create_task(self.store_watch.watchdog(), name="watchdog")
        try:
            while not self._stop.is_set():
                waiters = [asyncio.create_task(self._stop.wait()), asyncio.create_task(self._reload.wait())]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    await self.reload()
        finally:
            watchdog.cancel()
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    async def reclaim_dead_leases(self) -> int:
        """Give back at once the leases of dead processes this one can recognise (its own predecessor
        after a crash or kill -9), instead of leaving their accounts untouched until the leases expire."""
        reclaimed = 0
        for holder in await self.store.lease_holders():
            if is_dead_predecessor(holder, self.owner):
                count = await self.store.release_owner(holder)
                reclaimed += count
                log.warning("leases.reclaimed", dead_owner=holder, accounts=count)
        for holder in await self.store.event_lease_holders():  # its undelivered lifecycle events too
            if is_dead_predecessor(holder, self.owner):
                count = await self.store.release_event_leases(holder)
                log.warning("leases.reclaimed", dead_owner=holder, events=count)
        return reclaimed


def _plugin_classes(settings: Settings, platforms: Mapping[str, Platform]) -> dict[str, type[Platform]]:
    """Platform name -> plugin class, as the scheduler wants them."""
    return {app.platform: type(platforms[name]) for name, app in settings.apps.items()}


def _safe_url(url: str) -> str:
    """A store URL without its password, for logs."""
    parsed = httpx.URL(url) if "://" in url else None
    if parsed is None or not parsed.password:
        return url
    return url.replace(f":{parsed.password}@", ":***@")
