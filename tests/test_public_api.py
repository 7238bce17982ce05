"""The public surface of each package is its `__all__`, and README.md documents exactly that."""

import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
PACKAGES = ["features", "fusion"]


def _documented_names(package):
    """The names in the first column of README.md's "### API: `package`" table."""
    text = README.read_text(encoding="utf-8")
    heading = re.search(rf"^### API: `{package}`\s*$", text, re.MULTILINE)
    assert heading, f'README.md has no "### API: `{package}`" section listing the public names of {package}'
    section = text[heading.end():]
    next_heading = re.search(r"^#", section, re.MULTILINE)
    section = section[:next_heading.start()] if next_heading else section
    return re.findall(r"^\|\s*`([A-Za-z_]\w*)`\s*\|", section, re.MULTILINE)


def _own_docstring(value):
    """The object's own docstring: not one inherited, nor the signature dataclasses write in its place."""
    if inspect.isclass(value):
        doc = value.__dict__.get("__doc__") or ""
        return "" if doc.startswith(f"{value.__name__}(") else doc.strip()
    return (value.__doc__ or "").strip()


@pytest.mark.parametrize("package", PACKAGES)
def test_readme_documents_exactly_the_names_in_all(package):
    module = importlib.import_module(package)
    documented = _documented_names(package)
    assert len(documented) == len(set(documented)), f"README.md lists a {package} name twice: {sorted(documented)}"
    missing_from_readme = sorted(set(module.__all__) - set(documented))
    missing_from_all = sorted(set(documented) - set(module.__all__))
    assert not missing_from_readme and not missing_from_all, (
        f"README.md's API section and {package}.__all__ differ. In {package}.__all__ but not in README.md: "
        f"{missing_from_readme}. In README.md but not in {package}.__all__: {missing_from_all}."
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves_to_a_documented_object(package):
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__))
    # The lazy loader's table (name -> submodule) and __all__ name the same things.
    assert sorted(module._EXPORTS) == sorted(module.__all__)
    undocumented = []
    for name in module.__all__:
        value = getattr(module, name)  # an AttributeError names the broken entry
        if (inspect.isclass(value) or callable(value)) and not _own_docstring(value):
            undocumented.append(name)
    assert undocumented == [], f"Public names of {package} without a docstring of their own: {undocumented}"


@pytest.mark.parametrize("package", PACKAGES)
def test_star_import_gives_exactly_all(package):
    module = importlib.import_module(package)
    namespace = {}
    exec(f"from {package} import *", namespace)
    assert sorted(set(namespace) - {"__builtins__"}) == sorted(module.__all__)
    assert set(module.__all__) <= set(dir(module))


def test_lazy_names_are_the_objects_of_their_modules():
    import features
    import fusion
    from features.backbones import create_backbone
    from features.pipeline import precompute
    from fusion.run import train_run

    assert features.create_backbone is create_backbone
    assert features.precompute is precompute
    assert fusion.train_run is train_run
    with pytest.raises(AttributeError, match="module 'fusion' has no attribute 'StackingClassifier'"):
        fusion.StackingClassifier  # noqa: B018 - renamed LogisticStacking


@pytest.mark.slow
def test_import_fusion_registers_its_keras_classes_in_a_fresh_process():
    # README.md: exported models load with safe mode after `import fusion`, whatever else is imported.
    probe = ("import fusion, json, keras\n"
             "print(json.dumps([getattr(keras.saving.get_registered_object(f'fusionpipe>{name}'), '__name__', None)"
             " for name in ('PreprocessInput', 'FusionClassifier', 'ClassNames')]))\n")
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr[-2000:]
    # ClassNames: the layer of exports made before FusionClassifier, which still load.
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["PreprocessInput", "FusionClassifier", "_LegacyClassNames"]
