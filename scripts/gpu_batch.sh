#!/usr/bin/env bash
# One device call's worth of GPU work, in three parts that each fit a 10-minute call (results under $OUT, or ./out).
#
#   bash scripts/gpu_batch.sh tests   # the Triton GPU tests, five pytest processes at once (compiles in parallel);
#                                     # the encode kernels' tests compile long: `encode` runs them
#   bash scripts/gpu_batch.sh sweep   # fast-kernel variants: decoder tables, tiles/warps, register caps, splits
#                                     # (SHAPES, KINDS, HEAD_DIM, VARIANTS override the defaults)
#   bash scripts/gpu_batch.sh ncu     # stall reasons of the default fast kernel (turbo4, B=8, T=32K)
#   bash scripts/gpu_batch.sh bench   # compactkv bench kernels: decode vs SDPA, encode GB/s vs copy, issue shapes
#   bash scripts/gpu_batch.sh graphs  # static-cache tests, then bench e2e --graphs (both sides in CUDA graphs)
#   bash scripts/gpu_batch.sh gluon   # Gluon kernel tests, then Gluon vs fast kernel vs SDPA (graphs)
#   bash scripts/gpu_batch.sh pipeline  # Gluon tests (3 processes), then its load pipelines (prefetch/stages) vs SDPA
#   bash scripts/gpu_batch.sh ncu-gluon # what limits the Gluon kernel: pipes, stalls (B=8 T=32K), kernels of a B=1 step
#   bash scripts/gpu_batch.sh lut       # table-kernel tests, its pipes and stalls (ncu, B=8 T=32K), table vs Gluon sweep
#   bash scripts/gpu_batch.sh defaults  # the default table build's tests, e2e B=8 T=32K (graphs), dynamic TTFT, kernels
#   bash scripts/gpu_batch.sh lut-turbo2  # the turbo2 table kernel's tests, then it vs the Gluon kernel (turbo2 sweep)
#   bash scripts/gpu_batch.sh qmap    # the table kernel's prologue query map and in-kernel finish: tests, sweep
#   bash scripts/gpu_batch.sh final   # the finishing table kernel's tests, its sweep, e2e B=8 T=32K (graphs)
#   bash scripts/gpu_batch.sh rows    # the table kernel over codec rows (the dynamic cache): its tests, the layer
#                                     # tests, the finishing kernel's; rows (pipe/regs) vs row kernel vs planar sweep
#   bash scripts/gpu_batch.sh rows-bench  # compactkv bench kernels (dynamic rows vs the row kernel vs planar, encode),
#                                     # then bench e2e over the dynamic cache (eager, both sides) at B=8 T=32K
#   bash scripts/gpu_batch.sh rows64  # turbo4 rows at head_dim 64: tests, rows vs the row-format kernel
#   bash scripts/gpu_batch.sh glue    # layer/dispatch/static tests, host cost per layer call, eager dynamic e2e
#   bash scripts/gpu_batch.sh encode  # the row-per-thread encode kernel: encode tests (both kernels, 4 processes) and
#                                     # the tests of every path that encodes; bench kernels' encode table and prefill
#   bash scripts/gpu_batch.sh all-tests  # every GPU test file, SHARDS (16) pytest processes at once, round-robin
#                                     # (scripts/pytest_shards.py), each cut at TEST_TIMEOUT (520 s); not the sm_90
#                                     # compile-only tests (the CPU suite runs them)
#   bash scripts/gpu_batch.sh static-bench  # the static cache's graphed step per variant (sinks, centering,
#                                     # key scaling), one layer's one-token update, serve --graphs x4
#   bash scripts/gpu_batch.sh fuse-sinks  # sinks + key mean in the finishing table kernel: tests, graphed step one
#                                     # launch vs two, bench e2e --graphs B=8 T=32K (f16-nomask, turbo4)
#   bash scripts/gpu_batch.sh compile  # pair-encode, static-graph, compiled-model and engine CUDA tests (4
#                                     # processes), then bench e2e --graphs --compile B=8 T=32K (f16-nomask,
#                                     # turbo4; turbo4 again with K/V in two encode launches)
#   bash scripts/gpu_batch.sh compile-wide  # bench e2e --graphs --compile over more cells (turbo3/turbo2 at B=8
#                                     # T=32K, B=8 T=128K turbo4, B=1 T=32K/128K), then run/serve --graphs --compile
#                                     # (engine_graphs_bench.py --compile, B=1 and 4 sequences)
#   bash scripts/gpu_batch.sh phase-clocks  # the stamped table kernel's CUDA test, then where a finishing
#                                     # table-kernel step's time goes (scripts/phase_clocks.py: prologue, loop,
#                                     # merge / last program's tail, start skew; B=1 T=128K/32K, B=8 T=32K/128K)
#   bash scripts/gpu_batch.sh kbytes  # K in byte order: table-kernel, dispatch, static-graph and finish CUDA tests
#                                     # (SHARDS processes), then the finishing table kernel vs SDPA (graphs)
#   bash scripts/gpu_batch.sh occupancy  # 4-warp table programs (three per SM) vs the default, warmed in parallel
#   bash scripts/gpu_batch.sh stream  # the table kernel's bytes read by a load-only kernel (its pattern) vs the kernel
#   bash scripts/gpu_batch.sh ncu-table  # stall reasons and pipes of the default finishing table kernel (ncu)
#   AB=DIR bash scripts/gpu_batch.sh ab  # the finishing kernel's CUDA tests (this tree), then this tree's default
#                                     # build vs the one in DIR (a `git archive <commit> compactkv` copy) in one
#                                     # call, twice interleaved (graphs; KINDS, SHAPES override)
#   bash scripts/gpu_batch.sh hadamard  # the maps as Hadamard factors (session 23): the finishing kernel's CUDA
#                                     # tests (both maps), then factors vs dense maps in one sweep (graphs)
#   bash scripts/gpu_batch.sh hadamard-clocks  # the phase stamps of both, then the static-cache and dispatch tests
#   AB=DIR bash scripts/gpu_batch.sh early  # session 24: the table kernel's, dispatch and static-cache CUDA tests
#                                     # (this tree; SHARDS processes), then this tree vs DIR's (sweep, graphs; RUNS
#                                     # times interleaved), T3TILES=1: turbo3 in 64-token tiles, then (CLOCKS=0:
#                                     # not) both trees' phase stamps
#   AB=DIR THIS_VARIANTS='[...]' [CLOCK_OPTIONS='{...}'] bash scripts/gpu_batch.sh early  # the same with this
#                                     # tree's variants (attend_planes keywords, e.g. lut_early) in its sweeps, and
#                                     # its stamps with those options
#   bash scripts/gpu_batch.sh early-options  # the lut_early and stamp tests, then each kind with its first tiles'
#                                     # loads the other way (lut_early) vs its default (graphs), and the phase stamps
#                                     # with the SMs' lateness (sm_lateness)
#   IDS=FILE bash scripts/gpu_batch.sh ids  # node ids listed in FILE (a cut run's pytest_unreached.txt), 4 processes
#                                     # then, with BENCH=<mode>, that mode
#   bash scripts/gpu_batch.sh encode-bench  # the encode table alone (scripts/encode_bench.py), compiled first in
#                                     # 15 processes
#   bash scripts/gpu_batch.sh swap-record  # session 27: the swap checks (default decode / encode / layer / graph
#                                     # tests, decode sweep, encode bench) with every kernel compile recorded
#                                     # (scripts/triton_swap.py); $OUT/swap-rec.tgz holds the records
#   SWAP=FILE.tgz bash scripts/gpu_batch.sh swap-replay  # the same tests with another triton release's builds of
#                                     # those kernels (triton_swap.py build) swapped in; the encode bench with this
#                                     # release's builds, then with the other's
#   SWAP=FILE.tgz bash scripts/gpu_batch.sh swap-ab  # the decode sweep, this release's builds and the other's, twice
#   SWAPS="A.tgz B.tgz" bash scripts/gpu_batch.sh swap-ab  # several build sets: sweeps (twice) and the encode bench
#   AB=DIR SWAPS="A.tgz B.tgz" bash scripts/gpu_batch.sh encode-swap  # session 27: the encode kernels' CUDA tests
#                                     # (this tree: every row-kernel case; with the first of SWAPS swapped in: the
#                                     # recorded d128 cases), then the encode bench: this tree, DIR's tree, each of SWAPS
#   bash scripts/gpu_batch.sh turbo3  # the turbo3 table kernel's tests and static-cache tests, turbo3 sweep (table
#                                     # vs split kernel), e2e B=8 T=32K (graphs), dynamic TTFT, the prefill's syncs
#
# The device copy's git metadata is stale: start the call with COMPACTKV_COMMIT=<this checkout's short HEAD> so the
# JSON reports name the tree that ran (compactkv.bench.provenance).
#
# The sweep's variants (a JSON list in VARIANTS overrides them) are attend_packed keyword sets
# (scripts/decode_sweep.py); the first one is the default, every other variant's output is compared with it (err
# column) and timed as CUDA-graph medians next to SDPA.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=.
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader

