#!/usr/bin/env bash
# Runs sweep's coverage-guided fuzzers (libFuzzer through cargo-fuzz), each
# from seeds made of the repository's own fixtures, for SECS seconds each.
#
#   bash fuzz/run.sh                       # every target, 60 s each
#   SECS=600 bash fuzz/run.sh idx archive  # some, longer
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`);
# the first build takes about 6 minutes on 2 cores. A target fails on a
# panic, on a run over TIMEOUT seconds (default 10) and on an input that makes
# it allocate more than MALLOC_MB at once or hold more than RSS_MB (default
# 2048 each): a hostile file must get an error, not take the machine's memory.
# A failing input is kept in fuzz/artifacts/TARGET/; replay it with
# `cargo +nightly fuzz run -s none TARGET FILE`, then add it to
# tests/fixtures/fuzz/TARGET/, which `cargo test` replays on stable.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-60}
TIMEOUT=${TIMEOUT:-10}
RSS_MB=${RSS_MB:-2048}
MALLOC_MB=${MALLOC_MB:-2048}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sweep_file pickle mat image weights idx archive)
fx=tests/fixtures

seed() { # TARGET: fills fuzz/corpus/TARGET with the fixtures and the regressions
    local t=$1 c=fuzz/corpus/$1
    mkdir -p "$c"
    case $t in
    sweep_file)
        cp experiments/*.toml bench/*.toml "$c"/
        # With --set overrides (leading lines), as `sweep submit --set` gives them.
        { echo "--set optimizer.lr=0.5,0.05"; echo "--set epochs=2"; cat experiments/quickstart.toml; } >"$c"/set.toml
        ;;
    pickle) cp $fx/data/*.pkl "$c"/ ;;
    mat) cp $fx/data/mat/*.mat "$c"/ ;;
    image) find $fx/data/formats -type f ! -name '*.json' -exec cp {} "$c"/ \; ;;
    weights) cp $fx/models/*.pth $fx/models/resnet_basic.safetensors "$c"/ ;;
    idx | archive) python3 - "$t" "$c" <<'PY'
import gzip, io, struct, sys, tarfile, zlib
t, c = sys.argv[1], sys.argv[2]
def idx(dims, body):
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + bytes(body)
if t == "idx":
    px = [i % 251 for i in range(3 * 28 * 28)]
    files = [idx([3, 28, 28], px), idx([3], [5, 0, 4]), idx([1, 28, 28], px[:784]), idx([1], [7])]
    for i, f in enumerate(files):
        open(f"{c}/plain{i}", "wb").write(bytes([i]) + f)
        open(f"{c}/gz{i}", "wb").write(bytes([i + 4]) + gzip.compress(f, mtime=0))
else:
    def png(w, h, v):
        raw = b"".join(b"\0" + bytes((v + x + y) % 256 for x in range(3 * w)) for y in range(h))
        chunk = lambda k, d: struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, name in enumerate(["train/cat/a.png", "train/dog/b.png", "test/cat/c.png", "test/dog/d.png"]):
            data = png(5, 6, i * 40)
            info = tarfile.TarInfo(name); info.size = len(data); info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    open(f"{c}/images.tar", "wb").write(buf.getvalue())
    open(f"{c}/images.tar.gz", "wb").write(gzip.compress(buf.getvalue(), mtime=0))
PY
    ;;
    esac
    if [ -d $fx/fuzz/$t ]; then cp $fx/fuzz/$t/* "$c"/; fi
}

cargo +nightly fuzz build -s none
for t in "${targets[@]}"; do
    seed "$t"
    echo "== $t: $SECS s"
    cargo +nightly fuzz run -s none "$t" "fuzz/corpus/$t" -- -max_total_time="$SECS" -timeout="$TIMEOUT" \
        -rss_limit_mb="$RSS_MB" -malloc_limit_mb="$MALLOC_MB" -max_len=262144 -print_final_stats=1 2>&1 |
        grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|==[0-9]+== ERROR|SUMMARY|Test unit written|thread .* panicked|.*panicked at)" || true
    if ls fuzz/artifacts/"$t"/* >/dev/null 2>&1; then
        echo "!! $t: failing inputs in fuzz/artifacts/$t/"
        failed=1
    fi
done
exit ${failed:-0}
