"""transformers' own common tests (ModelTesterMixin, ConfigTester) from its PyPI source distribution at the installed version."""

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

CACHE = Path(os.environ.get("ATR_TESTS_CACHE", Path.home() / ".cache" / "atr-tests"))
PACKAGE = "transformers_sdist_tests"
# test_modeling_common / test_configuration_common import these from sibling folders the sdist does not ship: stand-ins.
# ExportTesterMixin holds the torch.export tests (AtrModel exports as three graphs, atr.export / atr.onnx test that);
# GenerationTesterMixin only names the mixin of models that generate, which AtrModel does not; config_common_kwargs
# is read only for configs without sub-configs, and AtrConfig has two.
STAND_INS = {
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}


def _extract(version: str) -> Path:
    """Download the sdist once and lay out its tests/ as the package PACKAGE under CACHE/transformers-<version>."""
    root = CACHE / f"transformers-{version}"
    if (root / PACKAGE / "test_modeling_common.py").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
            f"transformers=={version}", "--dest", scratch,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"`{' '.join(command)}` failed: {done.stderr.strip()[-500:]}")
        archive = next(Path(scratch).glob("transformers-*.tar.gz"))
        staged = Path(scratch) / "staged"
        prefix = f"{archive.name[: -len('.tar.gz')]}/tests/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
            for member in members:
                member.name = member.name[len(prefix) :]
            tar.extractall(staged / PACKAGE, members=members, filter="data")
        # direct_transformers_import(tests/) executes tests/__init__.py, which the sdist leaves out
        for name in ["__init__.py", *STAND_INS]:
            path = staged / PACKAGE / name
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "__init__.py").touch()
            if name in STAND_INS:
                path.write_text(STAND_INS[name])
        shutil.rmtree(root, ignore_errors=True)
        os.replace(staged, root)  # atomic: a run killed mid-way leaves no half-extracted cache
    return root


def common_tests():
    """(test_modeling_common, test_configuration_common) of the installed transformers, downloaded on first use."""
    root = str(_extract(transformers.__version__))
    if root not in sys.path:
        sys.path.insert(0, root)
    return (importlib.import_module(f"{PACKAGE}.test_modeling_common"), importlib.import_module(f"{PACKAGE}.test_configuration_common"))
