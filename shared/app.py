"""The composition root: real collaborators from app settings, built once per process.

Triggers call ``collaborators()``; nothing else in ``shared`` reads the environment. The
same code runs in Azure and in the sandbox: only the settings differ (endpoints, CA
bundle, durations in the configuration file).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from shared.clock import SystemClock
from shared.errors import ConfigError
from shared.rollout.ports import Collaborators
from shared.settings import AppSettings, azure_credential

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def settings() -> AppSettings:
    return AppSettings.from_env()


class _BuiltOnce:
    """Values built at most once per key, under a lock of their own; a value built already
    is handed out without taking it."""

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: str, build: Callable[[str], Any]) -> Any:
        built = self._built.get(key)
        if built is not None:
            return built
        with self._lock:
            if key not in self._built:
                self._built[key] = build(key)
            return self._built[key]


class _ClientCache:
    """Clients are expensive to build (TLS, token caches): keep one per cluster/subscription.

    The first of each kind also imports its SDK, which takes a cold worker a second or
    more. Each kind is built under its own lock, and a client built already is handed out
    without one: otherwise every step of a first wave waits, before its first call, for
    whichever step is importing the Compute SDK."""

    def __init__(self, app_settings: AppSettings, config: Any) -> None:
        self._settings = app_settings
        self.config = config
        self._kube = _BuiltOnce()
        self._compute = _BuiltOnce()
        self._timeout = (app_settings.connect_timeout, app_settings.read_timeout)

    def reconfigure(self, config: Any) -> None:
        """A new configuration may point a cluster at another API server or credential."""
        self.config, self._kube = config, _BuiltOnce()

    def kube(self, cluster: str) -> Any:
        return self._kube.get(cluster, self._build_kube)

    def compute(self, subscription: str) -> Any:
        return self._compute.get(subscription, self._build_compute)

    def _build_kube(self, cluster: str) -> Any:
        from shared.adapters.kube import KubeClient

        spec = self.config.cluster(cluster)
        proxy = spec.proxy.https if spec.proxy else None
        no_proxy = spec.proxy.no_proxy if spec.proxy else []
        if spec.azure_ad is not None:
            ad = spec.azure_ad
            ca = os.environ.get(ad.ca_setting, "") if ad.ca_setting else None
            if ad.ca_setting and not ca:
                raise ConfigError(f"app setting {ad.ca_setting} (CA of cluster {cluster}) is empty")
            return KubeClient.from_azure_ad(
                ad.server,
                credential=azure_credential(),
                audience=ad.audience,
                ca_pem=ca,
                proxy=proxy,
                no_proxy=no_proxy,
                timeout=self._timeout,
            )
        assert spec.kubeconfig is not None  # the config validator requires one of the two
        value = os.environ.get(spec.kubeconfig.setting, "")
        if not value:
            setting = spec.kubeconfig.setting
            raise ConfigError(f"app setting {setting} (kubeconfig of cluster {cluster}) is empty")
        try:
            return KubeClient.from_kubeconfig(value, proxy=proxy, no_proxy=no_proxy, timeout=self._timeout)
        except ConfigError as exc:  # its message never holds the setting's value
            setting = spec.kubeconfig.setting
            raise ConfigError(f"app setting {setting} (cluster {cluster}): {exc}") from None

    def _build_compute(self, subscription: str) -> Any:
        from shared.adapters.compute import ComputeClient

        return ComputeClient(
            subscription,
            endpoint=self._settings.arm_endpoint,
            audience=self._settings.arm_audience,
            credential=azure_credential(),
            connection_timeout=self._settings.connect_timeout,
            read_timeout=self._settings.read_timeout,
        )

    def warm(self) -> None:
        """Build every client the configuration names, ahead of use: a cold worker's first
        reimage then finds the Compute SDK loaded instead of loading it while a wave's
        first steps wait for the same CPU. Errors are left to the step that needs the
        client, which reports them."""
        subscriptions = sorted({p.scale_set["subscription"] for c in self.config.clusters for p in c.pools})
        builds = [(self.kube, c.name) for c in self.config.clusters] + [
            (self.compute, s) for s in subscriptions
        ]
        for build, key in builds:
            try:
                build(key)
            except Exception:
                logger.debug("client for %s not built ahead of use", key, exc_info=True)


_override: Collaborators | None = None


def use_collaborators(deps: Collaborators | None) -> None:
    """Run the triggers against other collaborators (functional tests use in-memory ones)."""
    global _override  # noqa: PLW0603 - the composition root is process-wide by nature
    _override = deps


def collaborators() -> Collaborators:
    if _override is not None:
        return _override
    try:
        config = config_source().current()
    except ConfigError as exc:
        return _refusing(str(exc))
    deps = _real_collaborators()
    return deps if deps.config is config else _reconfigured(deps, config)


@lru_cache(maxsize=1)
def config_source() -> Any:
    """The configuration's source (``shared.config_source``): the file, or a blob."""
    from shared.config_source import source_from_settings

    return source_from_settings(settings())


