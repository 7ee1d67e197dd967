from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedSparseRequest(_message.Message):
    __slots__ = ("inputs", "prompt", "truncate", "return_tokens")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    RETURN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedScalarFieldContainer[str]
    prompt: str
    truncate: bool
    return_tokens: bool
    def __init__(self, inputs: _Optional[_Iterable[str]] = ..., prompt: _Optional[str] = ..., truncate: _Optional[bool] = ..., return_tokens: _Optional[bool] = ...) -> None: ...

class SparseEmbedding(_message.Message):
    __slots__ = ("indices", "values", "terms", "tokens", "truncated")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    terms: _containers.RepeatedScalarFieldContainer[str]
    tokens: int
    truncated: bool
    def __init__(self, indices: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., terms: _Optional[_Iterable[str]] = ..., tokens: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class EmbedSparseResponse(_message.Message):
    __slots__ = ("embeddings", "total_tokens", "time_ms")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[SparseEmbedding]
    total_tokens: int
    time_ms: float
    def __init__(self, embeddings: _Optional[_Iterable[_Union[SparseEmbedding, _Mapping]]] = ..., total_tokens: _Optional[int] = ..., time_ms: _Optional[float] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("query", "documents", "raw_scores", "truncate", "top_n", "input_order")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    INPUT_ORDER_FIELD_NUMBER: _ClassVar[int]
    query: str
    documents: _containers.RepeatedScalarFieldContainer[str]
    raw_scores: bool
    truncate: bool
    top_n: int
    input_order: bool
    def __init__(self, query: _Optional[str] = ..., documents: _Optional[_Iterable[str]] = ..., raw_scores: _Optional[bool] = ..., truncate: _Optional[bool] = ..., top_n: _Optional[int] = ..., input_order: _Optional[bool] = ...) -> None: ...

class RankedDocument(_message.Message):
    __slots__ = ("index", "score")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("results", "total_tokens", "time_ms")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RankedDocument]
    total_tokens: int
    time_ms: float
    def __init__(self, results: _Optional[_Iterable[_Union[RankedDocument, _Mapping]]] = ..., total_tokens: _Optional[int] = ..., time_ms: _Optional[float] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("inputs", "dimensions", "prompt", "truncate")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedScalarFieldContainer[str]
    dimensions: int
    prompt: str
    truncate: bool
    def __init__(self, inputs: _Optional[_Iterable[str]] = ..., dimensions: _Optional[int] = ..., prompt: _Optional[str] = ..., truncate: _Optional[bool] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "tokens", "truncated")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    tokens: int
    truncated: bool
    def __init__(self, values: _Optional[_Iterable[float]] = ..., tokens: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "dimensions", "total_tokens", "time_ms")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    dimensions: int
    total_tokens: int
    time_ms: float
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., dimensions: _Optional[int] = ..., total_tokens: _Optional[int] = ..., time_ms: _Optional[float] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_body_bytes", "max_inputs", "max_chars", "max_inflight")
    MAX_BODY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUTS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    max_body_bytes: int
    max_inputs: int
    max_chars: int
    max_inflight: int
    def __init__(self, max_body_bytes: _Optional[int] = ..., max_inputs: _Optional[int] = ..., max_chars: _Optional[int] = ..., max_inflight: _Optional[int] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("name", "version", "model_id", "model_revision", "model_sha256", "dimension", "dimensions", "normalized", "prompts", "default_prompt", "max_length", "limits", "encoderfile_version", "artifact_sha256", "vision_model", "kind")
    class PromptsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_REVISION_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ENCODERFILE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    VISION_MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    model_id: str
    model_revision: str
    model_sha256: str
    dimension: int
    dimensions: _containers.RepeatedScalarFieldContainer[int]
    normalized: bool
    prompts: _containers.ScalarMap[str, str]
    default_prompt: str
    max_length: int
    limits: Limits
    encoderfile_version: str
    artifact_sha256: str
    vision_model: bool
    kind: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., model_id: _Optional[str] = ..., model_revision: _Optional[str] = ..., model_sha256: _Optional[str] = ..., dimension: _Optional[int] = ..., dimensions: _Optional[_Iterable[int]] = ..., normalized: _Optional[bool] = ..., prompts: _Optional[_Mapping[str, str]] = ..., default_prompt: _Optional[str] = ..., max_length: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., encoderfile_version: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., vision_model: _Optional[bool] = ..., kind: _Optional[str] = ...) -> None: ...

class EmbedImagesRequest(_message.Message):
    __slots__ = ("images", "dimensions")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    dimensions: int
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., dimensions: _Optional[int] = ...) -> None: ...

class ImageStatsRequest(_message.Message):
    __slots__ = ("image", "averaging_method")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    AVERAGING_METHOD_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    averaging_method: str
    def __init__(self, image: _Optional[bytes] = ..., averaging_method: _Optional[str] = ...) -> None: ...

class Color(_message.Message):
    __slots__ = ("rgb", "hex", "method")
    RGB_FIELD_NUMBER: _ClassVar[int]
    HEX_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    rgb: _containers.RepeatedScalarFieldContainer[float]
    hex: str
    method: str
    def __init__(self, rgb: _Optional[_Iterable[float]] = ..., hex: _Optional[str] = ..., method: _Optional[str] = ...) -> None: ...

class ImageStatsResponse(_message.Message):
    __slots__ = ("exif_json", "avg_color", "dominant_color", "time_ms")
    EXIF_JSON_FIELD_NUMBER: _ClassVar[int]
    AVG_COLOR_FIELD_NUMBER: _ClassVar[int]
    DOMINANT_COLOR_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    exif_json: str
    avg_color: Color
    dominant_color: Color
    time_ms: float
    def __init__(self, exif_json: _Optional[str] = ..., avg_color: _Optional[_Union[Color, _Mapping]] = ..., dominant_color: _Optional[_Union[Color, _Mapping]] = ..., time_ms: _Optional[float] = ...) -> None: ...
