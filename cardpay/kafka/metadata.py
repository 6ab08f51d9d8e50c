"""A topic's identity: its Kafka topic id (a UUID the broker gives a topic when it is created).

A topic deleted and created again under the same name gets a new id and starts again at offset 0,
so offsets stored for the old topic mean nothing in the new one. aiokafka 0.14 asks for Metadata
up to v5, which has no topic id; this module sends Metadata v10 (Kafka 2.8+, flexible encoding),
which returns the topic id, and asks for one topic by name with auto-creation off.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError, for_code
from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)


class Uuid(AbstractType[bytes]):  # type: ignore[misc]
    """Kafka's UUID: 16 raw bytes (all zero = none)."""

    @classmethod
    def encode(cls, value: bytes) -> bytes:
        if len(value) != 16:
            raise ValueError("a UUID is 16 bytes")
        return value

    @classmethod
    def decode(cls, data: BytesIO) -> bytes:
        value = data.read(16)
        if len(value) != 16:
            raise ValueError("buffer underrun decoding a UUID")
        return value


class MetadataResponse_v10(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 10
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", CompactArray(("node_id", Int32), ("host", CompactString("utf-8")),
                                 ("port", Int32), ("rack", CompactString("utf-8")),
                                 ("tags", TaggedFields))),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        ("topics", CompactArray(
            ("error_code", Int16),
            ("name", CompactString("utf-8")),
            ("topic_id", Uuid),
            ("is_internal", Boolean),
            ("partitions", CompactArray(
                ("error_code", Int16),
                ("partition_index", Int32),
                ("leader_id", Int32),
                ("leader_epoch", Int32),
                ("replica_nodes", CompactArray(Int32)),
                ("isr_nodes", CompactArray(Int32)),
                ("offline_replicas", CompactArray(Int32)),
                ("tags", TaggedFields),
            )),
            ("topic_authorized_operations", Int32),
            ("tags", TaggedFields),
        )),
        ("cluster_authorized_operations", Int32),
        ("tags", TaggedFields),
    )


class MetadataRequest_v10(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 10
    RESPONSE_TYPE = MetadataResponse_v10
    SCHEMA = Schema(
        ("topics", CompactArray(("topic_id", Uuid), ("name", CompactString("utf-8")),
                                ("tags", TaggedFields))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class TopicMetadataRequest(Request[MetadataRequest_v10]):  # type: ignore[misc]
    """Metadata of one topic by name, never creating it."""

    API_KEY = 3

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def build(self, request_struct_class: type[MetadataRequest_v10]) -> MetadataRequest_v10:
        return request_struct_class([(bytes(16), self._topic, {})], False, False, False, {})


@dataclass(frozen=True, slots=True)
class TopicDescription:
    name: str
    topic_id: str
    """The broker's topic id, as a UUID string."""
    partitions: tuple[int, ...]


class TopicMetadata:
    """A small metadata client: `describe(topic)` -> `TopicDescription`, or None if absent.

    Raises aiokafka's `KafkaError` (e.g. `KafkaConnectionError`) when the broker cannot answer.
    """

    def __init__(self, bootstrap_servers: str, *, client_id: str = "cardpay-metadata",
                 request_timeout: float = 10.0) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._client_id = client_id
        self._request_timeout = request_timeout
        self._client: Any = None

    async def start(self) -> None:
        if self._client is not None:
            return
        client = AIOKafkaClient(bootstrap_servers=self._bootstrap_servers,
                                client_id=self._client_id,
                                request_timeout_ms=int(self._request_timeout * 1000))
        try:
            await client.bootstrap()
        except BaseException:
            await client.close()
            raise
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def describe(self, topic: str) -> TopicDescription | None:
        await self.start()
        client = self._client
        response = await client.send(client.get_random_node(), TopicMetadataRequest(topic))
        for error_code, name, topic_id, _internal, partitions, _ops, _tags in response.topics:
            if name != topic:
                continue
            error = for_code(error_code)
            if error_code == 0 and partitions:
                return TopicDescription(name, str(uuid.UUID(bytes=topic_id)),
                                        tuple(sorted(int(p[1]) for p in partitions)))
            if error_code == 0 or error is UnknownTopicOrPartitionError:
                return None
            raise error(f"metadata of topic {topic!r}")
        return None


async def describe_topic(bootstrap_servers: str, topic: str) -> TopicDescription | None:
    """One-off `TopicMetadata.describe` (connects, asks, closes)."""
    metadata = TopicMetadata(bootstrap_servers)
    try:
        return await metadata.describe(topic)
    finally:
        await metadata.close()


__all__ = ["KafkaError", "TopicDescription", "TopicMetadata", "describe_topic"]