swap_ids() {  # session 27: the tests of the default paths that run with another release's builds swapped in
    c="python -m pytest --collect-only -q -p no:warnings"
    { $c tests/test_lut_decode.py -k "fused_table_kernel_vs_float64 or \
sinks_and_key_mean or fused_table_kernel_dtypes or table_kernel_over_rows_vs_float64 or stamped_finishing"
      $c tests/test_triton_encode.py -k "(row and d128 and bit_identical) or pair_kernel_bit_identical"
      $c tests/test_triton_dispatch.py
      $c tests/test_static_graphs.py -k "static_kernels_match or graph_replay or merges_sinks_in_one_launch"
    } | grep '::'
}
swap_unpack() {  # each tarball of $SWAPS into /tmp/sw-<its name>
    for t in $SWAPS; do n=$(basename "$t" .tgz); mkdir -p "/tmp/sw-$n" && tar -xzf "$t" -C "/tmp/sw-$n"; done
}
swap_dir() {  # the folder holding the cubins of build set $1 (a tarball's name)
    dirname "$(find "/tmp/sw-$1" -name '*.cubin' | head -1)"
}
warm_encode() {  # the encode bench's configurations compiled in $1 processes in the background (a tree: $2)
    PYTHONPATH="${2:-.}" python -c "import sys; sys.path.insert(0, 'scripts'); import encode_bench; encode_bench.warm($1)" \
        > "/tmp/warm-encode-$RANDOM.txt" 2>&1 &
}
swap_encode() {  # the encode bench: $1 a wrap (triton_swap.py ...) or nothing, $2 a name, $3 PYTHONPATH (.)
    PYTHONPATH="${3:-.}" timeout 150 python $1 scripts/encode_bench.py --json "$OUT/swap/encode-$2.json" \
        > "$OUT/swap/encode-$2.txt" 2>&1
    echo "== encode $2"; grep -v Warn "$OUT/swap/encode-$2.txt" | tail -20
}
summarize() {  # each pytest log's failures and counts, or that the time limit cut it
    for f in "$OUT"/pytest_*.txt; do
        echo "== $f"; grep -E "^FAILED|passed|failed|error" "$f" | tail -20
        grep -qE "passed|failed|no tests ran" "$f" || { echo "   no summary: cut by the time limit"; tail -c 300 "$f"; }
    done
}
ab_check() {  # AB: a directory holding another tree's compactkv package (a `git archive <commit> compactkv` copy)
    [ -d "${AB:-}/compactkv" ] || { echo "AB=DIR: a directory holding another tree's compactkv package"; exit 2; }
}
ab_variants() {  # the sweep variants of tree $1: this tree's THIS_VARIANTS (default its default build), AB's default
    [ "$1" = . ] && echo "${THIS_VARIANTS:-[{\"gluon\": true\}]}" || echo '[{"gluon": true}]'
}
ab_warm() {  # both trees' builds compiled in the background (one small sweep per kind and tree; this tree's
    # variants THIS_VARIANTS, default its default build)
    for k in $(echo "${KINDS:-turbo4,turbo3,turbo2}" | tr , ' '); do
        for tree in "$AB" .; do
            v=$(ab_variants "$tree")
            PYTHONPATH="$tree:." timeout 200 python scripts/decode_sweep.py --shapes 1x8192 --kinds "$k" \
                --variants "$v" > /dev/null 2>&1 &
        done
    done
}
ab_sweeps() {  # $1 runs of the AB tree's default build then this tree's, interleaved; $2 the shapes unless SHAPES
    for r in $(seq "$1"); do
        for tree in "$AB" .; do
            name=$([ "$tree" = . ] && echo this || echo ab)
            v=$(ab_variants "$tree")
            PYTHONPATH="$tree:." timeout "${SWEEP_TIMEOUT:-120}" python scripts/decode_sweep.py \
                --json "$OUT/sweep-$name-$r.json" --shapes "${SHAPES:-$2}" --kinds "${KINDS:-turbo4,turbo3,turbo2}" \
                --variants "$v" > "$OUT/sweep-$name-$r.txt" 2>&1
            echo "== $name run $r"; grep -E "SDPA|x [0-9]|FAILED" "$OUT/sweep-$name-$r.txt"
        done
    done
}
case "${1:-}" in
tests)
    # five processes at once (the GPU tests are mostly compile time; the device has 16 cores), each cut at 9 min
    t="timeout ${TEST_TIMEOUT:-540}"
    $t python -m pytest -q -p no:warnings -k "fast_kernel_configurations" tests/test_triton_kernels.py \
        > "$OUT/pytest_a.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings -k "not fast_kernel_configurations" tests/test_triton_kernels.py \
        > "$OUT/pytest_b.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings tests/test_triton_finish.py tests/test_triton_dispatch.py \
        tests/test_fast_sass.py tests/test_cache.py > "$OUT/pytest_c.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings tests/test_lut_decode.py > "$OUT/pytest_d.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings tests/test_static_graphs.py tests/test_gluon_decode.py \
        > "$OUT/pytest_e.txt" 2>&1 &
    wait
    summarize
    ;;
qmap)
    # the query map in the table kernel's prologue and the step finished in it: their tests, the static-cache
    # tests, then one launch vs the kernel + finishing launch vs the query-map launch + kernel + finishing launch
    t="timeout ${TEST_TIMEOUT:-300}"
    $t python -m pytest -q -p no:warnings -k "query_map or fused" tests/test_lut_decode.py \
        > "$OUT/pytest_qmap.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings tests/test_static_graphs.py > "$OUT/pytest_static.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings -k "ragged or splits" tests/test_gluon_decode.py \
        > "$OUT/pytest_gluon.txt" 2>&1 &
    wait
    summarize
    python scripts/decode_sweep.py --kernels --json "$OUT/sweep-qmap.json" \
        --shapes "${SHAPES:-8x32768,8x131072,1x131072,1x32768}" --kinds "${KINDS:-turbo4,turbo3,turbo2}" \
        --variants '[{"gluon": true}, {"gluon": true, "fused": false}, {"gluon": true, "qmap": false}]' \
        > "$OUT/sweep-qmap.txt" 2>&1
    tail -30 "$OUT/sweep-qmap.txt"
    ;;
