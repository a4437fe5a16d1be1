"""The paper-claim studies (benchmarks/study_*.py) on a minimal setting, so that they cannot rot; plus their shared parts."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_bert_config, tiny_tokenizer
from transformers import BertModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _study  # noqa: E402

TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def study_args(tmp_path_factory):
    """Command-line arguments of a minimal study: a tiny study encoder (trained once, 2 steps), 12 train and 8 test clips."""
    root = tmp_path_factory.mktemp("studies")
    text = root / "tiny-bert"
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(text)
    tiny_tokenizer().save_pretrained(text)
    args = ["--encoder", str(root / "encoder"), "--encoder_config", TINY, "--encoder_steps", "2", "--text_backbone", str(text),
            "--synthetic_sizes", "12,0,8", "--samples_seen", "8", "--seeds", "0", "--cache_dir", str(root / "cache"), "--threads", "1"]
    _study.ensure_encoder(_study.study_parser("", "x").parse_args(args))
    return args, root


def run_study(module_name, study_args, extra):
    """Run one study's main() and return (summary rows, results.json, output dir)."""
    args, root = study_args
    module = __import__(module_name)
    output_dir = root / module_name
    rows = module.main(args + ["--output_dir", str(output_dir), *extra])
    results = json.loads((output_dir / "results.json").read_text())
    assert (output_dir / f"{module_name}.png").stat().st_size > 0
    assert "| " in (output_dir / "results.md").read_text()
    for row in rows:
        for key in _study.METRIC_KEYS:
            assert 0.0 <= row[key] <= 1.0
    return rows, results, output_dir


def test_batch_size_study_runs_both_losses_at_each_batch_size(study_args):
    rows, results, _ = run_study("study_batch_size", study_args, ["--batch_sizes", "4,8"])
    assert {(r["loss"], r["batch_size"]) for r in rows} == {(l, b) for l in ("hybrid", "contrastive only") for b in (4, 8)}
    # the same samples seen at every batch size
    assert {(r["batch_size"], r["steps"]) for r in results["runs"]} == {(4, 2), (8, 1)}
