"""Where the YAML configuration comes from: the packaged file, or a blob that can change
without a republish.

A blob (``PATCHER_CONFIG_BLOB`` = ``container/name`` in the app's own storage account) is
looked at again at most every ``PATCHER_CONFIG_REFRESH`` seconds: one HEAD for its ETag,
and a download of exactly that version (``If-Match``) only when the ETag is new. A new
version is validated as the file is at start-up; one that fails is refused with the field
and the value named (logged, and shown by ``GET /api/config``), and the last good version
stays in force. With no good version at all (the first one read is invalid, or the blob
cannot be read) the app refuses to act, with the reason, while its status endpoints still
answer: the collaborators then carry a ``RefusedConfig``, which raises that reason on any
use. A version refused once is not parsed again on every look; a blob that cannot be read
for a moment keeps the version in force.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from shared.clock import iso
from shared.config import PatcherConfig, load_config, parse_config_text
from shared.errors import ConcurrencyError, ConfigError

logger = logging.getLogger(__name__)


class ConfigSource(Protocol):
    def current(self) -> PatcherConfig:
        """The configuration in force; ConfigError when there is none."""
        ...

    def status(self) -> dict[str, Any]: ...


class BlobReader(Protocol):
    """One blob: its ETag now, and the content of the version with a given ETag."""

    def etag(self) -> str: ...

    def read(self, etag: str) -> bytes:
        """ConcurrencyError if the blob no longer has that ETag."""
        ...


class RefusedConfig:
    """Stands in for the configuration when there is none: every use says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __getattr__(self, name: str) -> NoReturn:
        raise ConfigError(f"the app refuses to act: {self.reason}")


class FileConfigSource:
    """The packaged file, read once (a change is a republish, which restarts the app)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._config: PatcherConfig | None = None
        self._loaded_at = ""
        self._lock = threading.Lock()

    def current(self) -> PatcherConfig:
        with self._lock:
            if self._config is None:
                self._config = load_config(self.path)
                self._loaded_at = iso(time.time())
            return self._config

    def status(self) -> dict[str, Any]:
        try:
            self.current()
        except ConfigError as exc:
            return {
                "source": "file",
                "path": self.path,
                "state": "refused",
                "reason": str(exc),
                "inForce": None,
            }
        return {"source": "file", "path": self.path, "state": "ok", "inForce": {"loadedAt": self._loaded_at}}


class BlobConfigSource:
    def __init__(
        self,
        reader: BlobReader,
        *,
        where: str,
        refresh: float,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.where = where
        self.refresh = refresh
        self._reader = reader
        self._monotonic, self._now = monotonic, now
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._good: tuple[PatcherConfig, str, str] | None = None  # config, ETag, loaded at
        self._refused: dict[str, str] | None = None  # the latest version refused, and why
        self._unreadable: dict[str, str] | None = None  # the latest look failed, and why
        self._checked_at = ""

    def current(self) -> PatcherConfig:
        due = self._monotonic() - self._checked >= self.refresh
        # One thread looks; the others carry on with the version in force meanwhile (with
        # none in force yet they wait for the look).
        if due and self._lock.acquire(blocking=self._good is None):
            try:
                if self._monotonic() - self._checked >= self.refresh:
                    self._check()
            finally:
                self._lock.release()
        good = self._good
        if good is None:
            raise ConfigError(self._why_none())
        return good[0]

    def _why_none(self) -> str:
        if self._refused is not None:
            return (
                f"configuration blob {self.where} version {self._refused['etag']} was refused and no "
                f"earlier version is in force: {self._refused['reason']}"
            )
        if self._unreadable is not None:
            return f"configuration blob {self.where} cannot be read: {self._unreadable['reason']}"
        return f"configuration blob {self.where} has not been read yet"

    def _check(self) -> None:
        self._checked, self._checked_at = self._monotonic(), iso(self._now())
        try:
            etag = self._reader.etag()
            seen = {self._good[1] if self._good else None, self._refused["etag"] if self._refused else None}
            if etag in seen:
                self._unreadable = None
                return
            content = self._reader.read(etag)
        except ConcurrencyError:
            self._checked = float("-inf")  # changed between the two calls: look again at once
            return
        except Exception as exc:  # whatever the reason, the version in force stays
            self._unreadable = {"at": self._checked_at, "reason": str(exc) or type(exc).__name__}
            logger.warning("configuration blob %s not read (%s); the version in force stays", self.where, exc)
            return
        self._unreadable = None
        try:
            config = _parse(content, source=f"configuration blob {self.where} (version {etag})")
        except ConfigError as exc:
            self._refused = {"etag": etag, "at": self._checked_at, "reason": str(exc)}
            in_force = f"version {self._good[1]} stays in force" if self._good else "no version is in force"
            logger.error("%s; %s", exc, in_force)
            return
        self._good, self._refused = (config, etag, self._checked_at), None
        logger.warning("configuration blob %s: version %s is in force", self.where, etag)

    def status(self) -> dict[str, Any]:
        with contextlib.suppress(ConfigError):  # the state below says why
            self.current()
        good = self._good
        if self._refused:
            state = "refused"
        elif self._unreadable or not good:
            state = "unreadable"
        else:
            state = "ok"
        return {
            "source": "blob",
            "blob": self.where,
            "state": state,
            "acting": good is not None,
            "refreshSeconds": self.refresh,
            "checkedAt": self._checked_at,
            "inForce": {"etag": good[1], "loadedAt": good[2]} if good else None,
            "refused": dict(self._refused) if self._refused else None,
            "unreadable": dict(self._unreadable) if self._unreadable else None,
            "reason": None if good else self._why_none(),
        }


def _parse(content: bytes, *, source: str) -> PatcherConfig:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    return parse_config_text(text, source=source)


class StorageBlobReader:
    """The blob through azure-storage-blob (imported when the first source is built)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def from_settings(cls, settings: Any) -> StorageBlobReader:
        from azure.storage.blob import BlobClient

        from shared.settings import storage_options

        container, _, name = str(settings.config_blob).partition("/")
        options = storage_options(settings)
        if settings.storage_connection_string:
            client = BlobClient.from_connection_string(
                settings.storage_connection_string, container, name, **options
            )
        else:
            from shared.settings import azure_credential

            client = BlobClient(
                settings.blob_service_uri, container, name, credential=azure_credential(), **options
            )
        return cls(client)

    def etag(self) -> str:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return str(self._client.get_blob_properties().etag)
        except ResourceNotFoundError:
            raise ConfigError(
                f"blob {self._client.container_name}/{self._client.blob_name} does not exist"
            ) from None

    def read(self, etag: str) -> bytes:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            return bytes(
                self._client.download_blob(etag=etag, match_condition=MatchConditions.IfNotModified).readall()
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise ConcurrencyError("the configuration blob changed while it was read") from None


def source_from_settings(settings: Any) -> ConfigSource:
    if settings.config_blob:
        return BlobConfigSource(
            StorageBlobReader.from_settings(settings),
            where=settings.config_blob,
            refresh=settings.config_refresh,
        )
    return FileConfigSource(settings.config_path)
