from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_INIT: _ClassVar[TaskKind]
    TASK_KIND_TRAIN: _ClassVar[TaskKind]
    TASK_KIND_EVALUATE: _ClassVar[TaskKind]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_INIT: TaskKind
TASK_KIND_TRAIN: TaskKind
TASK_KIND_EVALUATE: TaskKind

class Hello(_message.Message):
    __slots__ = ("protocol", "party", "nonce", "package_digest", "want_package")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    WANT_PACKAGE_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    party: str
    nonce: bytes
    package_digest: bytes
    want_package: bool
    def __init__(self, protocol: _Optional[str] = ..., party: _Optional[str] = ..., nonce: _Optional[bytes] = ..., package_digest: _Optional[bytes] = ..., want_package: _Optional[bool] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session", "agreement_digest", "package_digest", "aggregator_certificate", "signature", "chunk_size", "max_arrays_bytes")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_ARRAYS_BYTES_FIELD_NUMBER: _ClassVar[int]
    session: str
    agreement_digest: bytes
    package_digest: bytes
    aggregator_certificate: str
    signature: bytes
    chunk_size: int
    max_arrays_bytes: int
    def __init__(self, session: _Optional[str] = ..., agreement_digest: _Optional[bytes] = ..., package_digest: _Optional[bytes] = ..., aggregator_certificate: _Optional[str] = ..., signature: _Optional[bytes] = ..., chunk_size: _Optional[int] = ..., max_arrays_bytes: _Optional[int] = ...) -> None: ...

class Package(_message.Message):
    __slots__ = ("size", "sha256")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    size: int
    sha256: bytes
    def __init__(self, size: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "kind", "round", "config_json", "arrays_size", "arrays_sha256", "deadline_seconds")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_SIZE_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_SHA256_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    kind: TaskKind
    round: int
    config_json: str
    arrays_size: int
    arrays_sha256: bytes
    deadline_seconds: float
    def __init__(self, task_id: _Optional[int] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., round: _Optional[int] = ..., config_json: _Optional[str] = ..., arrays_size: _Optional[int] = ..., arrays_sha256: _Optional[bytes] = ..., deadline_seconds: _Optional[float] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("task_id", "data")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    data: bytes
    def __init__(self, task_id: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("task_id", "num_examples", "metrics", "arrays_size", "arrays_sha256")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_SIZE_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_SHA256_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    arrays_size: int
    arrays_sha256: bytes
    def __init__(self, task_id: _Optional[int] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., arrays_size: _Optional[int] = ..., arrays_sha256: _Optional[bytes] = ...) -> None: ...

class TaskFailed(_message.Message):
    __slots__ = ("task_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    reason: str
    def __init__(self, task_id: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("ok", "reason", "rounds")
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    reason: str
    rounds: int
    def __init__(self, ok: _Optional[bool] = ..., reason: _Optional[str] = ..., rounds: _Optional[int] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("hello", "result", "chunk", "failed", "attested")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ATTESTED_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    result: Result
    chunk: Chunk
    failed: TaskFailed
    attested: Attested
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., failed: _Optional[_Union[TaskFailed, _Mapping]] = ..., attested: _Optional[_Union[Attested, _Mapping]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("welcome", "task", "chunk", "goodbye", "package", "reattest")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_FIELD_NUMBER: _ClassVar[int]
    REATTEST_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    task: Task
    chunk: Chunk
    goodbye: Goodbye
    package: Package
    reattest: Reattest
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ..., package: _Optional[_Union[Package, _Mapping]] = ..., reattest: _Optional[_Union[Reattest, _Mapping]] = ...) -> None: ...

class Reattest(_message.Message):
    __slots__ = ("task_id", "round", "nonce")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    round: int
    nonce: bytes
    def __init__(self, task_id: _Optional[int] = ..., round: _Optional[int] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class Attested(_message.Message):
    __slots__ = ("task_id", "certificate", "signature")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    certificate: str
    signature: bytes
    def __init__(self, task_id: _Optional[int] = ..., certificate: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("session", "round", "clients", "modules", "max_rss_bytes")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    MAX_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    session: str
    round: int
    clients: _containers.RepeatedScalarFieldContainer[str]
    modules: _containers.RepeatedScalarFieldContainer[str]
    max_rss_bytes: int
    def __init__(self, session: _Optional[str] = ..., round: _Optional[int] = ..., clients: _Optional[_Iterable[str]] = ..., modules: _Optional[_Iterable[str]] = ..., max_rss_bytes: _Optional[int] = ...) -> None: ...
