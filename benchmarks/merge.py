"""A region with no data: merged source adapters against a few target interactions.

For each target (new-region setting: the backbone pretrained on s1, s2, s3 never saw it), on
the official test cases the suite reports:

* ``zero-shot`` -- the bare backbone;
* ``popularity`` -- item counts of the sources' pooled training data (no target data);
* ``merged`` -- LoRA adapters trained on s1, s2, s3 (suite defaults, with their item-item
  parts; cached under ``--sources-dir``: ``runs/bench/wsdm/merge-sources-part/`` for the
  results as committed, ``merge-sources/`` holds the earlier ones trained before the part),
  merged by ``regiontune.adapters.merge`` onto the target's catalogue, with equal weights
  and with overlap weights (each source weighted by the share of the target's catalogue its
  catalogue holds);
* ``lora-n`` -- LoRA trained on a small fraction of the target's users (the learning curve's
  low end); ``interactions`` counts the target interactions it read.

    python -m benchmarks.merge --sources-dir runs/bench/wsdm/merge-sources-part  # as committed
    python -m benchmarks.merge --stage sources      # only train (and cache) the source adapters

Writes ``benchmarks/results/merge.json`` and ``.md``; resumes: the source adapters and the
records already in the JSON are kept and not rerun.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path

from benchmarks.common import (
    RESULTS,
    add_backbone_option,
    configure_logging,
    done_keys,
    floats,
    load_results,
    load_suite,
    names,
    study_parser,
    suite_configs,
    suite_regions,
    train_config,
    write_results,
)
from benchmarks.markdown import table
from benchmarks.meta import run_meta

log = logging.getLogger("benchmarks")
OUT = RESULTS / "merge.json"
SOURCES_DIR = Path("runs/bench/wsdm/merge-sources")
KEY = ("region", "method", "weights", "new_item_embedding", "data_fraction", "seed")


def use_paths(sources_dir: Path, out: Path) -> None:
    """Point the study at another cache of source adapters and another results file."""
    global SOURCES_DIR, OUT
    SOURCES_DIR, OUT = Path(sources_dir), Path(out)


def source_dir(region: str, fraction: float) -> Path:
    return SOURCES_DIR / (f"lora-{region}" if fraction == 1 else f"lora-{region}-f{fraction:g}")


def train_sources(suite: dict, backbone: Path, sources: list[str], fraction: float,
                  seed: int) -> dict[str, Path]:
    """One LoRA adapter per source region with the suite's defaults, trained once (a killed
    run resumes from its checkpoint); returns region -> adapter folder."""
    from regiontune.config import AdaptConfig
    from regiontune.training.adapt import adapt

    data_cfg, _, _ = suite_configs(suite)
    paths = {}
    for region in sources:
        out = source_dir(region, fraction)
        if not (out / "region.json").is_file():
            log.info("training the source adapter of %s (fraction %g)", region, fraction)
            adapt_cfg = AdaptConfig(method="lora", region=region, fraction=fraction,
                                    options=copy.deepcopy(
                                        suite.get("method_options", {}).get("lora", {})),
                                    **suite.get("item_side", {}))
            meta = adapt(backbone, replace(data_cfg, regions=[region]), adapt_cfg,
                         train_config(suite, "adapt", seed=seed), out, resume=True)
            log.info("%s: %s s, %d epochs", region, meta["train_seconds"], meta["epochs_run"])
        paths[region] = out
    return paths


def interactions(train: dict[str, list[str]]) -> int:
    return sum(len(h) for h in train.values())


def pooled_popularity(data, sources: dict) -> dict:
    """Item counts of the sources' pooled training data, scored on the target's lists."""
    from benchmarks.jobs import evaluate_record
    from regiontune.evaluation.baselines import Popularity

    pooled = {f"{region}:{user}": items for region, d in sources.items()
              for user, items in d.train.items()}
    scorer = Popularity().fit(pooled, data.catalogue)
    return evaluate_record(scorer.score, data)


def source_share_weights(paths: dict[str, Path], catalogue: list[str]) -> list[float]:
    """Each source's share of its own catalogue that the target's catalogue holds
    (``|source ∩ target| / |source|``): the other side of the overlap rule."""
    from regiontune.artifacts import read_json

    wanted = set(catalogue)
    cats = [read_json(p / "region.json")["catalogue"] for p in paths.values()]
    return [len(wanted.intersection(c)) / len(c) for c in cats]


def holdout_ndcg(task, data) -> float:
    """NDCG@10 on the target's early-stopping hold-out (its training side, never the test
    cases): the figure variants are compared on."""
    from regiontune.evaluation.evaluate import evaluate_task

    return evaluate_task(task, data.catalogue, data.valid)["ndcg@10"]


def merged_task(data, paths: dict[str, Path], backbone: Path, scheme: str,
                new_items: str = "zero", item_item: str = "sum"):
    from regiontune.adapters import load_adapter
    from regiontune.adapters.merge import merge_adapters
    from regiontune.model.backbone import load_backbone

    out = SOURCES_DIR / f"merged-{data.region}-{scheme}-{new_items}-ii-{item_item}"
    weights = ("overlap" if scheme == "overlap" else
               source_share_weights(paths, data.catalogue) if scheme == "source-share" else
               [1.0] * len(paths))
    meta = merge_adapters(list(paths.values()), weights, backbone, out, region=data.region,
                          catalogue=list(data.catalogue), new_items=new_items,
                          item_item=item_item)
    model, vocab, bmeta = load_backbone(backbone)
    return load_adapter(out, model, vocab, bmeta["fingerprint"]), meta


def merged_record(data, paths: dict[str, Path], backbone: Path, scheme: str,
                  new_items: str = "zero", item_item: str = "sum") -> dict:
    from benchmarks.jobs import evaluate_task_record

    task, meta = merged_task(data, paths, backbone, scheme, new_items, item_item)
    return {**evaluate_task_record(task, data), "holdout_ndcg@10": holdout_ndcg(task, data),
            "adapter_bytes": meta["adapter_bytes"],
            "item_rank": meta["item_rank"],
            "source_weights": {m["region"]: round(m["weight"], 4) for m in meta["merged_from"]},
            "merge_catalogue_known": meta["merge"]["items_in_sources"],
            "merge_catalogue_size": len(meta["catalogue"]), "item_item": item_item,
            "neighbours": meta.get("neighbours", 0),
            "item_item_blend": meta["merge"].get("item_item", {}).get("blend_weight")}


def lora_record(suite: dict, data, backbone: Path, fraction: float, seed: int) -> dict:
    from benchmarks.jobs import adapter_job
    from regiontune.config import AdaptConfig
    from regiontune.data.splits import subsample_users

    adapt_cfg = AdaptConfig(method="lora", region=data.region, fraction=fraction,
                            options=copy.deepcopy(suite.get("method_options", {}).get("lora", {})),
                            **suite.get("item_side", {}))
    record = adapter_job(backbone, data, adapt_cfg, train_config(suite, "adapt", seed=seed))
    record["interactions"] = interactions(subsample_users(data, fraction, seed).train)
    return record


def source_info(paths: dict[str, Path]) -> dict[str, dict]:
    """What each source adapter's training took (from its region.json)."""
    from regiontune.artifacts import read_json

    keys = ("train_users", "train_seconds", "epochs_run", "best_epoch", "item_rank")
    return {region: {k: read_json(path / "region.json").get(k) for k in keys}
            for region, path in paths.items()}


