#!/usr/bin/env bash
# The wheel works outside the source tree: build it, install it with [train,app] into a fresh venv, and use
# every entry point from a folder that is not the clone, with nothing of the clone on the path.
# Needs ../shared beside the clone (or $CXR_EDGE_SHARED) for the image and the tiny training run.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="$(cd "${CXR_EDGE_SHARED:-$REPO/../shared}" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cxr-edge-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
IMAGE="$SHARED/data/nih_cxr14/images/00000061_012.png"
step() { printf '\n== wheel test: %s (%ss)\n' "$*" "$SECONDS"; }

step "build the wheel and install it with [train,app] into a fresh venv"
python3 -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
CX="$WORK/venv/bin/cxr-edge"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip wheel -q --no-deps -w "$WORK/dist" "$REPO"
WHEEL="$(ls "$WORK"/dist/cxr_edge-*.whl)"
"$PY" -m pip install -q "${WHEEL}[train,app]"

mkdir "$WORK/elsewhere"
cd "$WORK/elsewhere"            # outside the clone: nothing here, no export/ or calibration_data/
unset CXR_EDGE_PACK CXR_EDGE_CONFIG CXR_EDGE_DATA_ROOT PYTHONPATH
export CXR_EDGE_CONFIG="$WORK/no-config.json" TF_CPP_MIN_LOG_LEVEL=3
"$PY" - "$REPO" <<'EOF'
import sys
from pathlib import Path
import cxr_edge
where = Path(cxr_edge.__file__).resolve()
assert Path(sys.argv[1]).resolve() not in where.parents, f"cxr_edge comes from the clone: {where}"
for data in ("packs/default/manifest.json", "resources/export/cxr4.json", "resources/calibration_data/cxr4.csv",
             "app/cxr_app.kv"):
    assert (where.parent / data).is_file(), f"the wheel lacks {data}"
print("installed from the wheel:", where.parent)
EOF

step "cxr-edge predict and info with the bundled pack"
"$CX" predict --json "$IMAGE" | "$PY" -c "import json, sys; r = json.loads(sys.stdin.readline()); \
assert r['status'] == 'ok' and r['cxr4']['task'] == 'cxr4', r; print('predict:', r['message'])"
"$CX" info | head -3

step "cxr-edge bench, its quickest form"
"$CX" bench --quick --no-keras --only models --only startup | tail -4

step "cxr-edge app --help"
"$CX" app --help | head -2

step "the Python API: Pipeline.from_pack('default')"
"$PY" - "$IMAGE" <<'EOF'
import sys
from cxr_edge import Pipeline
pred = Pipeline.from_pack("default").predict(sys.argv[1])
assert pred.status == "ok" and pred.results["cxr4"].task == "cxr4", pred.to_dict()
print("Pipeline.from_pack('default'):", pred.message)
EOF

step "a tiny training run, then export --int8 with the export policy shipped in the wheel"
"$CX" train "$REPO/train/tiny.toml" --out "$WORK/runs/tiny" --data-dir "$WORK/prepared/tiny" > "$WORK/train.log" 2>&1 \
    || { tail -20 "$WORK/train.log"; exit 1; }
set +e
"$CX" export "$WORK/runs/tiny" --int8 --from float --out "$WORK/default-pack" --data-root "$SHARED/data" --json \
    > "$WORK/export.json" 2> "$WORK/export.log"
rc=$?
set -e
# 0: the int8 model passed its check and is in the pack; 3: export measured it and refused it (a tiny model
# trained for seconds may lose too much): both mean the policy and its calibration set came from the wheel
[ "$rc" = 0 ] || [ "$rc" = 3 ] || { tail -20 "$WORK/export.log"; exit 1; }
"$PY" - "$WORK/runs/tiny/export/report.json" "$rc" "$WORK/default-pack" <<'EOF'
import json, sys
from pathlib import Path
import cxr_edge
report = json.loads(Path(sys.argv[1]).read_text())
shipped = Path(cxr_edge.__file__).resolve().parent / "resources"
policy, calibration = Path(report["policy"]["path"]), Path(report["policy"]["calibration"])
assert shipped in policy.resolve().parents and shipped in calibration.resolve().parents, (policy, calibration)
if sys.argv[2] == "0":
    from cxr_edge import load_pack
    assert load_pack(sys.argv[3])["cxr4"].metadata.quantization["mode"] == "int8"
print(f"export: exit {sys.argv[2]}, policy {policy.name} and calibration set {calibration.name} from the wheel")
EOF

step "export --int8 into a pack (the shipped policy with its tolerances opened), then use that pack"
"$PY" - "$WORK/loose.json" <<'EOF'
import json, sys
from pathlib import Path
import cxr_edge
shipped = Path(cxr_edge.__file__).resolve().parent / "resources"
policy = json.loads((shipped / "export" / "cxr4.json").read_text())
policy["calibration"]["manifest"] = str(shipped / "calibration_data" / "cxr4.csv")
policy["check"] = {"split": "val", "tolerance": {"accuracy": 1.0, "macro_f1": 1.0, "agreement": 0.0}}
Path(sys.argv[1]).write_text(json.dumps(policy))
EOF
"$CX" export "$WORK/runs/tiny" --int8 --from float --policy "$WORK/loose.json" --out "$WORK/tiny-pack" \
    --data-root "$SHARED/data" > "$WORK/export2.log" 2>&1 || { tail -20 "$WORK/export2.log"; exit 1; }
"$CX" info "$WORK/tiny-pack" | head -2
"$PY" - "$WORK/tiny-pack" "$IMAGE" <<'EOF'
import sys
from cxr_edge import Pipeline
pred = Pipeline(sys.argv[1], gate_first=False).predict(sys.argv[2])   # the tiny pack has no gate
assert pred.status == "ok" and pred.results["cxr4"].task == "cxr4", pred.to_dict()
print("the exported pack predicts:", pred.message)
EOF
step "done"
