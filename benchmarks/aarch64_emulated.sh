#!/usr/bin/env bash
# Emulated aarch64 check of the device side: does cxr-edge give the same answers on a Raspberry Pi 4
# (Cortex-A72), a Pi 5 (Cortex-A76) or a Jetson Orin (Cortex-A78AE, close to the A76) as on x86_64?
#
# It runs the device side (numpy, Pillow, click, LiteRT; no TensorFlow) in an arm64 Debian root under QEMU
# user-mode emulation, predicts on 20 shared images under each emulated CPU and compares every probability,
# score and verdict with the same predictions made natively on x86_64; then runs `cxr-edge bench --quick`
# emulated to show that it completes, under a 1 GB memory limit standing in for a small Pi. Emulated times
# are NOT device times. See "Raspberry Pi and Jetson" in the README for what this proves and what it does not.
#
# Needs root (debootstrap, chroot, mounts), a Debian or Ubuntu host with apt, and ../shared beside the
# repository (or $CXR_EDGE_SHARED). The first run builds the arm64 root (about 6 minutes and 600 MB, plus
# downloads from the Debian mirror apt uses and from PyPI); later runs reuse it.
#
#   sudo benchmarks/aarch64_emulated.sh                   # both CPUs, 1 GB limit, bench --quick
#   sudo benchmarks/aarch64_emulated.sh --check-max-cpu   # also show QEMU's default CPU giving wrong answers
#   sudo benchmarks/aarch64_emulated.sh --help
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HELPER="$HERE/aarch64_parity.py"
CACHE=${CXR_EDGE_ARM64_CACHE:-${HOME:-/root}/.cache/cxr-edge}
ROOT=${CXR_EDGE_ARM64_ROOT:-$CACHE/arm64-root}
NATIVE_VENV=${CXR_EDGE_NATIVE_VENV:-$CACHE/x86_64-venv}
SHARED=${CXR_EDGE_SHARED:-$REPO/../shared}
OUT=${CXR_EDGE_ARM64_OUT:-$REPO/build/aarch64-emulated}
SUITE=${CXR_EDGE_ARM64_SUITE:-}
MIRROR=${CXR_EDGE_ARM64_MIRROR:-}
CPUS="cortex-a72 cortex-a76"
MEM_MB=1024
TOL=0
CHECK_MAX=0
BENCH=1
SETUP_ONLY=0
REBUILD=0
VENV=/opt/cxr-edge          # the device-side venv inside the root
MARKER=.cxr-edge-arm64-root # written last into a finished root

# The fixed image list (relative to the shared folder): NIH and 4-class CXRs, a lateral view the gate is
# less sure of, non-CXRs the gate rejects (some with gate scores well away from its saturated ends, so a
# drift would show), and one real photo of a film, which goes through the film search and quality checks.
IMAGES=(
  data/nih_cxr14/images/00000150_002.png
  data/nih_cxr14/images/00000193_019.png
  data/nih_cxr14/images/00000211_000.png
  data/nih_cxr14/images/00000211_013.png
  data/nih_cxr14/images/00000218_000.png
  data/nih_cxr14/images/00000284_000.png
  data/nih_cxr14/images/00000468_040.png
  data/cxr4/images/covid19_mhh_fff13f3a.png
  data/cxr4/images/ieee8023_16745_2_1_PNG.png
  data/cxr4/images/ieee8023_16745_3_1_png.png
  data/cxr4/images/ieee8023_pneumonia-7_jpg.png
  data/cxr4/images/tbx11k_tb0005.png
  data/cxr4/images/tbx11k_tb0007.png
  data/cxr_other/images/ieee8023_lateral_16664_2_1_jpg.png
  data/noncxr/images/skimage_astronaut.png
  data/noncxr/images/skimage_moon.png
  data/noncxr/images/ieee8023_ct_16689_1_5_png.png
  data/noncxr/images/pydicom_ExplVR_BigEnd.png
  data/noncxr/images/generated_doc_GPL-3_p1.png
  data/real_photos_dev/s-mostafa-a__covid-chestxray-dataset__case_76_1-3.png
)