# the merge with the backbone's mean item embedding for items new to every source: an
# ablation, not the merge as shipped -- its own method name, so no reader averages it in
ABLATION = "merged-mean-new-items"
# more ablations (issue 17, t2): such items left out of the catalogue (read and scored as the
# bare backbone treats them); sources weighted by the share of their own catalogue the
# target holds
OMIT = "merged-omit-new-items"
SHARE = "merged-source-share"
# the sources' item-item parts: left out (the merge before parts were merged), or each row
# renormalised over the sources holding its item (the shipped merge sums them). Rule, fixed
# before the run: the shipped merge keeps the summed parts only if it beats the one without
# parts on both targets' hold-outs; "mean" replaces "sum" only by beating it on both
NO_PART = "merged-no-item-item"
PART_MEAN = "merged-item-item-mean"
PART_VARIANTS = {NO_PART: "omit", PART_MEAN: "mean"}
ABLATIONS = (ABLATION, OMIT, SHARE, NO_PART, PART_MEAN)


def verdicts(records: list[dict]) -> list[str]:
    """Per target: the merge against the bare backbone, and the fewest target interactions
    whose LoRA beats the best merge."""
    lines = []
    for region in sorted({r["region"] for r in records}):
        mine = [r for r in records if r["region"] == region]
        zero = next((r["ndcg@10"] for r in mine if r["method"] == "zero-shot"), None)
        merged = [r for r in mine if r["method"] == "merged"
                  and r.get("new_item_embedding", "zero") == "zero"]
        if zero is None or not merged:
            continue
        best = max(merged, key=lambda r: r["ndcg@10"])
        gap = best["ndcg@10"] - zero
        verdict = ("beats" if gap > 0.005 else "ties with" if gap > -0.005 else "loses to")
        beating = sorted((r for r in mine if r["method"] == "lora-n"
                          and r["ndcg@10"] > best["ndcg@10"]), key=lambda r: r["interactions"])
        lines.append(f"* {region}: the best merge ({best['weights']} weights, "
                     f"{best['ndcg@10']:.4f}) {verdict} the bare backbone ({zero:.4f}, "
                     f"{gap:+.4f}); " + (
                         f"LoRA on {beating[0]['interactions']:,} target interactions "
                         f"({beating[0]['data_fraction']:g} of the users) beats it."
                         if beating else "no LoRA of the curve beats it."))
    return lines


