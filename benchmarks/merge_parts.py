"""Where a merged adapter's effect comes from, on the targets' hold-outs (issue 17, t2).

    OMP_NUM_THREADS=1 python -m benchmarks.merge_parts [--targets t1,t2]

The merge of ``benchmarks/merge.py`` (s1, s2, s3's LoRA adapters cached under
``runs/bench/wsdm/merge-sources``, trained before adapters had an item-item part (merge.md's
figures are of sources with parts), equal weights, items new to
every model left out so that only the merge's own parts differ from the bare backbone) taken
apart: the body alone (LoRA deltas; item side zero), the item side alone (LoRA ``B`` zeroed),
the item bias alone, and each source merged alone onto the target's catalogue. Every figure
is NDCG@10 on the target's early-stopping hold-out (its training side: positive among 99
negatives drawn as the lists draw theirs), never on the test cases the merge report gives:
these rows diagnose, they choose nothing. Writes ``benchmarks/results/merge_parts.{json,md}``.
"""

from __future__ import annotations

import logging

import torch

from benchmarks.common import (
    RESULTS,
    add_backbone_option,
    configure_logging,
    load_results,
    load_suite,
    names,
    study_parser,
    suite_regions,
    write_results,
)
from benchmarks.markdown import table
from benchmarks.merge import SOURCES_DIR, backbone_task, holdout_ndcg, source_dir
from benchmarks.meta import run_meta

log = logging.getLogger("benchmarks")
OUT = RESULTS / "merge_parts.json"
PARTS = ("zero-shot", "merged", "body only", "item side only", "item bias only")


def merged(data, sources: list[str], backbone, name: str):
    from regiontune.adapters import load_adapter
    from regiontune.adapters.merge import merge_adapters
    from regiontune.model.backbone import load_backbone

    out = SOURCES_DIR / f"parts-{data.region}-{name}"
    merge_adapters([source_dir(s, 1.0) for s in sources], [1.0] * len(sources), backbone, out,
                   region=data.region, catalogue=list(data.catalogue), new_items="omit")
    model, vocab, bmeta = load_backbone(backbone)
    return load_adapter(out, model, vocab, bmeta["fingerprint"])


@torch.no_grad()
def keep_only(task, part: str):
    """The merged task with every part but ``part`` set to zero (the backbone's value)."""
    side = task.item_side
    if part == "body only":
        side.bias.zero_()
        if side.lowrank_a is not None:
            side.lowrank_a.zero_()
    else:  # item side only / item bias only: no LoRA delta (B = 0)
        for name, p in task.body.named_parameters():
            if "lora_B" in name:
                p.zero_()
        if part == "item bias only" and side.lowrank_a is not None:
            side.lowrank_a.zero_()
    return task


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--targets", type=names, default="t1,t2")
    parser.add_argument("--sources", type=names, default="s1,s2,s3")
    add_backbone_option(parser)
    args = parser.parse_args(argv)
    configure_logging()
    suite = load_suite("wsdm")
    results = {"records": [r for r in load_results(OUT)["records"]
                           if r["region"] not in args.targets]}
    for target in args.targets:
        data = suite_regions(suite, [target])[target]
        jobs = [*PARTS, *(f"{s} alone" for s in args.sources)]
        for job in jobs:
            if job == "zero-shot":
                task = backbone_task(args.backbone)
            elif job.endswith(" alone"):
                source = job.removesuffix(" alone")
                task = merged(data, [source], args.backbone, source)
            else:
                task = merged(data, args.sources, args.backbone, "all")
                if job != "merged":
                    task = keep_only(task, job)
            record = {"region": target, "part": job, "holdout_ndcg@10": holdout_ndcg(task, data),
                      "holdout_cases": len(data.valid)}
            results["records"].append(record)
            log.info("%s", record)
            results["meta"] = run_meta({"sources": args.sources, "backbone": str(args.backbone)})
            write_results(results, OUT)
    write_markdown(results)


def write_markdown(results: dict) -> None:
    rows = []
    for region in sorted({r["region"] for r in results["records"]}):
        mine = [r for r in results["records"] if r["region"] == region]
        zero = next(r["holdout_ndcg@10"] for r in mine if r["part"] == "zero-shot")
        rows += [[region, r["part"], f"{r['holdout_ndcg@10']:.4f}",
                  f"{r['holdout_ndcg@10'] - zero:+.4f}", r["holdout_cases"]] for r in mine]
    OUT.with_suffix(".md").write_text("\n".join([
        "# The merge taken apart (targets' hold-outs)", "",
        (__doc__ or "").split("\n\n", 2)[2].split("Writes")[0].strip(), "",
        *table(["target", "part", "hold-out NDCG@10", "vs zero-shot", "cases"], rows), "",
        "`python -m benchmarks.merge_parts` (one seed).", ""]), encoding="utf-8")


if __name__ == "__main__":
    main()