@lru_cache(maxsize=1)
def _storage() -> tuple[Any, Any]:
    from shared.adapters.workqueue import StorageWorkQueue
    from shared.rollout.store.table import TableRunStore

    app_settings = settings()
    return TableRunStore.from_settings(app_settings), StorageWorkQueue.from_settings(app_settings)


@lru_cache(maxsize=1)
def _real_collaborators() -> Collaborators:
    from shared.adapters.notify import ConfiguredNotifier

    cache = _client_cache()
    store, queue = _storage()
    return Collaborators(
        store=store,
        queue=queue,
        clock=SystemClock(),
        config=cache.config,
        kube=cache.kube,
        compute=cache.compute,
        notify=ConfiguredNotifier.from_config(cache.config),
    )


_latest: tuple[Any, Collaborators] | None = None
_latest_lock = threading.Lock()


def _reconfigured(deps: Collaborators, config: Any) -> Collaborators:
    """The collaborators for a configuration read since start-up (a new blob version)."""
    global _latest  # noqa: PLW0603 - one configuration in force per process
    with _latest_lock:
        if _latest is None or _latest[0] is not config:
            from dataclasses import replace

            from shared.adapters.notify import ConfiguredNotifier

            _client_cache().reconfigure(config)
            _latest = (config, replace(deps, config=config, notify=ConfiguredNotifier.from_config(config)))
        return _latest[1]


def _refusing(reason: str) -> Collaborators:
    """No configuration is in force: storage still answers the status endpoints; anything
    that needs the configuration (every action) raises ``reason``."""
    from shared.config_source import RefusedConfig

    def refuse(_key: str) -> Any:
        raise ConfigError(f"the app refuses to act: {reason}")

    store, queue = _storage()
    return Collaborators(
        store=store,
        queue=queue,
        clock=SystemClock(),
        config=RefusedConfig(reason),  # type: ignore[arg-type]
        kube=refuse,
        compute=refuse,
    )


@lru_cache(maxsize=1)
def _client_cache() -> _ClientCache:
    app_settings = settings()
    config = config_source().current()
    problem = timeout_problem(app_settings, config.workflow.lease_duration.total_seconds())
    if problem:
        logger.warning("%s", problem)
    return _ClientCache(app_settings, config)


def timeout_problem(app_settings: AppSettings, lease: float) -> str | None:
    """Why the call timeouts do not fit a step's lease, if they do not: one call that gets no
    answer must end well within the lease, or a second worker may take the node while the
    first still waits. (A warning, not a refusal: a shortened lease, as in the sandbox, is
    a test setting.)"""
    if app_settings.longest_call <= lease / 2:
        return None
    return (
        f"app settings PATCHER_CONNECT_TIMEOUT and PATCHER_READ_TIMEOUT let one call take up to "
        f"{app_settings.longest_call:g} s (2 x connect + read), more than half of "
        f"workflow.leaseDuration ({lease:g} s)"
    )


@lru_cache(maxsize=1)
def warm_clients() -> None:
    """Start building the clients a node worker will need, once per process and off the
    invocation that asks. Only the node work trigger does: an instance that serves only
    webhooks never needs the Compute SDK."""
    if _override is None:
        threading.Thread(target=_client_cache().warm, name="warm-clients", daemon=True).start()
