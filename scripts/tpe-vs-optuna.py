#!/usr/bin/env python3
"""Optuna's TPE against Optuna's random search on the 2-D quadratic that sweep's TPE test uses
(src/search/tpe.rs, `tpe_beats_random_search_on_a_quadratic_in_most_seeds`):

    f(x, y) = (x - 2)^2 + (y + 1)^2 on [-10, 10]^2, minimised, 30 trials, seeds 0..19.

Prints, for each sampler, the seeds on which TPE's best value beats random search's and the
median best value, so that sweep's figures (`cargo run --release --example tpe_quadratic`) can
be put beside Optuna's. Runs Optuna from PyPI in a virtual environment:

    python3 -m venv ~/.cache/sweep-optuna-venv && ~/.cache/sweep-optuna-venv/bin/pip install optuna==4.6.0
    ~/.cache/sweep-optuna-venv/bin/python scripts/tpe-vs-optuna.py
"""
import statistics

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial):
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_float("y", -10, 10)
    return (x - 2) ** 2 + (y + 1) ** 2


def best(sampler):
    study = optuna.create_study(sampler=sampler, direction="minimize")
    study.optimize(objective, n_trials=30)
    return study.best_value


tpe, rnd = [], []
for seed in range(20):
    tpe.append(best(optuna.samplers.TPESampler(seed=seed)))
    rnd.append(best(optuna.samplers.RandomSampler(seed=seed)))
wins = sum(t < r for t, r in zip(tpe, rnd))
print(f"optuna {optuna.__version__}: TPE beats random search on {wins} of 20 seeds; "
      f"median best: TPE {statistics.median(tpe):.3f}, random {statistics.median(rnd):.3f}")
