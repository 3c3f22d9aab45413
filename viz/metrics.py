"""Reading a run's out_dir/metrics.jsonl (training/runlog.py writes it): one JSON object a line,
each with a "kind" and an "iter". A line cut short by a crash is counted, not fatal.

    read_records(path) -> (records, bad lines)     every record, as written
    read_metrics(path) -> (train, evals, bad)      what the loss curve draws (loss_plot.py)
"""

import json


def read_records(path) -> tuple[list[dict], int]:
    """(the records of a metrics.jsonl, how many lines did not parse)."""
    records, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "kind" not in record or "iter" not in record:
                    raise ValueError
                records.append(record)
            except ValueError:
                bad += 1
    return records, bad


def read_metrics(path):
    """-> (train [(iter, loss)], evals [(iter, train_loss, val_loss)], n_bad_lines). A later line
    for an iteration replaces an earlier one."""
    records, bad = read_records(path)
    train, evals = {}, {}
    for r in records:
        try:
            if r["kind"] == "train":
                train[int(r["iter"])] = float(r["loss"])
            elif r["kind"] == "eval":
                evals[int(r["iter"])] = (float(r["train_loss"]), float(r["val_loss"]))
        except (KeyError, TypeError, ValueError):
            bad += 1
    return sorted(train.items()), [(i, a, b) for i, (a, b) in sorted(evals.items())], bad