def to_markdown(records: list[dict], sources: list[str], meta: dict | None = None) -> str:
    order = {"zero-shot": 0, "popularity": 1, "merged": 2, **dict.fromkeys(ABLATIONS, 2),
             "lora-n": 3}
    header = ["target", "method", "weights", "target interactions", "NDCG@10", "HR@10",
              "vs zero-shot", "hold-out NDCG@10"]
    rows = []
    for region in sorted({r["region"] for r in records}):
        mine = sorted((r for r in records if r["region"] == region),
                      key=lambda r: (order.get(r["method"], 9), r.get("interactions", 0),
                                     str(r.get("weights"))))
        zero = next((r["ndcg@10"] for r in mine if r["method"] == "zero-shot"), None)
        for r in mine:
            weights = r.get("weights") or "–"
            if r.get("new_item_embedding") in ("mean", "omit"):
                weights += {"mean": ", new items: mean embedding",
                            "omit": ", new items: left out"}[r["new_item_embedding"]]
            if r.get("source_weights"):
                weights += " (" + ", ".join(f"{k} {v:.2f}"
                                            for k, v in r["source_weights"].items()) + ")"
            delta = f"{r['ndcg@10'] - zero:+.4f}" if zero is not None else "–"
            method = r["method"]
            if method == "lora-n":
                method += f" ({r['data_fraction']:g} of users)"
            holdout = r.get("holdout_ndcg@10")
            rows.append([region, method, weights, f"{r.get('interactions', 0):,}",
                         f"{r['ndcg@10']:.4f}", f"{r['hr@10']:.4f}", delta,
                         f"{holdout:.4f}" if holdout is not None else "–"])
    return "\n".join([
        "# A region with no data: merged adapters", "",
        "New-region setting (backbone pretrained on " + ", ".join(sources) + "; the target "
        "never seen), official test cases of the wsdm suite. `merged`: LoRA adapters of the "
        "sources (suite defaults) merged onto the target's catalogue by `regiontune merge` "
        "(LoRA deltas summed exactly; item side averaged per item over the sources that trained "
        "on it; the sources' item-item parts summed with the merge weights, neighbours mapped "
        "by item id, blend weight the weighted mean of theirs; items new to every source and "
        "to the backbone get a zero embedding and the "
        "lowest source bias, or, where marked, the backbone's mean item embedding); `equal` "
        "or `overlap` weights (each source weighted by the share of the target's "
        "catalogue its catalogue holds). `popularity`: item counts of the sources' pooled "
        "training data. `lora-n`: LoRA trained on a fraction of the target's users (the "
        "learning curve's low end), `target interactions` what it read. Ablations, each under "
        f"its own method name and never in the verdict: `{ABLATION}`, `{OMIT}` (items new to "
        "every source and to the backbone left out of the catalogue: skipped in histories and "
        f"unscored, as the bare backbone treats them), `{SHARE}` (each source weighted by the "
        f"share of its own catalogue the target's holds), `{NO_PART}` (the sources' item-item "
        f"parts left out), `{PART_MEAN}` (the parts' rows renormalised over the sources holding "
        "the item; the shipped merge sums the sources' part scores with the merge weights, "
        "blend weight the weighted mean of theirs). `hold-out NDCG@10`: the target's "
        "early-stopping hold-out (its training side, positive among 99 negatives drawn as the "
        "lists draw theirs), on which variants are compared; a variant would replace the "
        "merge as shipped only by beating it there on both targets (none does).", "",
        *table(header, rows), "",
        *verdicts(records), "",
        *part_lines(records),
        *source_lines((meta or {}).get("source_adapters") or {}),
        "`python -m benchmarks.merge --sources-dir runs/bench/wsdm/merge-sources-part` (one "
        "seed; a difference within 0.005 is a tie, and read "
        "differences below ~0.01 as noise).", ""])


