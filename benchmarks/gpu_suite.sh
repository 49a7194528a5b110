#!/usr/bin/env bash
# GPU readiness in minutes (issue 14): the cuda-marked tests, bench_extract.py and bench_eval.py end to end
# on one GPU, the figures collected into one JSON file.
#
#     bash benchmarks/gpu_suite.sh [OUT_DIR]        # default OUT_DIR: gpu_suite_out
#
# Writes OUT_DIR/gpu_suite.json: {"tests": {"rc", "summary"}, "bench_extract": {"rc", "output"},
# "bench_eval_end_to_end": <bench_eval.py --json figures>, "bench_eval_modes": <figures>}; each step has
# its own timeout so the whole suite stays under 8 minutes, and a failed step does not stop the others.
set -u
cd "$(dirname "$0")/.."
out="${1:-gpu_suite_out}"
mkdir -p "$out"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_suite.sh: no CUDA device')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1

timeout 150 python -m pytest -q -m cuda tests/test_cuda.py tests/test_metric_pool.py > "$out/tests.txt" 2>&1
echo $? > "$out/tests.rc"
timeout 120 python benchmarks/bench_extract.py --rounds 3 > "$out/bench_extract.txt" 2>&1
echo $? > "$out/bench_extract.rc"
timeout 150 python benchmarks/bench_eval.py --end-to-end --device cuda --rounds 2 --workers 0 1 2 \
    --json "$out/bench_eval_end_to_end.json" > "$out/bench_eval_end_to_end.txt" 2>&1
echo $? > "$out/bench_eval_end_to_end.rc"
timeout 60 python benchmarks/bench_eval.py --modes --maps 2 --rounds 1 --sizes 224 \
    --json "$out/bench_eval_modes.json" > "$out/bench_eval_modes.txt" 2>&1
echo $? > "$out/bench_eval_modes.rc"

python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def text(name):
    path = out / name
    return path.read_text() if path.exists() else ""
def figures(name):
    try:
        return json.loads(text(name))
    except ValueError:
        return None
suite = {"gpu": text("gpu.txt").strip(),
         "tests": {"rc": int(text("tests.rc") or 1), "summary": text("tests.txt").strip().splitlines()[-1:]},
         "bench_extract": {"rc": int(text("bench_extract.rc") or 1), "output": text("bench_extract.txt")[-4000:]}}
for step in ("bench_eval_end_to_end", "bench_eval_modes"):
    suite[step] = {"rc": int(text(step + ".rc") or 1), "figures": figures(step + ".json"),
                   "output": text(step + ".txt")[-2000:]}
(out / "gpu_suite.json").write_text(json.dumps(suite, indent=1))
print(json.dumps({k: v.get("rc") if isinstance(v, dict) else v for k, v in suite.items()}))
PY
