#!/usr/bin/env bash
# Peak memory of loading a folder of large photos: 24 PNGs of 6000x4000 (72 MB of RGB each,
# 287 KB on disk), trained one epoch of smallcnn, with `resize = 64` and without, on this
# machine's cores and on 16 decoding threads within SWEEP_DATA_MEMORY=1G.
#   bench/photos.sh [SWEEP_BINARY...]     (default: target/release/sweep, built)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
    cargo build --release --quiet --bin sweep
    set -- target/release/sweep
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" <<'PY'
import os, struct, sys, zlib
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
w, h = 6000, 4000
row = bytes([0]) + bytes((x * 7) & 255 for x in range(w * 3))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(row * h, 6)) + chunk(b"IEND", b""))
for split, n in [("train", 8), ("test", 4)]:
    for c in "ab":
        os.makedirs(f"{sys.argv[1]}/pics/{split}/{c}")
        for i in range(n):
            open(f"{sys.argv[1]}/pics/{split}/{c}/{i}.png", "wb").write(png)
PY
for resize in "resize = 64" ""; do
    cat > "$dir/photos.toml" <<TOML
name = "photos"
dataset = { folder = "$dir/pics"${resize:+, $resize} }
[defaults]
model = "smallcnn"
augment = "crop"
batch_size = 8
epochs = 1
optimizer = { name = "sgd", lr = 0.05 }
[augment.crop]
train = [{ center_crop = { size = 32 } }]
test = [{ center_crop = { size = 32 } }]
TOML
    for env in "" "RAYON_NUM_THREADS=16 SWEEP_DATA_MEMORY=1G"; do
        for bin in "$@"; do
            rm -rf "$dir/home"
            ( env $env /usr/bin/time -f "%e s, peak RSS %M KB" "$bin" --home "$dir/home" -q submit "$dir/photos.toml" \
                >/dev/null 2>"$dir/err" || true )
            echo "${resize:-no resize}${env:+, $env}, $bin: $(tail -1 "$dir/err"), $("$bin" --home "$dir/home" -q results --format csv --columns status | tail -1)"
        done
    done
done