def part_lines(records: list[dict]) -> list[str]:
    """The item-item part's choice on the targets' hold-outs (the rule by ``NO_PART``)."""
    holdout = {(r["region"], r["method"]): r.get("holdout_ndcg@10") for r in records
               if r.get("weights") == "equal" and r.get("new_item_embedding") == "zero"}
    regions = sorted({region for region, _ in holdout})
    if not regions or any(holdout.get((t, m)) is None for t in regions
                          for m in ("merged", NO_PART, PART_MEAN)):
        return []
    keep = all(holdout[(t, "merged")] > holdout[(t, NO_PART)] for t in regions)
    mean = all(holdout[(t, PART_MEAN)] > holdout[(t, "merged")] for t in regions)
    cells = "; ".join(f"{t}: summed parts {holdout[(t, 'merged')]:.4f}, renormalised "
                      f"{holdout[(t, PART_MEAN)]:.4f}, none {holdout[(t, NO_PART)]:.4f}"
                      for t in regions)
    return [f"Item-item parts on the hold-outs (equal weights): {cells}. Rule (fixed before "
            "the run): the merge keeps the summed parts only if they beat no parts on every "
            "target's hold-out -- " + ("they do" if keep else "they do not") + "; "
            "renormalised rows would replace the sum only by beating it on every target -- "
            + ("they do." if mean else "they do not."), ""]


def source_lines(info: dict[str, dict]) -> list[str]:
    if not info:
        return []
    return ["Source adapters (LoRA, wsdm suite defaults, all of each source's users): " + "; ".join(
        f"{region}: {i['train_users']:,} users, {i['epochs_run']} epochs (best "
        f"{i['best_epoch']}), {i['train_seconds']:.0f} s, item rank {i['item_rank']}"
        for region, i in info.items() if i.get("train_users") is not None) + ".", ""]