rows)
    t="timeout ${TEST_TIMEOUT:-300}"
    $t python -m pytest -q -p no:warnings -k "rows" tests/test_lut_decode.py > "$OUT/pytest_rows.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings -k "layer" tests/test_triton_kernels.py > "$OUT/pytest_layer.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings -k "fused" tests/test_lut_decode.py > "$OUT/pytest_fused.txt" 2>&1 &
    wait
    summarize
    timeout 270 python scripts/decode_sweep.py --kernels --json "$OUT/sweep-rows.json" \
        --shapes "${SHAPES:-8x32768,8x131072,1x131072,1x32768}" --kinds "${KINDS:-turbo4,turbo3,turbo2}" \
        --variants '[{}, {"lut_pipe": 2}, {"lut_maxnreg": 232}, {"rows": false}, {"gluon": true}]' \
        > "$OUT/sweep-rows.txt" 2>&1
    tail -40 "$OUT/sweep-rows.txt"
    ;;
rows-bench)
    timeout 120 python -m pytest -q -p no:warnings -k "rows" tests/test_lut_decode.py > "$OUT/pytest_rows.txt" 2>&1
    summarize
    timeout 300 python -m compactkv.cli bench kernels --json "$OUT/kernels.json" --prefill '' --batches 1,8 \
        --contexts 32768,131072 --kinds turbo4,turbo3,turbo2 > "$OUT/kernels.txt" 2>&1
    tail -30 "$OUT/kernels.txt"
    timeout 150 python -m compactkv.cli bench e2e --batches 8 --synthetic-contexts 32768 --kinds f16,turbo4,turbo3 \
        --steps 16 --warmup 2 --json "$OUT/e2e-dynamic-b8.json" > "$OUT/e2e-dynamic-b8.txt" 2>&1
    tail -12 "$OUT/e2e-dynamic-b8.txt"
    ;;
rows64)
    # turbo4 rows at head_dim 64 (the default model's head_dim): its tests, then it vs the row-format fast kernel
    timeout 150 python -m pytest -q -p no:warnings -k "head_dim_64 or rows_names" tests/test_lut_decode.py \
        > "$OUT/pytest_rows64.txt" 2>&1
    summarize
    timeout 120 python scripts/decode_sweep.py --kernels --json "$OUT/sweep-rows64.json" --head-dim 64 \
        --shapes "${SHAPES:-8x32768,1x32768}" --kinds turbo4 --variants '[{}, {"rows": false}]' \
        > "$OUT/sweep-rows64.txt" 2>&1
    grep -v "^   " "$OUT/sweep-rows64.txt" | tail -8
    ;;
glue)
    # after a change of the backend's host code: the layer, dispatch and static-cache tests, then the host cost of
    # one layer's decode step (compressed vs fp16) and the eager e2e over the dynamic cache
    t="timeout ${TEST_TIMEOUT:-200}"
    $t python -m pytest -q -p no:warnings -k "layer" tests/test_triton_kernels.py > "$OUT/pytest_layer.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings tests/test_static_graphs.py > "$OUT/pytest_static.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings tests/test_triton_dispatch.py > "$OUT/pytest_dispatch.txt" 2>&1 &
    wait
    summarize
    for b in 1 8; do
        timeout 60 python scripts/host_overhead.py --batch $b --context 32768 --calls 400 \
            --json "$OUT/host-b$b.json" > "$OUT/host-b$b.txt" 2>&1
        head -3 "$OUT/host-b$b.txt"
    done
    timeout 150 python -m compactkv.cli bench e2e --batches 8 --contexts 32768 --synthetic-contexts 32768 \
        --kinds f16,turbo4 --steps 16 --warmup 2 --json "$OUT/e2e-dynamic-b8.json" > "$OUT/e2e-dynamic-b8.txt" 2>&1
    tail -8 "$OUT/e2e-dynamic-b8.txt"
    ;;
all-tests)
    # left out: the interpreter test and the sm_90 compile-only tests (tests/test_fast_sass.py, *compiles_for_sm90*:
    # the same Triton compiles them for the same target on the CPU, where the full suite runs them)
    python scripts/pytest_shards.py --shards "${SHARDS:-16}" --timeout "${TEST_TIMEOUT:-520}" --out "$OUT" \
        -k "not in_interpreter and not compiles_for_sm90" tests/test_triton_encode.py tests/test_triton_kernels.py \
        tests/test_triton_finish.py tests/test_triton_dispatch.py tests/test_static_graphs.py \
        tests/test_gluon_decode.py tests/test_lut_decode.py tests/test_rotation.py tests/test_engine_graphs.py
    ;;
static-bench)
    # the static cache's graphed step: default (sinks + centering) vs 0 sinks vs plain rows vs key scaling, one
    # layer's one-token update per variant, then 4 sequences through `serve --graphs`' scheduler
    timeout 200 python scripts/engine_graphs_bench.py --prompt 1024 --new 128 --kinds turbo4 --graphs-only \
        --graph-sinks 0,plain,scaled --json "$OUT/static-graphs.json" 2>&1 | grep -v "^Loading" | tail -5
    timeout 240 python scripts/static_update_bench.py --json "$OUT/static-update.json" 2>&1 | tail -5
    timeout 200 python scripts/engine_graphs_bench.py --serve 4 --serve-only --prompt 1024 --new 96 \
        --kinds turbo4 --json "$OUT/serve-graphs.json" 2>&1 | tail -3
    ;;
fuse-sinks)
    # the static cache's sinks and key mean merged by the finishing table kernel (backend.FUSE_SINKS): its tests
    # (3 processes), the graphed step one launch vs two per layer, then bench e2e --graphs at B=8 T=32K (synthetic
    # fill) with the sinks merged in one launch (f16-nomask, turbo4) and in two (turbo4, COMPACTKV_FUSE_SINKS=0)
    t="timeout ${TEST_TIMEOUT:-200}"
    $t python -m pytest -q -p no:warnings -k "sinks" tests/test_lut_decode.py > "$OUT/pytest_fs_a.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings -k "merges_sinks" tests/test_static_graphs.py > "$OUT/pytest_fs_b.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings -k "fused and not sinks and not configurations" tests/test_lut_decode.py \
        > "$OUT/pytest_fs_d.txt" 2>&1 &
    wait
    summarize
    timeout 120 python scripts/engine_graphs_bench.py --prompt 1024 --new 128 --kinds turbo4 --graphs-only \
        --graph-sinks two-launch,0 --json "$OUT/fuse-sinks.json" 2>&1 | grep -v "^Loading" | tail -4
    e2e="python -m compactkv.cli bench e2e --graphs --batches 8 --contexts= --synthetic-contexts 32768 --steps 32"
    timeout 120 $e2e --kinds f16-nomask,turbo4 --warmup 3 --json "$OUT/e2e-b8-one.json" > "$OUT/e2e-b8-one.txt" 2>&1
    tail -3 "$OUT/e2e-b8-one.txt"
    COMPACTKV_FUSE_SINKS=0 timeout 100 $e2e --kinds turbo4 --warmup 3 --json "$OUT/e2e-b8-two.json" \
        > "$OUT/e2e-b8-two.txt" 2>&1
    tail -2 "$OUT/e2e-b8-two.txt"
    ;;
