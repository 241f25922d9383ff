"""``regiontune adapt --init-from``: refresh an adapter on new data."""

from __future__ import annotations

import json
import shutil

from regiontune.artifacts import ADAPTER_META
from tests.cli.helpers import fails, invoke, ok

QUICK = ["--epochs", "1", "--set", "train.progress=false"]


def test_adapt_init_from_refreshes_and_records_the_lineage(workdir, backbone, adapter):
    out = workdir / "island-refreshed"
    text = ok(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
                     "--init-from", adapter[0], *QUICK))
    assert "refreshed from" in text and "generation 1" in text and "before" in text
    meta = json.loads((out / ADAPTER_META).read_text())
    parent = json.loads((adapter[0] / ADAPTER_META).read_text())
    assert meta["method"] == parent["method"] == "lora"
    assert meta["catalogue"][:len(parent["catalogue"])] == parent["catalogue"]
    lineage = meta["lineage"]
    assert (out / lineage["parent"]["path"]).resolve() == adapter[0].resolve()
    assert lineage["parent"]["trained_at"] == parent["trained_at"]
    assert lineage["parent"]["weights_sha256"].startswith("sha256:")
    assert lineage["data_period"] and lineage["metrics_after"] == meta["metrics"]
    assert "ndcg@10" in lineage["metrics_before"]


def test_init_from_refuses_another_method_and_writes_nothing(workdir, backbone, adapter):
    out = workdir / "never"
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
                 "--init-from", adapter[0], "--method", "ia3", *QUICK),
          "--method ia3 differs from the parent adapter's method lora")
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
                 "--init-from", adapter[0], "--option", "r=4", *QUICK), "drop --option")
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
                 "--init-from", adapter[0], "--method", "scratch", *QUICK), "scratch")
    assert not out.exists() and not (workdir / "never.work").exists()


def test_init_from_needs_an_adapter(workdir, backbone):
    out = workdir / "never"
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
                 "--init-from", backbone[0], *QUICK), "a backbone directory, not an adapter")
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
                 "--init-from", workdir / "missing", *QUICK), "no such adapter directory")
    assert not out.exists()


def test_init_from_refuses_an_adapter_of_another_backbone(workdir, backbone, adapter):
    foreign = workdir / "foreign-adapter"
    if not foreign.exists():
        shutil.copytree(adapter[0], foreign)
        meta = json.loads((foreign / ADAPTER_META).read_text())
        meta["backbone_fingerprint"] = "sha256:" + "f" * 32
        (foreign / ADAPTER_META).write_text(json.dumps(meta))
    out = workdir / "never"
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
                 "--init-from", foreign, *QUICK), "was trained on backbone sha256:fff")
    assert not out.exists() and not (workdir / "never.work").exists()


def test_init_from_with_replay_records_it(workdir, backbone, adapter):
    out = workdir / "island-replayed"
    text = ok(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
                     "--init-from", adapter[0], "--replay", "0.5", *QUICK))
    meta = json.loads((out / ADAPTER_META).read_text())
    replay = meta["lineage"]["replay"]
    assert replay["fraction"] == 0.5 and replay["users"] > 0
    assert f"replayed {replay['users']:,} of the parent's training users" in text


def test_replay_needs_init_from_and_a_share(workdir, backbone, adapter):
    out = workdir / "never"
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
                 "--replay", "0.5", *QUICK), "--replay", "needs --init-from")
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
                 "--init-from", adapter[0], "--replay", "1.5", *QUICK),
          "--replay must be in [0, 1]")
    assert not out.exists() and not (workdir / "never.work").exists()


def test_init_from_with_context_records_it(workdir, backbone, adapter):
    out = workdir / "island-context"
    text = ok(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
                     "--init-from", adapter[0], "--refresh-context", *QUICK))
    meta = json.loads((out / ADAPTER_META).read_text())
    context = meta["lineage"]["context"]
    assert context["users"] > 0 and meta["config"]["adapt"]["refresh_context"] is True
    assert f"read {context['items']:,} earlier items of {context['users']:,} users" in text
    # the share counts every earlier item reloaded, at least those of the users read here
    rows, share = meta["lineage"]["interactions"], meta["lineage"]["new_share"]
    assert 0 < share <= rows / (rows + context["items"]) + 1e-4
    assert f"the new data is {share:.0%} of all data so far" in text
    plain = workdir / "island-no-context"
    ok(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", plain,
              "--init-from", adapter[0], "--no-refresh-context", *QUICK))
    meta = json.loads((plain / ADAPTER_META).read_text())
    assert meta["lineage"]["context"] is None and meta["lineage"]["new_share"] is None
    assert meta["config"]["adapt"]["refresh_context"] is False
    never = workdir / "never"
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", never,
                 "--refresh-context", *QUICK), "--refresh-context", "needs --init-from")
    assert not never.exists()


def test_refresh_shrink_is_recorded_and_a_bad_share_refused(workdir, backbone, adapter):
    out = workdir / "island-unshrunk"
    ok(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
              "--init-from", adapter[0], "--set", "adapt.refresh_shrink=1", *QUICK))
    assert json.loads((out / ADAPTER_META).read_text())["config"]["adapt"]["refresh_shrink"] == 1
    never = workdir / "never"
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", never,
                 "--init-from", adapter[0], "--set", "adapt.refresh_shrink=0", *QUICK),
          "refresh_shrink must be in (0, 1]")
    assert not never.exists() and not (workdir / "never.work").exists()