def backbone_task(backbone: Path):
    from regiontune.model.backbone import load_backbone
    from regiontune.model.task import BackboneTask

    model, vocab, _ = load_backbone(backbone)
    return BackboneTask(model, vocab)


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--targets", type=names, default="t1,t2")
    parser.add_argument("--sources", type=names, default="s1,s2,s3")
    parser.add_argument("--fractions", type=floats, default="0.01,0.02,0.05",
                        help="Fractions of the target's users for the lora-n adapters.")
    parser.add_argument("--source-fraction", type=float, default=1.0,
                        help="Share of each source's users its adapter trains on.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage", choices=("sources", "all"), default="all")
    parser.add_argument("--sources-dir", type=Path, default=SOURCES_DIR,
                        help="Where the source adapters are trained (cached) and the merges "
                        "written.")
    parser.add_argument("--out", type=Path, default=OUT, help="The results JSON (.md beside).")
    add_backbone_option(parser)
    args = parser.parse_args(argv)
    use_paths(args.sources_dir, args.out)
    configure_logging()
    suite = load_suite("wsdm")
    paths = train_sources(suite, args.backbone, args.sources, args.source_fraction, args.seed)
    if args.stage == "sources":
        return
    results = {"meta": None, "records": load_results(OUT)["records"]}
    have = done_keys(results["records"], KEY)
    source_data = None

    def save(record: dict | None) -> None:
        if record is not None:
            results["records"].append(record)
        results["meta"] = {**run_meta(suite), "sources": args.sources,
                           "source_fraction": args.source_fraction,
                           "backbone": str(args.backbone), "source_adapters": source_info(paths)}
        write_results(results, OUT)
        OUT.with_suffix(".md").write_text(
            to_markdown(results["records"], args.sources, results["meta"]), encoding="utf-8")
        if record is not None:
            log.info("%s %s %s: NDCG@10 %.4f", record["region"], record["method"],
                     record.get("weights") or record.get("interactions"), record["ndcg@10"])

    for target in args.targets:
        data = suite_regions(suite, [target])[target]
        base = {"region": target, "seed": args.seed, "protocol": data.protocol,
                "setting": "new-region", "sources": args.sources}
        jobs = [("zero-shot", None, None, 1.0), ("popularity", None, None, 1.0),
                ("merged", "equal", "zero", 1.0), ("merged", "overlap", "zero", 1.0),
                (ABLATION, "equal", "mean", 1.0), (OMIT, "equal", "omit", 1.0),
                (SHARE, "source-share", "zero", 1.0),  # ablations
                (NO_PART, "equal", "zero", 1.0), (PART_MEAN, "equal", "zero", 1.0)]
        jobs += [("lora-n", None, None, f) for f in args.fractions]
        for method, scheme, new_items, fraction in jobs:
            key = {"method": method, "weights": scheme, "new_item_embedding": new_items,
                   "data_fraction": fraction if method == "lora-n" else None}
            if (target, method, scheme, new_items, key["data_fraction"], args.seed) in have:
                old = next(r for r in results["records"] if r["region"] == target
                           and r["seed"] == args.seed and all(r.get(k) == v
                                                              for k, v in key.items()))
                if method != "lora-n" and method != "popularity" and (
                        "holdout_ndcg@10" not in old):  # records made before the column
                    old["holdout_ndcg@10"] = holdout_ndcg(
                        backbone_task(args.backbone) if method == "zero-shot" else
                        merged_task(data, paths, args.backbone, scheme, new_items,
                                    PART_VARIANTS.get(method, "sum"))[0], data)
                    save(None)
                continue
            if method == "zero-shot":
                from benchmarks.jobs import evaluate_task_record

                task = backbone_task(args.backbone)
                record = {**evaluate_task_record(task, data),
                          "holdout_ndcg@10": holdout_ndcg(task, data), "interactions": 0}
            elif method == "popularity":
                source_data = source_data or suite_regions(suite, args.sources)
                record = {**pooled_popularity(data, source_data), "interactions": 0}
            elif method in ("merged", *ABLATIONS):
                record = {**merged_record(data, paths, args.backbone, scheme, new_items,
                                          PART_VARIANTS.get(method, "sum")),
                          "interactions": 0}
            else:
                record = lora_record(suite, data, args.backbone, fraction, args.seed)
            save({**base, **key, **record})
    if results["meta"] is None:  # nothing new to run: refresh the report
        results["meta"] = {**(load_results(OUT).get("meta") or {}),
                           "source_adapters": source_info(paths)}
        write_results(results, OUT)
        OUT.with_suffix(".md").write_text(
            to_markdown(results["records"], args.sources, results["meta"]), encoding="utf-8")
    log.info("wrote %s", OUT)


if __name__ == "__main__":
    main()