compile)
    # session 18: the model's own code through torch.compile on both sides (engine.graphs.compiled_model), K and V
    # of a static layer's decode step in one encode launch (encode.encode_pair; COMPACTKV_ENCODE_PAIR=0: two)
    # (first: the pair kernel's CUDA tests: since session 18's last commits it runs one row per program for
    # one-token steps, not yet run on a GPU)
    t="timeout ${TEST_TIMEOUT:-200}"
    $t python -m pytest -q -p no:warnings tests/test_triton_encode.py -k pair > "$OUT/pytest_cp_a.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings tests/test_static_graphs.py -k "graph_replay or static_kernels_match" \
        > "$OUT/pytest_cp_b.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings tests/test_static_graphs.py -k "compiled or merges_sinks" \
        > "$OUT/pytest_cp_c.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings tests/test_engine_graphs.py -k "cuda" > "$OUT/pytest_cp_d.txt" 2>&1 &
    wait
    summarize
    e2e="python -m compactkv.cli bench e2e --graphs --compile --batches 8 --contexts= --synthetic-contexts 32768"
    e2e="$e2e --steps 32 --warmup 3"
    timeout 150 $e2e --kinds f16-nomask,turbo4 --json "$OUT/e2e-compile.json" > "$OUT/e2e-compile.txt" 2>&1
    tail -3 "$OUT/e2e-compile.txt"
    COMPACTKV_ENCODE_PAIR=0 timeout 100 $e2e --kinds turbo4 --json "$OUT/e2e-compile-two.json" \
        > "$OUT/e2e-compile-two.txt" 2>&1
    tail -2 "$OUT/e2e-compile-two.txt"
    ;;
compile-wide)
    # session 19: the compiled graphed step beyond B=8 T=32K turbo4, and the engine's paths with --compile (their
    # first GPU run)
    e2e="python -m compactkv.cli bench e2e --graphs --compile --contexts= --steps ${STEPS:-64} --warmup 3"
    timeout 170 $e2e --batches 8 --synthetic-contexts 32768 --kinds f16-nomask,turbo4,turbo3,turbo2 \
        --json "$OUT/e2e-compile-b8.json" > "$OUT/e2e-compile-b8.txt" 2>&1
    tail -5 "$OUT/e2e-compile-b8.txt"
    timeout 120 $e2e --batches 1 --synthetic-contexts 32768,131072 --kinds f16-nomask,turbo4 \
        --json "$OUT/e2e-compile-b1.json" > "$OUT/e2e-compile-b1.txt" 2>&1
    tail -5 "$OUT/e2e-compile-b1.txt"
    timeout 100 $e2e --batches 8 --synthetic-contexts 131072 --kinds turbo4 \
        --json "$OUT/e2e-compile-b8-128k.json" > "$OUT/e2e-compile-b8-128k.txt" 2>&1
    tail -2 "$OUT/e2e-compile-b8-128k.txt"
    timeout 200 python scripts/engine_graphs_bench.py --compile --graphs-only --kinds turbo4,f16 --prompt 1024 \
        --new 128 --serve 4 --json "$OUT/engine-compile.json" > "$OUT/engine-compile.txt" 2>&1
    tail -12 "$OUT/engine-compile.txt"
    ;;
phase-clocks)
    # session 19 (written without device time): the fixed part of a step (docs/kernels.md, session 19), per phase
    timeout 240 python -m pytest -q -p no:warnings tests/test_lut_decode.py -k "stamped or phase_clock" \
        > "$OUT/pytest_clocks.txt" 2>&1
    tail -3 "$OUT/pytest_clocks.txt"
    timeout 300 python scripts/phase_clocks.py --shapes "${SHAPES:-1x131072,1x32768,8x32768,8x131072}" \
        --kinds "${KINDS:-turbo4,turbo2}" --json "$OUT/phase-clocks.json" 2>&1 | tail -40
    ;;
kbytes)
    # session 20: K decoded in byte order (turbo4; turbo2 too at 8427b23, where this ran): the table kernel's and
    # its callers' CUDA tests in SHARDS (12) processes, then the finishing kernel vs SDPA (graphs) at the issue's shapes
    python scripts/pytest_shards.py --shards "${SHARDS:-12}" --timeout "${TEST_TIMEOUT:-300}" --out "$OUT" \
        -k "not in_interpreter and not compiles_for_sm90" tests/test_lut_decode.py tests/test_triton_dispatch.py \
        tests/test_static_graphs.py tests/test_triton_finish.py
    timeout 280 python scripts/decode_sweep.py --kernels --json "$OUT/sweep-kbytes.json" \
        --shapes "${SHAPES:-8x32768,8x131072,1x131072,1x32768}" --kinds "${KINDS:-turbo4,turbo3,turbo2}" \
        --variants '[{"gluon": true}]' > "$OUT/sweep-kbytes.txt" 2>&1
    grep -E "SDPA|x [0-9]" "$OUT/sweep-kbytes.txt" | tail -30
    ;;
occupancy)
    # session 21: more warps per scheduler (4-warp programs at 168 registers: three per SM) vs the default
    # (one 8-warp program at 255) and one tile ahead at 168; each kind's builds compiled first in parallel (small
    # shape, output dropped), then timed one at a time (graphs) next to SDPA
    V=${VARIANTS:-'[{"gluon": true}, {"gluon": true, "lut_pipe": 2, "lut_maxnreg": 168}, {"gluon": true, "lut_warps": 4, "lut_pipe": 2, "lut_maxnreg": 168}, {"gluon": true, "lut_warps": 4, "lut_pipe": 2, "lut_maxnreg": 128}]'}
    for k in $(echo "${KINDS:-turbo4,turbo3,turbo2}" | tr , ' '); do
        timeout 200 python scripts/decode_sweep.py --shapes 1x8192,8x8192 --kinds "$k" --variants "$V" \
            > "$OUT/warm-$k.txt" 2>&1 &
    done
    wait
    grep -h FAILED "$OUT"/warm-*.txt
    timeout "${SWEEP_TIMEOUT:-330}" python scripts/decode_sweep.py --json "$OUT/sweep-occupancy.json" \
        --shapes "${SHAPES:-8x32768,8x131072,1x131072,1x32768}" --kinds "${KINDS:-turbo4,turbo3,turbo2}" \
        --variants "$V" > "$OUT/sweep-occupancy.txt" 2>&1
    grep -E "SDPA|x [0-9]|FAILED" "$OUT/sweep-occupancy.txt" | tail -60
    ;;
stream)
    # session 21: the table kernel's bytes read by a load-only kernel in its pattern (scripts/stream_bench.py),
    # next to the table kernel's step and SDPA; then the node ids in IDS (if set)
    timeout "${SWEEP_TIMEOUT:-300}" python scripts/stream_bench.py --json "$OUT/stream.json" \
        --shapes "${SHAPES:-8x32768,8x131072,1x131072}" --kinds "${KINDS:-turbo4,turbo2}" > "$OUT/stream.txt" 2>&1
    tail -45 "$OUT/stream.txt"
    [ -n "${IDS:-}" ] && python scripts/pytest_shards.py --shards "${SHARDS:-3}" --timeout "${TEST_TIMEOUT:-240}" \
        --out "$OUT" --ids "$IDS" && summarize
    ;;
