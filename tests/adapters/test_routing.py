"""Mixed-region batches: one forward pass routes each row to its own adapter."""

from __future__ import annotations

import pytest
import torch

from regiontune.adapters import (
    METHODS,
    get_method,
)
from tests.adapters.common import (
    perturb,
)


@pytest.mark.parametrize("method", sorted(m for m in METHODS if METHODS[m].mixed_batches))
def test_mixed_batch_routing_matches_each_adapter_alone(tiny_backbone, method):
    assert method in ("lora", "bottleneck")
    backbone, _, _ = tiny_backbone
    impl = get_method(method)
    body = impl.attach(backbone, {}, "north", 10)
    perturb(body, seed=4, scale=0.3)
    tensors_b = {k: v + 0.3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(5))
                 for k, v in impl.weights(body, "north").items()}
    body = impl.load(backbone, impl.adapter_config(body, "north"), tensors_b, "south", body)
    body.eval()
    torch.manual_seed(0)
    embeds = torch.randn(5, 6, backbone.config.hidden_size)
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[1, :3] = 0
    mask[3, :5] = 0

    def run(name: str | None) -> torch.Tensor:
        if method == "lora" and name is None:
            with body.disable_adapter():
                return body(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        body.set_adapter(name)
        return body(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

    with torch.no_grad():
        alone = {"north": run("north"), "south": run("south"), "__base__": run(None)}
        names = ["north", "south", "__base__", "south", "north"]
        mixed = body(inputs_embeds=embeds, attention_mask=mask,
                     adapter_names=names).last_hidden_state
    assert not torch.allclose(alone["north"], alone["south"], atol=1e-4)
    assert not torch.allclose(alone["north"], alone["__base__"], atol=1e-4)
    for row, name in enumerate(names):
        torch.testing.assert_close(mixed[row], alone[name][row], atol=1e-5, rtol=1e-5)

