#!/usr/bin/env python3
"""Writes tests/fixtures/data: small CIFAR python-release batches, pickled the
way Python 3 writes them (protocol 2, with bytes as _codecs.encode, and
protocols 4 and 5), each with 3 images whose bytes are (i * 7 + k) % 251 for
image i and byte k, labels [3, 0, 9] (CIFAR-100: fine [97, 0, 42], coarse
[1, 2, 3]).  The Python 2 (cPickle) form of the official files is covered by
a hand-assembled pickle in src/train/data/pickle.rs.

    python3 scripts/data_fixtures.py tests/fixtures/data
"""
import os
import pickle
import sys

import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/data"
os.makedirs(out, exist_ok=True)
data = ((np.arange(3)[:, None] * 7 + np.arange(3072)[None, :]) % 251).astype(np.uint8)
c10 = {"batch_label": "training batch 1 of 5", "labels": [3, 0, 9], "data": data, "filenames": ["a.png", "b.png", "c.png"]}
c100 = {"filenames": ["a", "b", "c"], "batch_label": "training batch 1 of 1", "fine_labels": [97, 0, 42],
        "coarse_labels": [1, 2, 3], "data": data}
for name, obj, proto in [("cifar10_p2.pkl", c10, 2), ("cifar10_p5.pkl", c10, 5), ("cifar100_p4.pkl", c100, 4)]:
    with open(os.path.join(out, name), "wb") as f:
        pickle.dump(obj, f, protocol=proto)
    with open(os.path.join(out, name), "rb") as f:
        back = pickle.load(f, encoding="latin1")
    assert (back["data"] == data).all()
print("ok")
