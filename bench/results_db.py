#!/usr/bin/env python3
"""Fills a sweep database (created by `sweep submit --queue-only`) with a sweep
`big` of N runs x E epochs of made-up numbers, for bench/results.sh.

    python3 bench/results_db.py HOME [runs] [epochs]
"""
import hashlib
import json
import random
import sqlite3
import sys

home = sys.argv[1]
n_runs = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
n_epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 20
db = sqlite3.connect(f"{home}/sweep.db")
rnd = random.Random(0)
base = json.loads(db.execute("SELECT config_json FROM runs LIMIT 1").fetchone()[0])
cur = db.cursor()
cur.execute(
    "INSERT INTO sweeps (name, description, source_path, source_toml, metric, goal) VALUES (?, ?, ?, ?, ?, ?)",
    ("big", "benchmark", "bench/big.toml", "", "test_acc", "maximize"),
)
sweep_id = cur.lastrowid
models = ["resnet18", "resnet50", "densenet169", "smallcnn"]
for i in range(n_runs):
    cfg = dict(base)
    cfg["model"] = models[i % 4]
    cfg["batch_size"] = [32, 64, 128][i // 4 % 3]
    cfg["optimizer"] = dict(base["optimizer"], lr=[0.001, 0.01, 0.05, 0.1, 0.2][i // 12 % 5])
    cfg["seed"] = i // 60
    text = json.dumps(cfg, separators=(",", ":"))
    key = hashlib.sha256(text.encode()).hexdigest()
    accs = [min(99.0, 10 + 80 * (1 - 0.85 ** (e + 1)) + rnd.gauss(0, 1)) for e in range(n_epochs)]
    best = max(range(n_epochs), key=lambda e: accs[e])
    cur.execute(
        "INSERT INTO runs (key, config_json, status, epochs_total, epochs_done, best_epoch, best_metric, train_seconds,"
        " device, images_per_sec, final_train_acc, final_test_acc, final_test_loss)"
        " VALUES (?, ?, 'done', ?, ?, ?, ?, ?, 'cpu', 1600.0, ?, ?, ?)",
        (key, text, n_epochs, n_epochs, best + 1, accs[best], 30.0 * n_epochs, accs[-1] + 2, accs[-1], 2.3 * 0.82 ** (n_epochs - 1)),
    )
    run_id = cur.lastrowid
    cur.execute(
        "INSERT INTO sweep_runs (sweep_id, run_id, name, position) VALUES (?, ?, ?, ?)",
        (sweep_id, run_id, f"run-{i:05d}", i),
    )
    cur.executemany(
        "INSERT INTO epochs (run_id, epoch, train_loss, train_acc, test_loss, test_acc, lr, seconds, images_per_sec)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(run_id, e + 1, 2.3 * 0.8 ** e, accs[e] + 2, 2.3 * 0.82 ** e, accs[e], 0.05, 30.0, 1600.0) for e in range(n_epochs)],
    )
db.commit()
print(f"{n_runs} runs x {n_epochs} epochs in {home}/sweep.db")