ncu-table)
    # what the default finishing table kernel waits on (B=8 T=32K turbo4 and turbo2, B=1 T=128K turbo4): pipes,
    # issue, stall reasons as shares of active warp cycles
    stalls=$(printf 'smsp__warp_issue_stalled_%s_per_warp_active.pct,' long_scoreboard short_scoreboard mio_throttle \
        lg_throttle math_pipe_throttle wait barrier not_selected selected dispatch_stall no_instruction branch_resolving)
    for run in "turbo4 8 32768" "turbo2 8 32768" "turbo4 1 131072"; do
        echo "== $run" >> "$OUT/ncu-table.txt"
        timeout 150 ncu --clock-control none --kernel-name regex:decode_lut --launch-skip 3 --launch-count 1 \
            --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
            --metrics ${stalls}sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,smsp__inst_executed.sum \
            python scripts/profile_decode.py $run '{"gluon": true}' >> "$OUT/ncu-table.txt" 2>&1
    done
    grep -E "^==|Duration|SM Frequency|Issue Slots Busy|pipe_|stalled|wavefronts|inst_executed.sum|Eligible Warps|Active Warps Per|DRAM Throughput|Memory Throughput" "$OUT/ncu-table.txt" | head -90
    ;;
ab)
    # session 22: a same-card A/B of two trees' default builds (the other tree's package first on PYTHONPATH)
    ab_check
    python scripts/pytest_shards.py --shards "${SHARDS:-4}" --timeout "${TEST_TIMEOUT:-300}" --out "$OUT" \
        -k "fused_table_kernel_vs_float64 or sinks_and_key_mean or fused_table_kernel_dtypes" \
        tests/test_lut_decode.py > "$OUT/tests.txt" 2>&1 &
    ab_warm
    wait
    tail -8 "$OUT/tests.txt"
    ab_sweeps 2 1x131072,8x32768
    ;;
hadamard)
    python scripts/pytest_shards.py --shards "${SHARDS:-6}" --timeout "${TEST_TIMEOUT:-300}" --out "$OUT" \
        -k "fused or hadamard or stamped or sinks_and_key_mean" tests/test_lut_decode.py > "$OUT/tests.txt" 2>&1 &
    V='[{"gluon": true}, {"gluon": true, "lut_hadamard": false}]'
    for k in $(echo "${KINDS:-turbo4,turbo3,turbo2}" | tr , ' '); do
        timeout 200 python scripts/decode_sweep.py --shapes 1x8192 --kinds "$k" --variants "$V" > /dev/null 2>&1 &
    done
    wait
    tail -8 "$OUT/tests.txt"
    timeout "${SWEEP_TIMEOUT:-300}" python scripts/decode_sweep.py --json "$OUT/sweep-hadamard.json" \
        --shapes "${SHAPES:-8x32768,8x131072,1x131072,1x32768}" --kinds "${KINDS:-turbo4,turbo3,turbo2}" \
        --variants "$V" > "$OUT/sweep-hadamard.txt" 2>&1
    grep -E "SDPA|x [0-9]|FAILED" "$OUT/sweep-hadamard.txt" | tail -30
    ;;
hadamard-clocks)
    t="timeout ${TEST_TIMEOUT:-300}"
    $t python -m pytest -q -p no:warnings tests/test_static_graphs.py > "$OUT/pytest_static.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings tests/test_triton_dispatch.py > "$OUT/pytest_dispatch.txt" 2>&1 &
    for o in '{}' '{"lut_hadamard": false}'; do
        timeout 200 python scripts/phase_clocks.py --shapes "${SHAPES:-1x131072,8x32768}" \
            --kinds "${KINDS:-turbo4,turbo2}" --options "$o" \
            --json "$OUT/phase-clocks-$([ "$o" = '{}' ] && echo had || echo dense).json" 2>&1 | tail -14
    done
    wait
    summarize
    ;;
early)
    # session 24: the first tiles' loads issued before the prologue. The table kernel's CUDA tests (this tree) while
    # both trees compile, then one same-card sweep of each tree and both trees' phase stamps
    ab_check
    files=${TESTS:-tests/test_lut_decode.py tests/test_triton_dispatch.py tests/test_static_graphs.py}
    python scripts/pytest_shards.py --shards "${SHARDS:-10}" --timeout "${TEST_TIMEOUT:-300}" --out "$OUT" \
        -k "${TESTK:-not sm90}" $files > "$OUT/tests.txt" 2>&1 &
    ab_warm
    wait
    tail -8 "$OUT/tests.txt"
    ab_sweeps "${RUNS:-1}" 1x131072,8x32768,8x131072
    if [ -n "${T3TILES:-}" ]; then  # turbo3 in 64-token tiles one ahead vs its default (this tree)
        timeout "${SWEEP_TIMEOUT:-120}" python scripts/decode_sweep.py --json "$OUT/sweep-t3tiles.json" \
            --shapes "${SHAPES:-1x131072,8x32768,8x131072}" --kinds turbo3 \
            --variants '[{"gluon": true}, {"gluon": true, "lut_pipe": 2, "lut_block_n": 64}]' \
            > "$OUT/sweep-t3tiles.txt" 2>&1
        echo "== turbo3 tiles"; grep -E "SDPA|x [0-9]|FAILED" "$OUT/sweep-t3tiles.txt"
    fi
    [ "${CLOCKS:-1}" = 0 ] && exit 0
    for tree in "$AB" .; do
        name=$([ "$tree" = . ] && echo this || echo ab)
        echo "== phase stamps, $name"
        PYTHONPATH="$tree:." timeout 150 python scripts/phase_clocks.py --shapes "${CLOCK_SHAPES:-1x131072}" \
            --kinds "${CLOCK_KINDS:-turbo4,turbo2}" --json "$OUT/phase-clocks-$name.json" 2>&1 | tail -20
    done
    if [ -n "${CLOCK_OPTIONS:-}" ]; then  # and this tree's stamps with these attend_planes options
        echo "== phase stamps, this, $CLOCK_OPTIONS"
        timeout 150 python scripts/phase_clocks.py --shapes "${CLOCK_SHAPES:-1x131072}" --options "$CLOCK_OPTIONS" \
            --kinds "${CLOCK_KINDS:-turbo4,turbo2}" --json "$OUT/phase-clocks-this-options.json" 2>&1 | tail -20
    fi
    ;;
early-options)
    # prepared in session 24, first run in session 25 (with RUNS=0): lut_early as an option of every kind
    python scripts/pytest_shards.py --shards "${SHARDS:-6}" --timeout "${TEST_TIMEOUT:-300}" --out "$OUT" \
        -k "early or stamped or phase_clock" tests/test_lut_decode.py > "$OUT/tests.txt" 2>&1 &
    for k in turbo4 turbo3 turbo2; do
        other=$([ "$k" = turbo3 ] && echo false || echo true)
        timeout 200 python scripts/decode_sweep.py --shapes 1x8192 --kinds "$k" \
            --variants "[{\"gluon\": true}, {\"gluon\": true, \"lut_early\": $other}]" > /dev/null 2>&1 &
    done
    wait
    tail -8 "$OUT/tests.txt"
    for r in $(seq "${RUNS:-2}"); do
        for k in turbo4 turbo3 turbo2; do
            other=$([ "$k" = turbo3 ] && echo false || echo true)
            timeout "${SWEEP_TIMEOUT:-120}" python scripts/decode_sweep.py --json "$OUT/sweep-early-$k-$r.json" \
                --shapes "${SHAPES:-1x131072,8x32768,8x131072}" --kinds "$k" \
                --variants "[{\"gluon\": true}, {\"gluon\": true, \"lut_early\": $other}]" \
                > "$OUT/sweep-early-$k-$r.txt" 2>&1
            echo "== $k run $r"; grep -E "SDPA|x [0-9]|FAILED" "$OUT/sweep-early-$k-$r.txt"
        done
    done
    timeout 200 python scripts/phase_clocks.py --shapes "${CLOCK_SHAPES:-1x131072,8x32768}" \
        --kinds "${CLOCK_KINDS:-turbo4,turbo2}" --json "$OUT/phase-clocks.json" 2>&1 | tail -24
    ;;