usage() {
  cat <<EOF
Usage: $0 [options]

Emulated aarch64 (Pi 4 / Pi 5 / Jetson Orin class) parity check of cxr-edge's device side against x86_64.

Options:
  --cpus "A B"        QEMU CPUs to emulate [default: "$CPUS"] (cortex-a72 = Pi 4, cortex-a76 = Pi 5,
                      close to Jetson Orin's Cortex-A78AE)
  --tol X             largest allowed |difference| of any printed number [default: $TOL: identical]
  --mem-mb N          memory limit for every emulated run, in MB; 0 = none [default: $MEM_MB]
  --check-max-cpu     also run under QEMU's default CPU ('max') and show that its answers are wrong
  --no-bench          skip the emulated 'cxr-edge bench --quick' and the native GMAC/s measurement
  --setup-only        install, build or reuse the root and venvs, then stop
  --rebuild-root      delete the arm64 root and build it again
  -h, --help          this help

Environment: CXR_EDGE_ARM64_ROOT (the arm64 root, default \$HOME/.cache/cxr-edge/arm64-root; outside the
repository), CXR_EDGE_NATIVE_VENV (the x86_64 device-side venv, default \$HOME/.cache/cxr-edge/x86_64-venv),
CXR_EDGE_SHARED (default ../shared), CXR_EDGE_ARM64_OUT (results, default build/aarch64-emulated),
CXR_EDGE_ARM64_SUITE / CXR_EDGE_ARM64_MIRROR (default: the host's Debian release and the mirror apt uses).
Exit status: 0 parity holds, 1 a mismatch or a failed run, 2 bad usage or set-up.
EOF
}

die() { echo "aarch64_emulated: $*" >&2; exit 2; }
say() { echo "[aarch64 $(date +%H:%M:%S)] $*" >&2; }

ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpus) CPUS=${2:?--cpus needs a value}; shift ;;
    --tol) TOL=${2:?--tol needs a value}; shift ;;
    --mem-mb) MEM_MB=${2:?--mem-mb needs a value}; shift ;;
    --check-max-cpu) CHECK_MAX=1 ;;
    --no-bench) BENCH=0 ;;
    --setup-only) SETUP_ONLY=1 ;;
    --rebuild-root) REBUILD=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1' (valid: see above)" ;;
  esac
  shift
done
[[ "$MEM_MB" =~ ^[0-9]+$ ]] || die "--mem-mb must be a whole number of MB, got '$MEM_MB'"
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and bind mounts): run it with sudo"
case "$(uname -m)" in
  aarch64|arm64) die "this machine is aarch64 already: install cxr-edge and run it directly (README: Raspberry Pi and Jetson)" ;;
