"""Every public function and class of `atr` and every console script's entry point has type hints.

Public: the names in a module's `__all__` that the module defines itself, or, in a module without `__all__`, its
module-level functions and classes whose names do not start with `_`; of a class, the methods it defines whose names
do not start with `_`, its properties, and `__init__`. Every parameter but self/cls/*args/**kwargs is annotated and
so is the return (but `__init__`'s). `__main__` modules are not imported: they run a CLI.
"""

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

import pytest

import atr

ROOT = Path(__file__).resolve().parents[1]
UNANNOTATED = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def atr_modules():
    """Every importable module of the `atr` package but the `__main__` ones."""
    names = ["atr"] + [info.name for info in pkgutil.walk_packages(atr.__path__, "atr.")]
    return [importlib.import_module(name) for name in names if name.rpartition(".")[2] != "__main__"]


def public_objects(module):
    """(qualname, object) for each public function and class `module` defines."""
    if hasattr(module, "__all__"):
        names = module.__all__
    else:
        names = [name for name, obj in vars(module).items() if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))]
    objects = ((name, getattr(module, name)) for name in names)
    return [(name, obj) for name, obj in objects if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__]


def functions_of(qualname, obj):
    """(qualname, function) for a public function, or a class's public methods, properties and `__init__`."""
    if inspect.isfunction(obj):
        return [(qualname, obj)]
    found = []
    for name, member in vars(obj).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        elif isinstance(member, property):
            member = member.fget
        # a dataclass's generated __init__ takes its hints from the annotated fields
        if inspect.isfunction(member) and member.__module__ == obj.__module__:
            found.append((f"{qualname}.{name}", member))
    return found


def missing_hints(module_name, qualname, function):
    """`module:qualname param` for each parameter without a hint, and `module:qualname return` for the return."""
    signature = inspect.signature(function)
    missing = [f"{module_name}:{qualname} {name}" for name, parameter in signature.parameters.items()
               if name not in ("self", "cls") and parameter.kind not in UNANNOTATED and parameter.annotation is inspect.Parameter.empty]
    if function.__name__ != "__init__" and signature.return_annotation is inspect.Signature.empty:
        missing.append(f"{module_name}:{qualname} return")
    return missing


def entry_points():
    """(module name, function name) of each console script in pyproject.toml."""
    tomllib = importlib.import_module("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return [tuple(target.split(":")) for target in scripts.values()]


def test_the_check_sees_a_missing_hint():
    def half(x: int, y, *rest, **options):
        return x

    assert missing_hints("m", "half", half) == ["m:half y", "m:half return"]


def test_every_public_function_and_class_has_type_hints():
    missing = []
    for module in atr_modules():
        for qualname, obj in public_objects(module):
            for name, function in functions_of(qualname, obj):
                missing += missing_hints(module.__name__, name, function)
    assert not missing, f"{len(missing)} missing type hints:\n" + "\n".join(missing)


def test_every_console_script_entry_point_has_type_hints():
    missing = []
    for module_name, function_name in entry_points():
        missing += missing_hints(module_name, function_name, getattr(importlib.import_module(module_name), function_name))
    assert not missing, f"{len(missing)} missing type hints:\n" + "\n".join(missing)


# the files save_pretrained copies next to the weights (loaded by transformers' dynamic module machinery)
HUB_MODULES = sorted(f"atr.{path.stem}" for pattern in ("*_atr.py", "backbone_*.py") for path in (ROOT / "atr").glob(pattern))


@pytest.mark.parametrize("module_name", HUB_MODULES)
def test_hub_code_hints_resolve_at_runtime(module_name):
    """transformers inspects the Hub code's signatures and class annotations: each hint there names a real object."""
    module = importlib.import_module(module_name)
    # A string hint may name an atr class the module cannot import without a cycle (e.g. "AtrFeatureExtractor").
    names = {**{name: getattr(atr, name) for name in atr.__all__}, **vars(module)}
    for qualname, obj in public_objects(module):
        # the class's own annotations: PreTrainedModel.__init_subclass__ evaluates `config`'s
        inspect.get_annotations(obj, globals=names, eval_str=True)
        for name, function in functions_of(qualname, obj):
            # a generated dataclass __init__ carries transformers' own string hints, evaluated in transformers' namespace
            if function.__code__.co_filename == module.__file__:
                inspect.get_annotations(function, globals=names, eval_str=True)