ids)
    # node ids from a file (IDS, e.g. a cut run's OUT/pytest_unreached.txt), SHARDS (4) processes, then BENCH
    # (encode-bench) when set
    python scripts/pytest_shards.py --shards "${SHARDS:-4}" --timeout "${TEST_TIMEOUT:-240}" --out "$OUT" --ids "$IDS"
    [ -n "${BENCH:-}" ] && bash "$0" "$BENCH"
    ;;
encode-bench)
    timeout 540 python scripts/encode_bench.py --warm 15 --json "$OUT/encode.json" > "$OUT/encode.txt" 2>&1
    grep -v "^compiled" "$OUT/encode.txt" | tail -24
    ;;
encode)
    t="timeout ${TEST_TIMEOUT:-300}"
    $t python -m pytest -q -p no:warnings -k "row and d32" tests/test_triton_encode.py > "$OUT/pytest_enc_a.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings -k "row and d64" tests/test_triton_encode.py > "$OUT/pytest_enc_b.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings -k "row and d128 and float16" tests/test_triton_encode.py \
        > "$OUT/pytest_enc_c.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings -k "(row and d128 and not float16) or lanes" tests/test_triton_encode.py \
        > "$OUT/pytest_enc_d.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings -k "encode or layer" tests/test_triton_kernels.py \
        > "$OUT/pytest_enc_e.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings tests/test_triton_finish.py tests/test_static_graphs.py \
        > "$OUT/pytest_enc_f.txt" 2>&1 &
    $t python -m pytest -q -p no:warnings -k "encode or planar" tests/test_gluon_decode.py \
        > "$OUT/pytest_enc_g.txt" 2>&1 &
    wait
    summarize
    timeout 240 python -m compactkv.cli bench kernels --batches 1 --contexts 4096 --kinds turbo4 --prefill 32768 \
        --json "$OUT/kernels-encode.json" > "$OUT/kernels-encode.txt" 2>&1
    grep -E "copy|encode|prefill" "$OUT/kernels-encode.txt" | tail -24
    ;;
final)
    # the finishing table kernel's tests, one launch (255 / 232 registers) vs kernel + finishing launch, e2e B=8
    t="timeout ${TEST_TIMEOUT:-300}"
    $t python -m pytest -q -p no:warnings -k "fused" tests/test_lut_decode.py > "$OUT/pytest_fused.txt" 2>&1
    grep -E "^FAILED|passed|failed|error" "$OUT/pytest_fused.txt" | tail -20
    python scripts/decode_sweep.py --kernels --json "$OUT/sweep-fused.json" \
        --shapes "${SHAPES:-8x32768,8x131072,1x131072,1x32768}" --kinds "${KINDS:-turbo4,turbo3,turbo2}" \
        --variants '[{"gluon": true}, {"gluon": true, "lut_maxnreg": 232}, {"gluon": true, "fused": false}]' \
        > "$OUT/sweep-fused.txt" 2>&1
    grep -E "SDPA|x [0-9]" "$OUT/sweep-fused.txt" | tail -40
    timeout 240 python -m compactkv.cli bench e2e --graphs --batches 8 --synthetic-contexts 32768 \
        --kinds f16-nomask,turbo4,turbo3,turbo2 --steps 32 --warmup 3 \
        --json "$OUT/e2e-graphs-b8.json" > "$OUT/e2e-graphs-b8.txt" 2>&1
    tail -12 "$OUT/e2e-graphs-b8.txt"
    ;;
sweep)
    default='[{}, {"table_regs": false}, {"table_regs": true}, {"table_regs": "k"}, {"table_regs": "v"},
        {"block_n": 32, "num_warps": 1, "maxnreg": 0, "splits_x": 2}, {"maxnreg": 96}, {"splits_x": 2},
        {"block_n": 128, "maxnreg": 168}, {"block_n": 128, "maxnreg": 0}, {"block_n": 128, "maxnreg": 168, "table_regs": "v"}]'
    python scripts/decode_sweep.py --json "$OUT/sweep.json" --shapes "${SHAPES:-8x32768,1x131072}" \
        --kinds "${KINDS:-turbo4,turbo2}" --head-dim "${HEAD_DIM:-128}" --variants "${VARIANTS:-$default}" \
        > "$OUT/sweep.txt" 2>&1
    tail -50 "$OUT/sweep.txt"
    ;;
ncu)
    timeout 300 ncu --clock-control none --kernel-name regex:decode_fast --launch-skip 3 --launch-count 1 \
        --section WarpStateStats --section SchedulerStats --section Occupancy --section SpeedOfLight \
        --section MemoryWorkloadAnalysis python scripts/profile_decode.py turbo4 8 32768 > "$OUT/ncu.txt" 2>&1
    tail -90 "$OUT/ncu.txt"
    ;;
bench)
    python -m compactkv.cli bench kernels --json "$OUT/kernels.json" --prefill '' --batches 1,8 \
        --contexts 32768,131072 --kinds turbo4,turbo3,turbo2 > "$OUT/kernels.txt" 2>&1
    tail -40 "$OUT/kernels.txt"
    ;;
graphs)
    python -m pytest -q -p no:warnings tests/test_static_graphs.py > "$OUT/pytest_graphs.txt" 2>&1
    tail -3 "$OUT/pytest_graphs.txt"
    python -m compactkv.cli bench e2e --graphs --batches 8,1 --synthetic-contexts 32768,131072 \
        --kinds f16,f16-nomask,turbo4,turbo2,turbo3 --steps 32 --warmup 3 --deadline-s 400 \
        --json "$OUT/e2e-graphs.json" > "$OUT/e2e-graphs.txt" 2>&1
    tail -24 "$OUT/e2e-graphs.txt"
    ;;
gluon)
    python -m pytest -q -p no:warnings tests/test_gluon_decode.py > "$OUT/pytest_gluon.txt" 2>&1
    grep -E "^FAILED|passed|failed|error" "$OUT/pytest_gluon.txt" | tail -12
    default='[{}, {"block_n": 32, "num_warps": 1, "maxnreg": 0, "splits_x": 2}, {"gluon": true},
        {"gluon": true, "splits_per_sm": 8}, {"gluon": true, "splits_per_sm": 32}, {"gluon": true, "maxnreg": 128}]'
    python scripts/decode_sweep.py --json "$OUT/sweep-gluon.json" --shapes "${SHAPES:-8x32768,1x131072,8x131072,1x32768}" \
        --kinds "${KINDS:-turbo4,turbo2}" --head-dim "${HEAD_DIM:-128}" --variants "${VARIANTS:-$default}" \
        > "$OUT/sweep-gluon.txt" 2>&1
    tail -60 "$OUT/sweep-gluon.txt"
    ;;
