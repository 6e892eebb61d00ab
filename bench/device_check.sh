#!/usr/bin/env bash
# The engine on a lent GPU machine (the device tool), in one call: bench/cuda.py's timings and stages, then the
# engine suite on CUDA.  Two steps:
#   bash bench/device_check.sh prepare   # here: wheels the machine lacks and the inputs, into .dev/ (git-ignored)
#   bash bench/device_check.sh run       # there, with carry [".dev"]: files land in $OUT (about 6 minutes)
# then, here: .venv-bench/bin/python bench/cuda.py score DIR/r/cuda.json --cpu bench/_work/<the CPU runs>.json
# (unpack DIR/small.tar beside DIR/r/cuda.json first).  Budgets in seconds: BENCH_S, DEADLINE_S, TOTAL_S.
set -u
cd "$(dirname "$0")/.." || exit 1
SCAN=scan:scanner+outliers
INPUTS="bunny/100k/clean,bunny/1M/clean,bunny/1M/n0.5,bunny/100k/n0.5,bunny/100k/$SCAN:nonormals,\
torus/100k/$SCAN:nonormals,sphere/100k/$SCAN:nonormals,bunny/100k/$SCAN,torus/100k/$SCAN,sphere/100k/$SCAN"

prepare() {
    # The machine's image has torch, numpy, scipy and numba (Python 3.12) but not these (requirements/engine.txt,
    # formats.txt and tests.txt; pye57 left out: 17 MB, its tests skip); the pins follow the requirements files.
    grep -qx '/.dev/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.dev/' >> .git/info/exclude; }
    mkdir -p .dev/whl .dev/work
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .dev/whl plyfile==1.1.5 pytest-timeout==2.4.0 trimesh==5.2.0 pypcd4==1.5.1 \
        laspy==2.7.0 lazrs==0.8.2 pygltflib==1.16.5 python-neo-lzf pydantic pydantic-core annotated-types \
        typing-inspection dataclasses-json "marshmallow<4" deprecated "typing-extensions>=4.16" || return 1
    # ground truths and the simulated scans (made here by bench/quality.py); the bunny's 1M inputs are made there
    if [ ! -e bench/_work/in_torus_100000_scan-scanner+outliers-nonormals.npz ] || [ ! -e bench/_work/gt_bunny.ply ]; then
        echo "make the inputs first: python3 build.py bench --sizes 100k --shapes bunny,torus,sphere" \
             "--cases clean,n0.5,scan:scanner+outliers,scan:scanner+outliers:nonormals --methods ours --repeat 1" >&2
        return 1
    fi
    cp bench/_work/gt_bunny.ply bench/_work/gt_torus.ply bench/_work/gt_sphere.ply bench/_work/in_bunny_100000_clean.npz \
        bench/_work/in_bunny_100000_n0.5.npz bench/_work/in_*_100000_scan-scanner+outliers*.npz .dev/work/ || return 1
    du -sh .dev
}

run() {
    local t0 left
    t0=$(date +%s)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .dev/whl/*.whl 2>&1 | tail -2
    export PYTHONUNBUFFERED=1
    mkdir -p "$OUT/r"
    timeout -k 5 "${BENCH_S:-230}" python3 bench/cuda.py run --work .dev/work --out "$OUT/r" \
        --deadline "${DEADLINE_S:-150}" --repeat 3 --inputs "$INPUTS" --cli bunny/1M/clean 2>&1 | tee "$OUT/bench.log"
    (cd "$OUT/r" && tar cf ../small.tar $(ls mesh_*.npz | grep -v _1M_) && rm -f $(ls mesh_*.npz | grep -v _1M_))
    timeout -k 5 120 python3 bench/cuda.py stages bunny/1M/clean --work .dev/work --out "$OUT/stages.json" \
        > "$OUT/stages.log" 2>&1
    left=$(( ${TOTAL_S:-430} - ($(date +%s) - t0) ))
    echo "bench and stages took $(( $(date +%s) - t0 )) s; the suite gets $left s"
    timeout -k 5 "$left" python3 -m pytest tests/engine -v -n 8 -p no:cacheprovider -rfE \
        -k "not dask and not local-cluster" > "$OUT/tests.log" 2>&1
    echo "pytest rc $?"
    grep -E "FAILED|ERROR|passed|failed" "$OUT/tests.log" | grep -v "PASSED" | tail -30
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash bench/device_check.sh prepare|run" >&2; exit 2 ;;
esac
