"""What the Recommender tests share: adapters of every method, one Recommender serving them,
and checks of its answers."""

from __future__ import annotations

import torch

from regiontune.evaluation.evaluate import task_scores

# method -> training region (small regions: fast); served under the method's name
METHOD_REGIONS = {"lora": "west", "bottleneck": "delta", "ia3": "alpine", "adalora": "island",
                  "full": "delta"}


def as_dict(result: dict) -> dict[str, float]:
    return dict(zip(result["items"], result["scores"], strict=True))


def assert_matches(result: dict, task, history: list[str]) -> None:
    """``result`` (all items, seen kept) equals the task's own full ranking scores."""
    got = as_dict(result)
    catalogue = task.item_side.catalogue
    assert sorted(got) == sorted(catalogue)
    want = task_scores(task, [history], catalogue)[0]
    torch.testing.assert_close(torch.tensor([got[i] for i in catalogue]), want,
                               atol=1e-5, rtol=1e-5)



def shared_names(rec) -> dict[str, set[str]]:
    for body in rec._shared.values():  # the layers hold exactly the adapters on record
        assert body.held() == body.names
    return {m: set(b.names) for m, b in rec._shared.items()}