ncu-gluon)
    for var in '{"gluon": true}' '{"gluon": true, "prefetch": 2, "stages": 2}'; do
        echo "== turbo4 B=8 T=32K $var" | tee -a "$OUT/ncu-gluon.txt"
        timeout 240 ncu --clock-control none --kernel-name regex:decode_gluon --launch-skip 3 --launch-count 1 \
            --section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats \
            --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
            --metrics sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__cycles_elapsed.avg.per_second \
            python scripts/profile_decode.py turbo4 8 32768 "$var" >> "$OUT/ncu-gluon.txt" 2>&1
    done
    echo "== every kernel of B=1 T=32K turbo4 steps (Gluon)" | tee -a "$OUT/ncu-gluon.txt"
    timeout 120 ncu --clock-control none --launch-skip 20 --launch-count 8 --section SpeedOfLight \
        python scripts/profile_decode.py turbo4 1 32768 '{"gluon": true}' >> "$OUT/ncu-gluon.txt" 2>&1
    grep -E "^==|decode_|merge|finish|Duration|SM Frequency|Issue Slots Busy|Executed Ipc Active|pipe_|No Eligible|Active Warps Per|Eligible Warps|Stall|Achieved Occupancy|Registers Per|Memory Throughput|DRAM Throughput|Compute \(SM\)|Kernel|^  [a-z_]+.*\(" "$OUT/ncu-gluon.txt" | head -150
    ;;
lut)
    python -m pytest -q -p no:warnings tests/test_lut_decode.py > "$OUT/pytest_lut.txt" 2>&1 &
    python -m pytest -q -p no:warnings tests/test_triton_dispatch.py tests/test_static_graphs.py \
        > "$OUT/pytest_lut_b.txt" 2>&1 &
    wait
    for f in "$OUT"/pytest_lut*.txt; do echo "== $f"; grep -E "^FAILED|passed|failed|error" "$f" | tail -8; done
    stalls=$(printf 'smsp__warp_issue_stalled_%s_per_warp_active.pct,' long_scoreboard short_scoreboard mio_throttle \
        lg_throttle math_pipe_throttle wait barrier not_selected selected dispatch_stall no_instruction branch_resolving)
    for var in '{"gluon": true, "lut": true}' '{"gluon": true, "lut": true, "lut_warps": 16, "lut_pipe": 1}'; do
        echo "== turbo4 B=8 T=32K $var" >> "$OUT/ncu-lut.txt"
        timeout 200 ncu --clock-control none --kernel-name regex:decode_lut --launch-skip 3 --launch-count 1 \
            --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
            --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
            --metrics ${stalls}sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,smsp__inst_executed.sum \
            python scripts/profile_decode.py turbo4 8 32768 "$var" >> "$OUT/ncu-lut.txt" 2>&1
    done
    grep -E "^==|Duration|SM Frequency|Issue Slots Busy|pipe_|stalled|Shared|Bank|bank|wavefronts|inst_executed.sum|Eligible Warps|Active Warps Per|DRAM Throughput|Achieved Active" "$OUT/ncu-lut.txt" | head -80
    default='[{"gluon": true, "lut": false}, {"gluon": true}, {"gluon": true, "lut_warps": 4}, {"gluon": true, "lut_warps": 16},
        {"gluon": true, "lut_warps": 16, "lut_pipe": 1}]'
    python scripts/decode_sweep.py --json "$OUT/sweep-lut.json" --shapes "${SHAPES:-8x32768,8x131072,1x131072,1x32768}" \
        --kinds turbo4 --head-dim "${HEAD_DIM:-128}" --variants "${VARIANTS:-$default}" > "$OUT/sweep-lut.txt" 2>&1
    tail -20 "$OUT/sweep-lut.txt"
    ;;
defaults)
    python -m pytest -q -p no:warnings -k "vs_float64 and (-3-232-)" tests/test_lut_decode.py \
        > "$OUT/pytest_def_a.txt" 2>&1 &
    python -m pytest -q -p no:warnings tests/test_static_graphs.py > "$OUT/pytest_def_b.txt" 2>&1 &
    wait
    for f in "$OUT"/pytest_def_*.txt; do echo "== $f"; grep -E "^FAILED|passed|failed|error" "$f" | tail -8; done
    timeout 150 python -m compactkv.cli bench e2e --graphs --batches 8 --synthetic-contexts 32768 \
        --kinds f16-nomask,turbo4 --steps 32 --warmup 3 --json "$OUT/e2e-graphs-b8.json" > "$OUT/e2e-graphs-b8.txt" 2>&1
    tail -8 "$OUT/e2e-graphs-b8.txt"
    timeout 90 python -m compactkv.cli bench e2e --batches 1 --contexts 32768 --kinds f16,turbo4 --steps 8 \
        --prefill-warmup-full --json "$OUT/e2e-ttft-dynamic.json" > "$OUT/e2e-ttft-dynamic.txt" 2>&1
    tail -8 "$OUT/e2e-ttft-dynamic.txt"
    timeout 120 python -m compactkv.cli bench kernels --json "$OUT/kernels.json" --prefill '' --batches 1,8 \
        --contexts 32768,131072 --kinds turbo4 > "$OUT/kernels.txt" 2>&1
    tail -16 "$OUT/kernels.txt"
    ;;
turbo3)
    python -m pytest -q -p no:warnings -k "turbo3- or test_turbo3" tests/test_lut_decode.py > "$OUT/pytest_t3_a.txt" 2>&1 &
    python -m pytest -q -p no:warnings tests/test_static_graphs.py > "$OUT/pytest_t3_b.txt" 2>&1 &
    wait
    for f in "$OUT"/pytest_t3_*.txt; do echo "== $f"; grep -E "^FAILED|passed|failed|error" "$f" | tail -8; done
    default='[{}, {"gluon": true}, {"gluon": true, "lut_pipe": 2, "lut_maxnreg": 168}, {"gluon": true, "lut_warps": 4}]'
    timeout 150 python scripts/decode_sweep.py --json "$OUT/sweep-turbo3.json" \
        --shapes "${SHAPES:-8x32768,8x131072,1x131072,1x32768}" --kinds turbo3 --head-dim 128 \
        --variants "${VARIANTS:-$default}" > "$OUT/sweep-turbo3.txt" 2>&1
    tail -20 "$OUT/sweep-turbo3.txt"
    timeout 170 python -m compactkv.cli bench e2e --graphs --batches 8 --synthetic-contexts 32768 \
        --kinds f16-nomask,turbo4,turbo3 --steps 32 --warmup 3 --json "$OUT/e2e-graphs-b8-t3.json" \
        > "$OUT/e2e-graphs-b8-t3.txt" 2>&1
    tail -8 "$OUT/e2e-graphs-b8-t3.txt"
    ;;
ttft)
    timeout 100 python -m compactkv.cli bench e2e --batches 1 --contexts 32768 --kinds f16,turbo4 --steps 8 \
        --prefill-warmup-full --json "$OUT/e2e-ttft-dynamic.json" > "$OUT/e2e-ttft-dynamic.txt" 2>&1
    tail -8 "$OUT/e2e-ttft-dynamic.txt"
    timeout 100 python scripts/profile_step.py --prefill --sync-stacks --kinds turbo4 --json "$OUT/prefill-syncs.json" \
        > "$OUT/prefill-syncs.txt" 2>&1
    grep -v Warn "$OUT/prefill-syncs.txt" | grep -A40 "synchronizing calls" | head -60
    ;;
