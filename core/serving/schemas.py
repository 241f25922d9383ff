"""The HTTP API's limits and its request / response models (as the OpenAPI schema shows them).

The request models are built per app (:func:`request_models`): their bounds are the app's
:class:`ServingLimits`, so the schema states them.
"""

# No ``from __future__ import annotations``: pydantic and FastAPI read these annotations as
# objects (``create_model`` fields, route signatures).

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    create_model,
)

from regiontune.serving.errors import InvalidRequestError, check_region

REGION_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
MAX_UNKNOWN_ECHO = 20  # unknown history items echoed back per answer (all are counted)


@dataclass(frozen=True)
class ServingLimits:
    """Per-request bounds, enforced before any work (defaults sized for one CPU process)."""

    max_body_bytes: int = 2 * 2**20  # 413 past this; a full batch of long histories fits
    max_history: int = 200  # items per history (the backbone reads at most max_len anyway)
    max_item_chars: int = 256  # characters per item id
    max_batch: int = 256  # requests per batch (scores: batch x catalogue floats)
    max_k: int = 1000  # items returned per request
    max_grow_items: int = 1000  # items added to a catalogue per call (admin)
    max_grow_pairs: int = 20000  # co-occurrence pairs per grow call (admin)
    max_item_text_chars: int = 2000  # characters of one item's text in a grow call (admin)

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"serving limit {name} must be a positive integer, not "
                                 f"{value!r}")


def _region(value: str) -> str:
    try:
        return check_region(value)
    except InvalidRequestError as err:
        raise ValueError(str(err)) from None


Region = Annotated[StrictStr, Field(pattern=REGION_PATTERN, description="region name: 1-64 "
                                    "letters, digits, '_', '-' or '.', without '..'"),
                   AfterValidator(_region)]


def request_models(limits: ServingLimits) -> tuple[type[BaseModel], type[BaseModel]]:
    """The request body models under ``limits`` (so that the OpenAPI schema states them)."""
    item = Annotated[StrictStr, StringConstraints(max_length=limits.max_item_chars)]
    one = create_model(
        "RecommendRequest", __config__=ConfigDict(extra="forbid"),
        __doc__="One user's request.",
        region=(Region, ...),
        history=(list[item], Field(default_factory=list, max_length=limits.max_history,
                                   description=f"item ids, oldest first (at most "
                                               f"{limits.max_history}, each at most "
                                               f"{limits.max_item_chars} characters)")),
        k=(StrictInt, Field(10, ge=1, le=limits.max_k, description="number of items to "
                                                                    "return")),
        exclude_seen=(StrictBool, Field(True, description="never recommend history items")))
    batch = create_model(
        "BatchRequest", __config__=ConfigDict(extra="forbid"),
        __doc__="Several users, possibly of several regions: served in as few forward passes "
                "as can be.",
        requests=(list[one], Field(min_length=1, max_length=limits.max_batch)))
    return one, batch


def grow_model(limits: ServingLimits) -> type[BaseModel]:
    """The body of ``POST /v1/regions/{region}/items`` under ``limits``."""
    item = Annotated[StrictStr, StringConstraints(min_length=1, max_length=limits.max_item_chars,
                                                  pattern=r"\S")]
    text = Annotated[StrictStr, StringConstraints(
        min_length=1, max_length=limits.max_item_text_chars, pattern=r"\S")]
    return create_model(
        "GrowRequest", __config__=ConfigDict(extra="forbid"),
        __doc__="Items to add to a region's catalogue without retraining.",
        items=(list[item], Field(min_length=1, max_length=limits.max_grow_items,
                                 description=f"item ids to add (at most "
                                             f"{limits.max_grow_items}); ids the catalogue "
                                             "already holds are skipped")),
        pairs=(list[tuple[item, item]], Field(
            default_factory=list, max_length=limits.max_grow_pairs,
            description=f"co-occurrence pairs [new item, catalogue item] (at most "
                        f"{limits.max_grow_pairs}): a new item's embedding starts as the "
                        "count-weighted mean of the rows of the catalogue items it is paired "
                        "with (else the backbone's mean item embedding)")),
        texts=(dict[item, text], Field(
            default_factory=dict, max_length=limits.max_grow_items,
            description="item id -> its text (title, category, description; at most "
                        f"{limits.max_item_text_chars} characters): with a text-aware "
                        "backbone, a new item with text and no pair starts as the embedding "
                        "of its text (encoded by the backbone's encoder); ignored by an "
                        "id-only backbone; ids must be among items")),
        persist=(StrictBool, Field(False, description="also rewrite the adapter's folder "
                                   "(only for a local folder inside an adapter root that still "
                                   "holds the served adapter); otherwise the growth lives in "
                                   "memory until the region is reloaded, evicted or the "
                                   "server restarts")))


