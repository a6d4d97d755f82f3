"""Regenerate the embedded benchmark's data and retrain the shipped explainee; print time and accuracy.

    python benchmarks/train_classifier.py                       # into ./runs/train-classifier
    python benchmarks/train_classifier.py --work /tmp/tc --ship  # and replace the shipped weights

Uses the default ``SyntheticConfig()`` (the data the shipped explainee was trained on) and the training
config recorded in the shipped ``training.json`` (falls back to ``ClassifierTrainConfig()``), so a rerun
with the same seed repeats the shipped run. Results are recorded in benchmarks/results/train_classifier.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

import explainers
from explainers.data.synthetic import SyntheticConfig, generate_synthetic
from explainers.training.classifier import ClassifierTrainConfig, train_classifier

SHIPPED = Path(explainers.__file__).parent / "assets" / "explainee"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("runs/train-classifier"), help="scratch folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the reference run used 2)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recorded number of epochs")
    parser.add_argument("--ship", action="store_true", help="copy the trained model into the package assets")
    args = parser.parse_args()

    recorded = SHIPPED / "training.json"
    if recorded.is_file():
        config = ClassifierTrainConfig.from_dict(json.loads(recorded.read_text())["config"])
    else:
        config = ClassifierTrainConfig()
    config.threads = args.threads
    if args.epochs is not None:
        config.epochs = args.epochs
    torch.set_num_threads(args.threads)

    data, model = args.work / "data", args.work / "model"
    for path in (data, model):
        if path.exists():
            shutil.rmtree(path)
    started = time.time()
    generate_synthetic(data, SyntheticConfig())
    data_s = time.time() - started
    cpu_started = time.process_time()
    record = train_classifier(data, model, config)
    cpu_s = time.process_time() - cpu_started

    print()
    print(f"machine            : {platform.machine()} {record['processor']}, {os.cpu_count()} CPUs")
    print(f"torch threads      : {torch.get_num_threads()}  (torch {torch.__version__})")
    print(f"data generation    : {data_s:.1f} s")
    print(f"training wall time : {record['train_wall_seconds']:.1f} s  (CPU time {cpu_s:.0f} s)")
    print(f"epochs             : {config.epochs}  ({record['images_seen']} images seen)")
    print(f"throughput         : {record['train_img_per_s']:.0f} img/s")
    print(f"selected epoch     : {record['selected_epoch']}")
    print(f"val accuracy       : {record['val_accuracy']:.4f}")
    print(f"test accuracy      : {record['test_accuracy']:.4f}")
    print(f"model              : {model}")
    if args.ship:
        if SHIPPED.exists():
            shutil.rmtree(SHIPPED)
        shutil.copytree(model, SHIPPED)
        print(f"shipped to         : {SHIPPED}")


if __name__ == "__main__":
    main()