lut-turbo2)
    python -m pytest -q -p no:warnings -k "turbo2- or test_turbo2_table" tests/test_lut_decode.py > "$OUT/pytest_lut2.txt" 2>&1
    grep -E "^FAILED|passed|failed|error" "$OUT/pytest_lut2.txt" | tail -8
    default='[{"gluon": true}, {"gluon": true, "lut": true}, {"gluon": true, "lut": true, "lut_warps": 4, "lut_maxnreg": 200},
        {"gluon": true, "lut": true, "lut_pipe": 2, "lut_maxnreg": 168}, {"gluon": true, "lut": true, "lut_pipe": 0, "lut_maxnreg": 128}]'
    python scripts/decode_sweep.py --json "$OUT/sweep-lut-turbo2.json" --shapes "${SHAPES:-8x32768,8x131072,1x131072,1x32768}" \
        --kinds turbo2 --head-dim 128 --variants "${VARIANTS:-$default}" > "$OUT/sweep-lut-turbo2.txt" 2>&1
    tail -24 "$OUT/sweep-lut-turbo2.txt"
    ;;
pipeline)
    python -m pytest -q -p no:warnings -k prefetch tests/test_gluon_decode.py > "$OUT/pytest_gluon_a.txt" 2>&1 &
    python -m pytest -q -p no:warnings -k ragged tests/test_gluon_decode.py > "$OUT/pytest_gluon_b.txt" 2>&1 &
    python -m pytest -q -p no:warnings -k "not prefetch and not ragged" tests/test_gluon_decode.py \
        tests/test_static_graphs.py > "$OUT/pytest_gluon_c.txt" 2>&1 &
    wait
    for f in "$OUT"/pytest_gluon_*.txt; do echo "== $f"; grep -E "^FAILED|passed|failed|error" "$f" | tail -8; done
    default='[{"gluon": true}, {"gluon": true, "prefetch": 1}, {"gluon": true, "prefetch": 2, "stages": 2},
        {"gluon": true, "prefetch": 2, "stages": 3}, {"gluon": true, "prefetch": 2, "stages": 4},
        {"gluon": true, "prefetch": 2, "stages": 3, "maxnreg": 0}, {"gluon": true, "prefetch": 2, "stages": 3, "splits_per_sm": 8},
        {"gluon": true, "prefetch": 2, "stages": 3, "splits_per_sm": 32}, {"gluon": true, "prefetch": 2, "stages": 2, "min_split": 1024}]'
    python scripts/decode_sweep.py --json "$OUT/sweep-pipeline.json" --shapes "${SHAPES:-8x32768,8x131072,1x131072,1x32768}" \
        --kinds "${KINDS:-turbo4,turbo2}" --head-dim "${HEAD_DIM:-128}" --variants "${VARIANTS:-$default}" \
        > "$OUT/sweep-pipeline.txt" 2>&1
    tail -80 "$OUT/sweep-pipeline.txt"
    ;;
encode-swap)
    mkdir -p /tmp/swap-rec "$OUT/swap"
    swap_unpack
    first=$(basename "${SWAPS%% *}" .tgz)
    warm_encode 4 "$AB:."
    warm_encode 4
    python scripts/pytest_shards.py --shards 4 --timeout 300 --out /tmp/enc-own -k \
        "(row and bit_identical) or pair_kernel_bit_identical" tests/test_triton_encode.py > "$OUT/swap/enc-tests-own.txt" 2>&1 &
    python scripts/pytest_shards.py --shards 4 --timeout 300 --out /tmp/enc-sw -k \
        "(row and d128 and bit_identical) or pair_kernel_bit_identical" tests/test_triton_encode.py \
        --wrap "scripts/triton_swap.py replay $(swap_dir "$first") --summary /tmp/swap-rec/enc-tests.{shard}.json --" \
        > "$OUT/swap/enc-tests-$first.txt" 2>&1 &
    wait
    for f in "$OUT"/swap/enc-tests-*.txt; do echo "== $f"; grep -E "^shard|^total|FAILED|triton_swap" "$f"; done
    swap_encode "" this
    swap_encode "" ab "$AB:."
    for t in $SWAPS; do n=$(basename "$t" .tgz); swap_encode "scripts/triton_swap.py replay $(swap_dir "$n") --" "$n"; done
    tar -C /tmp -czf "$OUT/swap-encode.tgz" swap-rec
    ;;
swap-record|swap-replay|swap-ab)
    mkdir -p /tmp/swap-rec "$OUT/swap"
    if [ "$1" = swap-record ]; then
        wrap() { echo "scripts/triton_swap.py record /tmp/swap-rec/$1.json --"; }
        tag=rec
    else
        [ -n "${SWAPS:-}" ] || { mkdir -p /tmp/swap-builds && tar -xzf "${SWAP:?SWAP=the builds tarball}" -C /tmp/swap-builds; }
        b=$(dirname "$(find /tmp/swap-builds -name '*.cubin' | head -1)")
        wrap() { echo "scripts/triton_swap.py replay $b --summary /tmp/swap-rec/$1.json --"; }
        tag=${1#swap-}
    fi
    sweep() {  # $1: a wrap or nothing, $2: a name
        timeout 120 python $1 scripts/decode_sweep.py --json "$OUT/swap/sweep-$2.json" --shapes 8x32768,1x131072 \
            --kinds turbo4,turbo3,turbo2 --variants '[{"gluon": true}]' > "$OUT/swap/sweep-$2.txt" 2>&1
        echo "== sweep $2"; grep -E "SDPA|x [0-9]|FAILED|triton_swap|Error" "$OUT/swap/sweep-$2.txt"
    }
    if [ "$1" = swap-ab ] && [ -n "${SWAPS:-}" ]; then  # several build sets (SWAPS: tarballs), sweeps and encodes
        swap_unpack
        warm_encode 8  # (this release's encode builds, for the launchers, meanwhile)
        swrap() { echo "scripts/triton_swap.py replay $(swap_dir "$1") --summary /tmp/swap-rec/$2.json --"; }
        for r in 1 2; do
            sweep "" own-$r
            for t in $SWAPS; do n=$(basename "$t" .tgz); sweep "$(swrap "$n" "sweep-$n-$r")" "$n-$r"; done
        done
        wait
        swap_encode "" own
        for t in $SWAPS; do n=$(basename "$t" .tgz); swap_encode "$(swrap "$n" "encode-$n")" "$n"; done
    elif [ "$1" = swap-ab ]; then  # this release's builds and the other's, interleaved, same call
        for r in 1 2; do sweep "" own-$r; sweep "$(wrap sweep-$r)" swapped-$r; done
    else
        swap_ids > /tmp/swap-ids.txt
        echo "$(wc -l < /tmp/swap-ids.txt) test ids"
        # the encode bench's configurations compile in the background meanwhile (the disk cache serves it later)
        warm_encode 4
        python scripts/pytest_shards.py --shards "${SHARDS:-11}" --timeout "${TEST_TIMEOUT:-300}" \
            --out /tmp/swap-shards --ids /tmp/swap-ids.txt --wrap "$(wrap 'tests.{shard}')" \
            > "$OUT/swap/tests-$tag.txt" 2>&1
        wait
        cat /tmp/swap-shards/pytest_shards.txt >> "$OUT/swap/tests-$tag.txt"
        grep -E "^shard|^total|FAILED|ERROR|triton_swap" "$OUT/swap/tests-$tag.txt" | head -60
        if [ "$1" = swap-record ]; then
            sweep "$(wrap sweep)" rec; swap_encode "$(wrap encode)" rec
        else
            swap_encode "" own; swap_encode "$(wrap encode)" swapped
        fi
    fi
    tar -C /tmp -czf "$OUT/swap-$tag.tgz" swap-rec
    ;;
*)
    echo "usage: bash scripts/gpu_batch.sh tests|sweep|ncu|bench|graphs|gluon|pipeline|ncu-gluon|lut|defaults|lut-turbo2|turbo3|ttft" >&2
    exit 2
    ;;
esac