class GrowResponse(BaseModel):
    region: str
    added: list[str] = Field(description="items appended to the catalogue, in order")
    already_present: list[str] = Field(description="items the catalogue already held "
                                                   "(skipped)")
    n_items: int = Field(description="catalogue size after the call")
    embedding: dict[str, list[str]] = Field(description="how each added item's embedding "
                                            "started: cooccurrence, text (its text's "
                                            "embedding), mean, backbone (the backbone knows "
                                            "it) or zero (item rank 0)")
    bias: dict[str, list[str]] = Field(description="how each added item's bias was set: "
                                       "unseen_offset, unseen_offset+text_lift (it starts "
                                       "from its text alone), cooccurrence, backbone or "
                                       "lowest")
    cooccurrences: int = Field(description="co-occurrence counts used")
    projection_kept: float | None = Field(None, description="mean share of the target "
                                          "embeddings' norm the rank-r rows keep")
    persisted: bool = Field(description="the adapter's folder was rewritten too; false: in "
                                        "memory only (lost on reload, eviction or restart)")
    path: str


class Recommendation(BaseModel):
    region: str
    items: list[str]
    scores: list[float]
    adapted: bool = Field(description="false when the un-adapted backbone served the region")
    unknown_items: list[str] = Field(description=f"history items the region does not know "
                                                 f"(the first {MAX_UNKNOWN_ECHO})")
    unknown_count: int = Field(0, description="how many history items the region does not "
                                              "know")


class BatchResponse(BaseModel):
    results: list[Recommendation]


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: StrictStr = Field(min_length=1, max_length=4096,
                            description="adapter directory (relative to an adapter root, or "
                                        "absolute inside one) or hub id ORG/NAME[@REVISION]")
    allow_other_region: StrictBool = Field(
        default=False, description="serve an adapter whose region.json names another region "
                                   "under this one (refused otherwise: 422)")


class RegionInfo(BaseModel):
    region: str
    method: str
    served_as: str
    path: str = Field(description="relative to its adapter root, a hub id, or the folder's "
                                  "name: never an absolute server path")
    fingerprint_ok: bool
    n_items: int
    new_items: int
    internal_name: str
    tensor_bytes: int | None = Field(None, description="adapter weights + low-rank item side")
    loaded_at: str


class ReadyResponse(BaseModel):
    """``GET /readyz``: 200 when the backbone and every configured adapter are loaded, else
    503 with the reason."""
    status: str = Field(description='"ready" or "not ready"')
    reason: str | None = Field(None, description="why the server is not ready")
    backbone: str = Field(description="the backbone's fingerprint")
    regions: int = Field(description="region adapters loaded")
    pending: list[str] = Field(default_factory=list, description="configured adapters still "
                                                                 "loading")
    failed: dict[str, str] = Field(default_factory=dict, description="configured adapters "
                                   "that could not be loaded: region -> why (the server log "
                                   "has the details)")
    missing: list[str] = Field(default_factory=list, description="configured adapters no "
                                                                 "longer loaded")


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: str | list[ErrorItem]


def error_doc(description: str) -> dict[str, Any]:
    """An error status as a route's OpenAPI ``responses`` entry states it."""
    return {"model": ErrorResponse, "description": description}
