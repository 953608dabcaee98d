"""Benchmark: the same bi-encoder on CPU as torch fp32, torch bf16, ONNX fp32 and ONNX int8 (densetune export).

The model is exported once into ``--dir`` (``densetune export MODEL --to onnx --quantize int8``); each
variant then runs through densetune's own encoding path (the ONNX ones with
:func:`densetune.export.load_onnx_biencoder`, so tokenisation, pooling and normalisation are shared), with
``--threads`` threads for torch and onnxruntime alike.

Reported per variant:

- passages/s: ``--speed-passages`` SciFact passages (corpus order), batch ``--batch-size``, after one
  warm-up batch; wall time, and passages per CPU-second (steadier on a shared machine).
- SciFact test nDCG@10: all 300 test queries against the corpus (``--docs 0``, 5,183 passages) or a
  slice of ``--docs`` passages: every passage judged relevant for a test query, then the others in corpus
  order (the slice is easier than the full corpus; variants compare on the same slice).
- max |embedding - torch fp32| over the speed passages.

Usage:
    python bench/bench_export.py                      # 1,000-passage slice, 256 passages timed
    python bench/bench_export.py --docs 0             # the full SciFact corpus (slow on 2 cores)
    python bench/bench_export.py --skip-ndcg          # passages/s only
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench_common import SCIFACT, Clock, default_model, print_header, print_machine, set_offline_env

VARIANTS = ("torch fp32", "torch bf16", "onnx fp32", "onnx int8")


def scifact_slice(data: Path, docs: int, out: Path) -> Path:
    """A BEIR directory with SciFact's test queries and ``docs`` passages (0: all), relevant ones first."""
    if docs == 0:
        return data
    qrels = [line.rstrip("\r\n").split("\t") for line in open(data / "qrels" / "test.tsv", encoding="utf-8")][
        1:
    ]
    relevant = {d for _, d, _ in qrels}
    with open(data / "corpus.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    keep = [r for r in rows if r["_id"] in relevant]
    keep += [r for r in rows if r["_id"] not in relevant][: max(0, docs - len(keep))]
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for r in keep:
            f.write(json.dumps(r) + "\n")
    (out / "queries.jsonl").write_text((data / "queries.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    (out / "qrels" / "test.tsv").write_text((data / "qrels" / "test.tsv").read_text(encoding="utf-8"))
    return out


def load_variant(name: str, torch_dir: str, onnx_dir: Path, threads: int):
    import torch

    from densetune.export import load_onnx_biencoder
    from densetune.models.biencoder import BiEncoder

    if name == "torch fp32":
        return BiEncoder.from_pretrained(torch_dir).eval()
    if name == "torch bf16":
        return BiEncoder.from_pretrained(torch_dir, dtype=torch.bfloat16).eval()
    file_name = "onnx/model.onnx" if name == "onnx fp32" else "onnx/model_qint8.onnx"
    return load_onnx_biencoder(onnx_dir, file_name, threads=threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="bi-encoder folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--data", default=str(SCIFACT), help="SciFact BEIR directory")
    parser.add_argument("--dir", default="runs/bench_export", help="work directory (export, slice)")
    parser.add_argument("--docs", type=int, default=1000, help="corpus slice size; 0 = full SciFact")
    parser.add_argument("--speed-passages", type=int, default=256, help="passages timed per variant")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads")
    parser.add_argument("--skip-ndcg", action="store_true", help="speed only (nDCG column left empty)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    args = parser.parse_args()
    set_offline_env()
    import numpy as np
    import torch

    from densetune.data.corpus import doc_text, load_corpus
    from densetune.export import export_onnx
    from densetune.retrieval.evaluate import evaluate_model

    torch.set_num_threads(args.threads)
    model = args.model or default_model()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    onnx_dir = work / "model"
    if not (onnx_dir / "onnx" / "model_qint8.onnx").is_file():
        with Clock() as clock:
            result = export_onnx(model, onnx_dir, quantize="int8")
        print(f"exported in {clock.wall:.0f}s; max |onnx - torch|: {result.max_diff}")
    data = scifact_slice(Path(args.data), args.docs, work / f"scifact_{args.docs}")
    os.environ["DENSETUNE_CACHE"] = str(work / "cache")
    corpus = load_corpus(Path(args.data) / "corpus.jsonl", cache_dir=work / "cache")
    passages = [doc_text(d) for d in corpus.docs(np.arange(min(args.speed_passages, len(corpus))))]
    n_docs = sum(1 for _ in open(data / "corpus.jsonl", encoding="utf-8"))
    print_machine()
    print(f"model {model}; {args.threads} threads; nDCG@10 over 300 test queries x {n_docs} passages")
    header = f"{'variant':<12} {'passages/s':>11} {'per CPU-s':>10} {'nDCG@10':>8} {'max |diff|':>11}"
    rows = []
    reference = None
    for name in args.variants.split(","):
        encoder = load_variant(name, model, onnx_dir, args.threads)
        encoder.encode_texts(passages[: args.batch_size], is_query=False, batch_size=args.batch_size)
        with Clock() as clock:
            emb = encoder.encode_texts(passages, is_query=False, batch_size=args.batch_size).numpy()
        reference = emb if reference is None else reference
        diff = float(np.abs(emb - reference).max())
        ndcg = "-"
        if not args.skip_ndcg:
            means = evaluate_model(
                encoder, data, "test", metrics=["ndcg@10"], batch_size=args.batch_size, device="cpu",
                show_progress=False,
            )  # fmt: skip
            ndcg = f"{means['ndcg@10']:.4f}"
        rows.append(
            f"{name:<12} {len(passages) / clock.wall:>11.1f} {len(passages) / clock.cpu:>10.1f} "
            f"{ndcg:>8} {diff:>11.2e}"
        )
        print(rows[-1], flush=True)
    print()
    print_header(header)
    print("\n".join(rows))
    print(f"({time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
