#!/usr/bin/env bash
# Every benchmark on the bundled pack, one after the other, each into build/measure/<name>.md (what
# benchmarks/RESULTS.md quotes). About 20 minutes on an idle 2-core machine; needs the [train] extra, the
# prepared data in prepared/ (cxr-edge train train/<task>.toml --prepare-only) and /tmp/tflrt-venv for the
# tflite-runtime row (see README.md). The training runs in runs/ are optional: without them the Keras and
# TFLite float rows time stand-ins of the same architecture.
set -u
cd "$(dirname "$0")/.."
export TF_USE_LEGACY_KERAS=1
PY=.venv/bin/python
PACK=cxr_edge/packs/default
OUT=build/measure
mkdir -p $OUT
run() {  # name, command...
  local name=$1; shift
  echo "[$(date -u +%H:%M:%S)] $name: $*" | tee -a $OUT/index.log
  local t0=$(date +%s)
  "$@" > $OUT/$name.md 2> $OUT/$name.err
  local rc=$?   # saved at once: the $(date) below would overwrite $?
  echo "[$(date -u +%H:%M:%S)] $name rc=$rc in $(( $(date +%s) - t0 )) s" | tee -a $OUT/index.log
}
run device_latency $PY benchmarks/device_latency.py --pack $PACK
run end_to_end $PY benchmarks/end_to_end.py --pack $PACK --runs-dir runs
run batch_predict $PY benchmarks/batch_predict.py --pack $PACK --runs-dir runs --rounds 2
run batch_workers $PY benchmarks/batch_workers.py --pack $PACK
run memory $PY benchmarks/memory.py --pack $PACK --runs-dir runs
run model_latency $PY benchmarks/model_latency.py --pack $PACK --runs-dir runs --rounds 6 --tflite-runtime-python /tmp/tflrt-venv/bin/python
run photo_cxr4 $PY benchmarks/photo_pipeline.py accuracy --pack $PACK --data prepared/cxr4 --tta
run photo_nih14 $PY benchmarks/photo_pipeline.py accuracy --pack $PACK --data prepared/nih14
run photo_gate $PY benchmarks/photo_pipeline.py accuracy --pack $PACK --data prepared/gate
for sev in mild severe; do   # the same films at the other two severities
  for t in gate cxr4 nih14; do
    run photo_${t}_$sev $PY benchmarks/photo_pipeline.py accuracy --pack $PACK --data prepared/$t --severity $sev
  done
done
run photo_levels_cxr4 $PY benchmarks/photo_pipeline.py levels --pack $PACK --data prepared/cxr4
run photo_ood $PY benchmarks/photo_pipeline.py ood --pack $PACK --data prepared/gate
run photo_speed $PY benchmarks/photo_pipeline.py speed --pack $PACK --rounds 15
for sev in mild moderate severe; do   # monitor photos: which moiré reduction (film.MOIRE_METHOD)
  run photo_moire_$sev $PY benchmarks/photo_moire.py --pack $PACK --data prepared/cxr4 --severity $sev
done
run photo_noncxr $PY benchmarks/photo_noncxr.py --pack $PACK
run real_photos $PY benchmarks/real_photos.py --pack $PACK --photos ../shared/data/real_photos_dev --json $OUT/real_photos.json
run real_photo_variants $PY benchmarks/real_photo_variants.py --pack $PACK --photos ../shared/data/real_photos_dev --json $OUT/real_photo_variants.json
run orientation_check $PY benchmarks/orientation_check.py --pack $PACK --data prepared/cxr4
run data_pipeline $PY benchmarks/data_pipeline.py --prepared prepared/nih14 --rounds 3
run train_throughput $PY benchmarks/train_throughput.py --weights ../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5 --size 224 --task cxr4
run bench $PY -m cxr_edge bench --pack $PACK --threads 2 --json
for t in gate cxr4 nih14; do run report_$t $PY -m cxr_edge data report prepared/$t; done
echo done | tee -a $OUT/index.log