esac
case "$ROOT" in "$REPO"|"$REPO"/*) die "the arm64 root must be outside the repository, got $ROOT" ;; esac
[ -d "$SHARED/data" ] || die "no shared data at $SHARED/data: put ../shared beside the repository or set CXR_EDGE_SHARED"
for f in "${IMAGES[@]}"; do [ -f "$SHARED/$f" ] || die "missing image $SHARED/$f (the fixed list in $0)"; done
command -v python3 >/dev/null || die "needs python3 on the host (for the native run and the comparison)"

# ---------------------------------------------------------------- mounts: every one is undone on exit
MOUNTS=()
mount_tracked() {  # mount_tracked TARGET MOUNT-ARGS...: mount, and remember it for the exit trap
  local target=$1; shift
  mount "$@" "$target"
  MOUNTS+=("$target")
}
unmount_all() {
  local i
  for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do
    umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null || \
      echo "aarch64_emulated: could not unmount ${MOUNTS[i]}" >&2
  done
  MOUNTS=()
}
mounts_under() {  # mount points at or below a directory, deepest first
  awk -v d="$1" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r
}
unmount_under() {  # a half-built root can hold debootstrap's own mounts after a failure
  local m
  for m in $(mounts_under "$1"); do umount "$m" 2>/dev/null || umount -l "$m"; done
}
remove_tree() {  # delete a root only when nothing is mounted in it (a bind mount would be deleted through)
  unmount_under "$1"
  [ -z "$(mounts_under "$1")" ] || die "still mounted under $1; not deleting it"
  rm -rf --one-file-system "$1"
}
TMP=""
cleanup() {
  local rc=$?
  unmount_all
  [ -n "$PARTIAL_ROOT" ] && [ -d "$PARTIAL_ROOT" ] && unmount_under "$PARTIAL_ROOT"
  [ -n "$TMP" ] && rm -rf "$TMP"
  [ -n "$ROOT_TMP" ] && [ -d "$ROOT_TMP" ] && rm -rf --one-file-system "$ROOT_TMP"
  exit $rc
}
PARTIAL_ROOT=""
ROOT_PIP_CERT=""
ROOT_TMP=""
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- host packages and binfmt_misc
host_packages() {
  local missing=()
  [ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  python3 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
  [ ${#missing[@]} -eq 0 ] && return
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them: install them by hand"
  say "installing ${missing[*]} from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

register_binfmt() {
  local bm=/proc/sys/fs/binfmt_misc
  if [ ! -e "$bm/status" ]; then
    say "mounting binfmt_misc (left mounted: it is host set-up, like the packages)"
    mount -t binfmt_misc binfmt_misc "$bm" || die "cannot mount binfmt_misc at $bm (a container without CAP_SYS_ADMIN cannot run this)"
  fi
  if ! grep -q '^enabled' "$bm/qemu-aarch64" 2>/dev/null; then
    say "registering qemu-aarch64 with binfmt_misc"
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --import qemu-aarch64 >/dev/null
  fi
  grep -q '^enabled' "$bm/qemu-aarch64" 2>/dev/null || die "qemu-aarch64 is not registered in $bm"
  # Without the F flag the kernel looks for the interpreter inside the chroot, where it is not.
  grep -q '^flags:.*F' "$bm/qemu-aarch64" || die "qemu-aarch64 is registered without the F (fix binary) flag: $(grep flags "$bm/qemu-aarch64")"
}

host_mirror() {  # the Debian mirror apt already uses here (deb822 or one-line sources), else deb.debian.org
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for (i=2;i<=NF;i++) print $i}' \
        | grep -v -e security -e '^cdrom' | head -1 || true)
  [ -n "$uri" ] || uri=$(grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '{for (i=2;i<=NF;i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' | grep -v security | head -1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# ---------------------------------------------------------------- the arm64 root: built whole, or reused
build_root() {
  if [ "$REBUILD" = 1 ] && [ -e "$ROOT" ]; then
    say "deleting $ROOT (--rebuild-root)"
    remove_tree "$ROOT"
  fi
  if [ -f "$ROOT/$MARKER" ]; then
    say "reusing the arm64 root $ROOT ($(head -1 "$ROOT/$MARKER"))"
    return
  fi
  [ -e "$ROOT" ] && die "$ROOT exists but is not a finished root (no $MARKER): delete it or pass --rebuild-root"
  local suite mirror t0 p
  suite=${SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-}")}
  [ -n "$suite" ] || die "cannot tell the host's Debian release: set CXR_EDGE_ARM64_SUITE (e.g. bookworm)"
  mirror=${MIRROR:-$(host_mirror)}
  mkdir -p "$(dirname "$ROOT")"
  for p in "$ROOT".partial.*; do  # left by an interrupted build
    [ -d "$p" ] && { say "removing the half-built $p"; remove_tree "$p"; }
  done
  PARTIAL_ROOT="$ROOT.partial.$$"
  t0=$(date +%s)
  say "building the arm64 root: debootstrap --arch=arm64 $suite from $mirror (a few minutes)"
  debootstrap --arch=arm64 --variant=minbase --include=python3-venv,ca-certificates \
    "$suite" "$PARTIAL_ROOT" "$mirror" > "$OUT/debootstrap.log" 2>&1 \
    || { tail -20 "$OUT/debootstrap.log" >&2; die "debootstrap failed (log: $OUT/debootstrap.log)"; }
  unmount_under "$PARTIAL_ROOT"
  chroot "$PARTIAL_ROOT" /usr/bin/apt-get clean
  printf '%s arm64, built %s in %ss from %s\n' "$suite" "$(date -u +%FT%TZ)" "$(( $(date +%s) - t0 ))" "$mirror" \
    > "$PARTIAL_ROOT/$MARKER"
  mv "$PARTIAL_ROOT" "$ROOT"
  PARTIAL_ROOT=""
  say "root built in $(( $(date +%s) - t0 )) s: $(du -sh --one-file-system "$ROOT" | cut -f1)"
}

# An ARM /proc/cpuinfo per emulated CPU: under QEMU 7.x LiteRT's CPU detection reads the host's x86 one and
# crashes (SIGSEGV). The fields are those a real kernel prints for that core (MIDR part numbers: A72 0xd08,
# A76 0xd0b); one entry per host CPU, so the thread count stays the host's.
write_cpuinfo() {  # write_cpuinfo CPU FILE
  local part features n i
  case "$1" in
    cortex-a72) part=0xd08; features="fp asimd evtstrm crc32 cpuid" ;;
    cortex-a76|max) part=0xd0b; features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    *) die "no cpuinfo for QEMU CPU '$1' (valid: cortex-a72, cortex-a76, max)" ;;
  esac
  n=$(nproc)
  : > "$2"
  for (( i=0; i<n; i++ )); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x%d\nCPU part\t: %s\nCPU revision\t: %d\n\n' \
      "$i" "$features" "$([ "$part" = 0xd08 ] && echo 0 || echo 4)" "$part" "$([ "$part" = 0xd08 ] && echo 3 || echo 1)" >> "$2"
  done
}

mount_root() {
  local d
  # No need to mount the repository: the device side is installed from a wheel of it (install_sides).
  for d in proc sys dev mnt/shared; do mkdir -p "$ROOT/$d"; done
  mount_tracked "$ROOT/proc" -t proc proc
  mount_tracked "$ROOT/sys" -t sysfs -o ro sysfs
  mount_tracked "$ROOT/dev" --bind /dev
  mount_tracked "$ROOT/mnt/shared" --bind -o ro "$SHARED"
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true   # for pip inside
  mkdir -p "$ROOT/etc/cxr-edge"
  for d in cortex-a72 cortex-a76; do write_cpuinfo "$d" "$ROOT/etc/cxr-edge/cpuinfo-$d"; done
  CPUINFO_MOUNTED=""
}
CPUINFO_MOUNTED=""
use_cpuinfo() {  # bind the ARM cpuinfo of this CPU over the root's /proc/cpuinfo
  local f="$ROOT/etc/cxr-edge/cpuinfo-$1"
  [ "$1" = max ] && f="$ROOT/etc/cxr-edge/cpuinfo-cortex-a76"
  [ "$CPUINFO_MOUNTED" = "$1" ] && return
  if [ -n "$CPUINFO_MOUNTED" ]; then umount "$ROOT/proc/cpuinfo"; unset 'MOUNTS[${#MOUNTS[@]}-1]'; fi
  mount_tracked "$ROOT/proc/cpuinfo" --bind -o ro "$f"
  CPUINFO_MOUNTED=$1
}

root_cmd() {  # root_cmd CPU: ROOT_CMD = the command prefix that runs a program in the root under that CPU
  local cpu=$1
  use_cpuinfo "$cpu"
  # QEMU_CPU must be in the environment of every aarch64 process: each exec starts a fresh qemu, and
  # without it qemu falls back to its 'max' CPU (wrong answers, see --check-max-cpu).
  ROOT_CMD=(env QEMU_CPU="$cpu" chroot "$ROOT" /usr/bin/env -i -C /mnt/shared PATH="$VENV/bin:/usr/bin:/bin"
            HOME=/root LANG=C.UTF-8 QEMU_CPU="$cpu" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180)
  [ -n "$ROOT_PIP_CERT" ] && ROOT_CMD+=(PIP_CERT="$ROOT_PIP_CERT")
  return 0
}
in_root() {  # in_root CPU CMD...: run CMD in the root under that emulated CPU, in the shared folder
  local cpu=$1; shift
  root_cmd "$cpu"
  "${ROOT_CMD[@]}" "$@"
}

# ---------------------------------------------------------------- the device side, from the working tree
build_wheel() {  # one wheel from the working tree (tracked and untracked, not ignored files) for both sides
  local src="$TMP/src"
  mkdir -p "$src" "$TMP/wheels"
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$src" \
    || die "cannot copy the working tree from $REPO (a git checkout is needed)"
  "$NATIVE_VENV/bin/pip" wheel --no-deps -w "$TMP/wheels" "$src" >> "$OUT/pip-x86_64.log" 2>&1 \
    || { tail -20 "$OUT/pip-x86_64.log" >&2; die "building the wheel of the working tree failed (log: $OUT/pip-x86_64.log)"; }
  WHEEL=$(ls "$TMP/wheels"/cxr_edge-*.whl)
}

native_venv() {
  if [ ! -x "$NATIVE_VENV/bin/pip" ]; then
    say "creating the x86_64 device-side venv $NATIVE_VENV"
    rm -rf "$NATIVE_VENV.partial"
    python3 -m venv "$NATIVE_VENV.partial"
    mv "$NATIVE_VENV.partial" "$NATIVE_VENV"
    # venv scripts hold the path they were made at
    sed -i "s|$NATIVE_VENV.partial|$NATIVE_VENV|g" "$NATIVE_VENV"/bin/* 2>/dev/null || true
  fi
}

install_sides() {
  build_wheel
  say "installing $(basename "$WHEEL") (device side only) natively"
  { "$NATIVE_VENV/bin/pip" install --only-binary=:all: "$WHEEL" &&
    "$NATIVE_VENV/bin/pip" install --force-reinstall --no-deps "$WHEEL"; } >> "$OUT/pip-x86_64.log" 2>&1 \
    || { tail -20 "$OUT/pip-x86_64.log" >&2; die "pip install in $NATIVE_VENV failed (log: $OUT/pip-x86_64.log)"; }
  "$NATIVE_VENV/bin/python" -c "import sys; import cxr_edge.cli; sys.exit('tensorflow' in sys.modules)" \
    || die "the device-side install imported TensorFlow"
  # The arm64 side gets the very versions the x86_64 side has, so a difference is the architecture's.
  "$NATIVE_VENV/bin/pip" freeze --exclude cxr-edge > "$TMP/constraints.txt"
  ROOT_TMP="$ROOT/tmp/cxr-edge-install.$$"
  mkdir -p "$ROOT_TMP"
  cp "$WHEEL" "$TMP/constraints.txt" "$ROOT_TMP/"
  local w="/tmp/$(basename "$ROOT_TMP")/$(basename "$WHEEL")" c="/tmp/$(basename "$ROOT_TMP")/constraints.txt"
  if [ ! -x "$ROOT$VENV/bin/pip" ]; then
    say "creating the arm64 venv $VENV in the root (emulated: a minute or two)"
    in_root cortex-a72 /bin/rm -rf "$VENV.partial"
    in_root cortex-a72 python3 -m venv "$VENV.partial"
    in_root cortex-a72 /bin/sh -c "sed -i 's|$VENV.partial|$VENV|g' $VENV.partial/bin/* && mv $VENV.partial $VENV"
  fi
  say "installing the device side in the arm64 root (pip under emulation; the first time downloads numpy, Pillow, click, ai-edge-litert)"
  { in_root cortex-a72 pip install --only-binary=:all: -c "$c" "$w" &&
    in_root cortex-a72 pip install --force-reinstall --no-deps "$w"; } >> "$OUT/pip-arm64.log" 2>&1 \
    || { tail -20 "$OUT/pip-arm64.log" >&2
         die "pip install in the arm64 root failed (log: $OUT/pip-arm64.log; PyPI must be reachable, and the pinned versions need aarch64 wheels: LiteRT's are manylinux_2_27_aarch64)"; }
  rm -rf "$ROOT_TMP"; ROOT_TMP=""
}

run() {  # run NAME MEM_MB CMD...: through the helper, which applies the memory limit and records peak RSS
  local name=$1 mem=$2; shift 2
  python3 "$HELPER" run --name "$name" --out "$OUT" --mem-mb "$mem" -- "$@"
}

# ---------------------------------------------------------------- main (one function, so that bash has read all of it before it runs: editing the file during a
# run cannot change what the run does)
main() {
  mkdir -p "$OUT"
  local n
  for n in x86_64 max limit-probe bench-x86_64 bench-cortex-a76 $CPUS; do   # this script's files only
    rm -f "$OUT/$n.out" "$OUT/$n.err" "$OUT/$n.run.json"
  done
  rm -f "$OUT/pip-x86_64.log" "$OUT/pip-arm64.log" "$OUT/report.md"
  TMP=$(mktemp -d)
  T_START=$(date +%s)
  host_packages
  register_binfmt
  build_root
  native_venv
  mount_root
  # pip inside the root uses the CA bundle the host's pip is told to use, if any (a proxy's, say).
  HOST_CERT=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
  ROOT_PIP_CERT=""
  if [ -n "$HOST_CERT" ] && [ -f "$HOST_CERT" ]; then
    cp "$HOST_CERT" "$ROOT/etc/cxr-edge/host-ca.crt"; ROOT_PIP_CERT=/etc/cxr-edge/host-ca.crt
  fi
  install_sides
  T_SETUP=$(( $(date +%s) - T_START ))
  ROOT_SIZE=$(du -sh --one-file-system "$ROOT" | cut -f1)
  say "set-up done in ${T_SETUP} s; the arm64 root is $ROOT_SIZE"
  [ "$SETUP_ONLY" = 1 ] && exit 0

  REPORT="$OUT/report.md"
  {
    echo "# Emulated aarch64 check ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "- command: \`benchmarks/aarch64_emulated.sh${ARGS:+ $ARGS}\`"
    echo "- host: $(uname -m), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(/usr/bin/qemu-aarch64-static --version | head -1)"
    echo "- arm64 root: $ROOT_SIZE, $(head -1 "$ROOT/$MARKER"); set-up in this run: ${T_SETUP} s"
    echo "- device side in the root: $(in_root cortex-a72 python3 --version) with $(in_root cortex-a72 pip freeze 2>/dev/null | grep -i -E '^(numpy|pillow|click|ai-edge-litert)==' | paste -sd' ') and cxr-edge from this working tree (the x86_64 venv has the same versions)"
    echo "- memory limit on every emulated run: $([ "$MEM_MB" -gt 0 ] && echo "$MEM_MB MB, $(python3 "$HELPER" limit-kind --mem-mb "$MEM_MB")" || echo none)"
    echo "- images: ${#IMAGES[@]} from the shared data (the list is in the script); values compared: every number and"
    echo "  verdict that \`cxr-edge predict --json\` prints (probabilities to 4 decimals, OOD scores to 3), except timings"
    echo
  } > "$REPORT"

  FAILED=0
  # The limit bites: allocating 1.5x the limit must fail in the root (else the limit is not real here).
  if [ "$MEM_MB" -gt 0 ]; then
    say "checking that the ${MEM_MB} MB limit is enforced under emulation"
    root_cmd cortex-a76
    local probe=0
    run limit-probe "$MEM_MB" "${ROOT_CMD[@]}" python3 -c "b = b'x' * ($MEM_MB * 3 << 19); print(len(b))" || probe=$?
    if [ "$probe" = 0 ]; then
      echo "- **the memory limit did not stop a $(( MEM_MB * 3 / 2 )) MB allocation**: peak RSS below is not bounded" >> "$REPORT"
      FAILED=1
    else
      echo "- limit check: allocating $(( MEM_MB * 3 / 2 )) MB in the root under the limit failed, as it must (exit $probe$([ "$probe" = 137 ] && echo ': killed by the OOM killer')$([ -s "$OUT/limit-probe.err" ] && echo "; $(tail -1 "$OUT/limit-probe.err" | cut -c1-80)"))" >> "$REPORT"
    fi
  fi
  echo >> "$REPORT"

  say "predicting on ${#IMAGES[@]} images natively (x86_64)"
  (cd "$SHARED" && run x86_64 0 "$NATIVE_VENV/bin/cxr-edge" predict --json "${IMAGES[@]}") || true
  RUNS=()
  for cpu in $CPUS; do
    say "predicting on ${#IMAGES[@]} images emulated as $cpu (QEMU_CPU=$cpu)"
    root_cmd "$cpu"
    run "$cpu" "$MEM_MB" "${ROOT_CMD[@]}" cxr-edge predict --json "${IMAGES[@]}" || true
    RUNS+=("$cpu")
  done
  {
    echo "## Parity: x86_64 against emulated aarch64"
    echo
    echo "Each cell: identical (values compared) / within the tolerance / differs (count: first difference). Tolerance: $TOL."
    echo
  } >> "$REPORT"
  python3 "$HELPER" compare --out "$OUT" --base x86_64 --tol "$TOL" "${RUNS[@]}" >> "$REPORT" || FAILED=1

  if [ "$CHECK_MAX" = 1 ]; then
    say "predicting emulated under QEMU's default CPU 'max' (expected to be wrong)"
    root_cmd max
    run max "$MEM_MB" "${ROOT_CMD[@]}" cxr-edge predict --json "${IMAGES[@]}" || true
    {
      echo
      echo "## The pitfall: QEMU's default CPU ('max')"
      echo
      echo "Without QEMU_CPU, qemu-aarch64 emulates its 'max' CPU, which advertises every feature it knows (SVE, SME"
      echo "among them); LiteRT picks its kernels by those features, and the answers come out wrong without any error."
      echo "Not a failure of this check: it shows why QEMU_CPU is pinned."
      echo
    } >> "$REPORT"
    python3 "$HELPER" compare --out "$OUT" --base x86_64 --tol "$TOL" --expect-differ max >> "$REPORT" || FAILED=1
  fi

  if [ "$BENCH" = 1 ]; then
    say "measuring int8 GMAC/s natively (cxr-edge bench --only models), for the projection"
    (cd "$SHARED" && run bench-x86_64 0 "$NATIVE_VENV/bin/cxr-edge" bench --only models --json) || FAILED=1
    say "running cxr-edge bench --quick emulated as cortex-a76 (minutes; the times are NOT device times)"
    root_cmd cortex-a76
    run bench-cortex-a76 "$MEM_MB" "${ROOT_CMD[@]}" cxr-edge bench --quick --no-keras --json || FAILED=1
    {
      echo
      echo "## cxr-edge bench --quick under emulation (cortex-a76)"
      echo
      python3 "$HELPER" bench "$OUT/bench-cortex-a76.out" || echo "**bench did not complete**: see $OUT/bench-cortex-a76.err"
      echo
      echo "## int8 throughput on this host (native), for the device projection"
      echo
      python3 "$HELPER" project "$OUT/bench-x86_64.out" || echo "**native bench did not complete**: see $OUT/bench-x86_64.err"
    } >> "$REPORT" || FAILED=1
  fi

  echo >> "$REPORT"
  echo "Total: $(( $(date +%s) - T_START )) s. Raw outputs: $OUT (*.out, *.err, *.run.json)." >> "$REPORT"
  cat "$REPORT"
  [ "$FAILED" = 0 ] && say "PASS: parity holds ($OUT/report.md)" || say "FAIL: see $OUT/report.md"
  exit "$FAILED"
}

main "$@"; exit $?
