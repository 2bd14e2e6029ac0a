"""The blob configuration source's rules, with an in-memory blob and a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shared.config_source import BlobConfigSource, FileConfigSource
from shared.errors import ConcurrencyError, ConfigError, TemporaryError
from shared.settings import AppSettings
from tests.harness import config_dict


class MemoryBlob:
    def __init__(self) -> None:
        self.content: bytes | None = None
        self.version = 0
        self.heads = 0
        self.downloads = 0
        self.fail: Exception | None = None

    def put(self, text: str) -> None:
        self.content, self.version = text.encode(), self.version + 1

    def etag(self) -> str:
        self.heads += 1
        if self.fail is not None:
            raise self.fail
        if self.content is None:
            raise ConfigError("blob c/n does not exist")
        return f'"{self.version}"'

    def read(self, etag: str) -> bytes:
        self.downloads += 1
        if etag != f'"{self.version}"':
            raise ConcurrencyError("changed")
        assert self.content is not None
        return self.content


class Ticks:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def yaml_config(max_concurrent: int) -> str:
    return yaml.safe_dump(config_dict({"linux": 1}, maxConcurrentNodes=max_concurrent))


@pytest.fixture
def blob() -> MemoryBlob:
    return MemoryBlob()


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


@pytest.fixture
def source(blob: MemoryBlob, ticks: Ticks) -> BlobConfigSource:
    return BlobConfigSource(blob, where="c/n", refresh=30, monotonic=ticks, now=lambda: 1_800_000_000.0)


def test_the_blob_is_looked_at_no_more_than_every_refresh_seconds(
    blob: MemoryBlob, ticks: Ticks, source: BlobConfigSource
) -> None:
    blob.put(yaml_config(5))
    for _ in range(10):
        assert source.current().clusters[0].max_concurrent_nodes == 5
    assert (blob.heads, blob.downloads) == (1, 1)
    blob.put(yaml_config(6))
    ticks.t = 29
    assert source.current().clusters[0].max_concurrent_nodes == 5
    ticks.t = 30
    assert source.current().clusters[0].max_concurrent_nodes == 6
    ticks.t = 60
    source.current()
    assert (blob.heads, blob.downloads) == (3, 2)  # an unchanged ETag is not downloaded


def test_a_refused_version_is_not_parsed_again_until_it_changes(
    blob: MemoryBlob, ticks: Ticks, source: BlobConfigSource
) -> None:
    blob.put(yaml_config(5))
    source.current()
    blob.put("clusters: [unclosed")
    for step in range(1, 4):
        ticks.t = 30 * step
        assert source.current().clusters[0].max_concurrent_nodes == 5
    assert blob.downloads == 2
    status = source.status()
    assert status["state"] == "refused" and "not valid YAML" in status["refused"]["reason"]


@pytest.mark.parametrize(
    "content, named",
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"clusters: [", "not valid YAML"),
        (b"clusters: []", "clusters: List should have at least 1 item"),
        (b"- a list", "(top level)"),
    ],
)
def test_a_first_version_that_is_invalid_leaves_no_configuration_and_says_why(
    blob: MemoryBlob, source: BlobConfigSource, content: bytes, named: str
) -> None:
    blob.content, blob.version = content, 1
    with pytest.raises(ConfigError, match="no earlier version is in force") as refused:
        source.current()
    assert named in str(refused.value)
    assert source.status()["acting"] is False


def test_a_blob_unreadable_for_a_moment_keeps_the_version_in_force(
    blob: MemoryBlob, ticks: Ticks, source: BlobConfigSource
) -> None:
    blob.put(yaml_config(5))
    source.current()
    blob.fail = TemporaryError("503 ServerBusy")
    ticks.t = 30
    assert source.current().clusters[0].max_concurrent_nodes == 5
    status = source.status()
    assert status["state"] == "unreadable" and "ServerBusy" in status["unreadable"]["reason"]
    blob.fail = None
    ticks.t = 60
    source.current()
    assert source.status()["state"] == "ok"


@pytest.mark.parametrize("value", ["just-a-container", "/name", "container/"])
def test_a_config_blob_setting_that_is_not_container_slash_name_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="PATCHER_CONFIG_BLOB must be CONTAINER/BLOB_NAME"):
        AppSettings.from_env(
            {"PATCHER_CONFIG_BLOB": value, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
        )


def test_a_config_blob_stands_in_for_the_config_path() -> None:
    settings = AppSettings.from_env(
        {"PATCHER_CONFIG_BLOB": "cfg/prod/patcher.yaml", "AzureWebJobsStorage__accountName": "stpatcher"}
    )
    assert settings.config_blob == "cfg/prod/patcher.yaml" and settings.config_path == ""
    assert settings.blob_service_uri == "https://stpatcher.blob.core.windows.net"


def test_the_packaged_file_is_read_once_and_its_status_says_so(tmp_path: Path) -> None:
    path = tmp_path / "patcher.yaml"
    path.write_text(yaml_config(5), encoding="utf-8")
    source = FileConfigSource(str(path))
    assert source.current() is source.current()
    assert source.status()["state"] == "ok" and source.status()["source"] == "file"


def test_an_invalid_packaged_file_is_refused_with_the_field_named(tmp_path: Path) -> None:
    path = tmp_path / "patcher.yaml"
    path.write_text("clusters: []\n", encoding="utf-8")
    status = FileConfigSource(str(path)).status()
    assert status["state"] == "refused" and "clusters" in status["reason"]
