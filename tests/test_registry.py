"""Plugins: strategies and exit rules from other packages, through entry points; a name is taken once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from compresskit.errors import CompressKitError, ModelFormatError
from compresskit.modeling import CompressedConfig, CompressedModelForSequenceClassification
from compresskit.modeling.dynamic import EXIT_RULES, EntropyRule, register_exit_rule
from compresskit.registry import _REGISTRY, register_strategy, strategies
from compresskit.strategies.finetune import FinetuneStrategy
from tests.test_modeling import compressed, inputs

PLUGIN = '''
import torch
from compresskit.modeling.dynamic import ExitRule


class LengthRule(ExitRule):
    """A plugin's rule: leave after the first exit when the summary's norm is small."""

    def __init__(self, num_layers, hidden_size, threshold=1.0):
        super().__init__(num_layers, hidden_size)
        self.threshold = threshold

    def score(self, layer, logits, summary):
        return summary.norm(dim=-1)

    def decide(self, layer, score, rows, state):
        return score < self.threshold
'''


def test_a_strategy_name_is_taken_once_even_by_a_class_of_the_same_name():
    strategies()

    class FinetuneStrategy2(FinetuneStrategy):  # another class under the built-in's name
        name = "finetune"

    FinetuneStrategy2.__qualname__ = FinetuneStrategy.__qualname__
    with pytest.raises(CompressKitError, match="registered twice"):
        register_strategy(FinetuneStrategy2)
    assert _REGISTRY["finetune"] is FinetuneStrategy
    assert register_strategy(FinetuneStrategy) is FinetuneStrategy  # the same class again is no conflict


def test_an_exit_rule_name_is_taken_once():
    with pytest.raises(ModelFormatError, match="registered twice"):
        register_exit_rule("entropy")(type("OtherEntropy", (EntropyRule,), {}))
    assert EXIT_RULES["entropy"] is EntropyRule


def test_a_plugins_exit_rule_loads_a_saved_model_in_a_fresh_process(tmp_path):
    # a package installed beside compresskit: its module and its entry point (dist-info metadata)
    site = tmp_path / "site"
    (site / "length_rule_plugin").mkdir(parents=True)
    (site / "length_rule_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "length_rule_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: length-rule-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[compresskit.exit_rules]\nlength = length_rule_plugin:LengthRule\n")

    sys.path.insert(0, str(site))
    try:
        from length_rule_plugin import LengthRule

        register_exit_rule("length")(LengthRule)
        model = compressed("bert", exits="entropy")
        model.config.exit_rule = {"name": "length", "threshold": 1.0}
        model.save_pretrained(tmp_path / "model")
    finally:
        sys.path.remove(str(site))
        EXIT_RULES.pop("length")
    code = """
import json, sys, torch
from compresskit.modeling import CompressedModelForSequenceClassification
model = CompressedModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
print(json.dumps({"rule": type(model.exit_rule).__name__}))
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == {"rule": "LengthRule"}
    # and without the plugin installed, the message says where a plugin's rule comes from
    with pytest.raises(ModelFormatError, match="compresskit.exit_rules"):
        CompressedModelForSequenceClassification.from_pretrained(tmp_path / "model")


def test_a_model_from_a_newer_format_is_refused_not_misread(tmp_path):
    model = compressed("bert", gates=True)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["format_version"] == 1
    (tmp_path / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ModelFormatError, match="format 99 by a newer compresskit"):
        CompressedConfig.from_pretrained(tmp_path)
    with torch.no_grad():
        assert model(**inputs()).logits.shape == (5, 2)
