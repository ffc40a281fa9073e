"""The Slicer extension's packaging: CMake lists every file the module needs, the installed
layout works on its own, and every widget the panel uses exists in TumorSeg.ui with its class.

The install layout is rebuilt from the CMake lists the way slicerMacroBuildScriptedModule and
ctkMacroCompilePythonScript copy files (scripts relative to TumorSeg/, backend and resources
relative to the repository root, all into one module folder), then imported in a fresh Python.
"""

import ast
import glob
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "TumorSeg"
UI_FILE = ROOT / "Resources" / "UI" / "TumorSeg.ui"
CODE_USING_UI = (MODULE / "TumorSeg.py", MODULE / "TumorSegSlicerLib" / "panel.py")

# Widget name -> Qt class the panel code relies on (properties, signals and slots it calls).
EXPECTED_WIDGETS = {
    "inputSelector": "qMRMLNodeComboBox", "roiSelector": "qMRMLNodeComboBox", "pointSelector": "qMRMLNodeComboBox",
    "outputSelector": "qMRMLNodeComboBox", "modalityComboBox": "QComboBox", "modelComboBox": "QComboBox",
    "deviceComboBox": "QComboBox", "modalityLabel": "QLabel", "modelDescriptionLabel": "QLabel", "deviceLabel": "QLabel",
    "dependenciesLabel": "QLabel", "statusLabel": "QLabel", "installButton": "QPushButton",
    "segmentButton": "QPushButton", "removeLesionButton": "QPushButton", "resetAdvancedButton": "QPushButton", "exportButton": "QPushButton",
    "overlapSpinBox": "QDoubleSpinBox", "thresholdSpinBox": "QDoubleSpinBox", "minLesionSpinBox": "QDoubleSpinBox",
    "progressBar": "QProgressBar", "readoutsTableView": "qMRMLTableView", "showRecistCheckBox": "QCheckBox", "mipViewCheckBox": "QCheckBox",
    "learntFiltersCheckBox": "QCheckBox",
    "inputsCollapsibleButton": "ctkCollapsibleButton", "advancedCollapsibleButton": "ctkCollapsibleButton",
    "modelsFolderPathLineEdit": "ctkPathLineEdit", "roiPlaceWidget": "qSlicerMarkupsPlaceWidget",
    "pointPlaceWidget": "qSlicerMarkupsPlaceWidget",
}


def cmake_text(path):
    return re.sub(r"#[^\n]*", "", path.read_text())


def cmake_list(text, variable):
    match = re.search(rf"set\({variable}\s(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return match.group(1).split()


def expand(items, variables):
    """CMake variable references expanded: list variables splice in, string variables substitute."""
    out = []
    for item in items:
        value = variables.get(item[2:-1]) if item.startswith("${") and item.endswith("}") else None
        if isinstance(value, list):
            out += value
            continue
        for name, text in variables.items():
            if isinstance(text, str):
                item = item.replace("${%s}" % name, text)
        out.append(item)
    return out


def cmake_globs(text):
    """{variable: [files relative to the repository]} for the file(GLOB...) calls of TumorSeg/CMakeLists.txt."""
    found = {}
    for kind, variable, body in re.findall(r"file\((GLOB(?:_RECURSE)?)\s+(\w+)\s+(.*?)\)", text, re.S):
        patterns = [p.replace("${PROJECT_SOURCE_DIR}", str(ROOT)) for p in body.split()
                    if p not in ("RELATIVE", "CONFIGURE_DEPENDS", "${PROJECT_SOURCE_DIR}")]
        files = []
        for pattern in patterns:
            if kind == "GLOB_RECURSE":
                base, name = pattern.split("/*", 1)
                files += [str(p) for p in Path(base).rglob("*" + name[name.rfind("."):] if "." in name else "*")]
            else:
                files += glob.glob(pattern)
        found[variable] = sorted(str(Path(f).relative_to(ROOT)) for f in files if Path(f).is_file())
    return found


def install_layout():
    """(module scripts relative to TumorSeg/, backend scripts and resources relative to the repository)."""
    text = cmake_text(MODULE / "CMakeLists.txt")
    variables = {"MODULE_NAME": "TumorSeg", **cmake_globs(text)}
    scripts = expand(cmake_list(text, "MODULE_PYTHON_SCRIPTS"), variables)
    resources = expand(cmake_list(text, "MODULE_PYTHON_RESOURCES"), variables)
    assert '"${BACKEND_PYTHON_SCRIPTS}"' in text and "SOURCE_DIR ${PROJECT_SOURCE_DIR}" in text
    return scripts, variables["BACKEND_PYTHON_SCRIPTS"], resources


def test_top_level_cmake_declares_the_extension():
    text = cmake_text(ROOT / "CMakeLists.txt")
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{key} "[^"]+"\)', text), f"EXTENSION_{key} missing or empty"
    for line in ("find_package(Slicer REQUIRED)", "add_subdirectory(TumorSeg)", "Slicer_EXTENSION_GENERATE_CONFIG",
                 "Slicer_EXTENSION_CPACK"):
        assert line in text
    module_text = cmake_text(MODULE / "CMakeLists.txt")
    assert "slicerMacroBuildScriptedModule(" in module_text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module_text


def test_every_module_file_is_listed_and_exists():
    scripts, backend, resources = install_layout()
    on_disk = sorted(str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(scripts) == on_disk, "TumorSeg/CMakeLists.txt MODULE_PYTHON_SCRIPTS must list exactly the module's .py files"
    backend_on_disk = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "TumorSegLib").rglob("*.py")
                             if "__pycache__" not in p.parts)
    assert backend == backend_on_disk
    assert {"Resources/UI/TumorSeg.ui", "Resources/Icons/TumorSeg.png"} <= set(resources)
    models = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "Resources" / "Models").glob("*") if p.is_file())
    assert set(models) <= set(resources), "model cards and weights must be installed"
    for path in [MODULE / s for s in scripts] + [ROOT / r for r in resources]:
        assert path.is_file(), f"listed but missing: {path}"


def test_installed_layout_works_on_its_own(tmp_path):
    """Copy the files the way CMake installs them; the backend, its cards and the logic import from there."""
    scripts, backend, resources = install_layout()
    for relative, base in [(s, MODULE) for s in scripts] + [(r, ROOT) for r in backend + resources]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base / relative, tmp_path / relative)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; root = Path(sys.argv[1])\n"
        "import TumorSegLib, TumorSegLib.cards as cards, TumorSegLib.cli as cli\n"
        "assert Path(TumorSegLib.__file__).parent == root / 'TumorSegLib', TumorSegLib.__file__\n"
        "assert cards.BUILTIN_DIR == root / 'Resources' / 'Models', cards.BUILTIN_DIR\n"
        "cards.list_cards(); cli.build_parser()\n"
        "import importlib.util\n"
        "if importlib.util.find_spec('slicer') and hasattr(__import__('slicer'), 'vtkMRMLScene'):\n"
        "    import TumorSegSlicerLib.logic, TumorSegSlicerLib.selftest\n"
        "    from TumorSegSlicerLib.process import backend_root\n"
        "    assert backend_root() == root, backend_root()\n"
        "assert (root / 'Resources' / 'UI' / 'TumorSeg.ui').is_file() and (root / 'Resources' / 'Icons' / 'TumorSeg.png').is_file()\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def ui_widgets():
    tree = ElementTree.parse(UI_FILE)
    return {w.get("name"): w.get("class") for w in tree.iter("widget")}


def used_widget_names():
    """Names the panel code reads from ``ui``: ``ui.name`` / ``self.ui.name`` and the names it passes
    as strings to ``getattr(self.ui, name)`` (constants ending like widget names)."""
    names = set()
    suffixes = tuple({re.sub(r"^.*?([A-Z][a-z]+)$", r"\1", cls) for cls in EXPECTED_WIDGETS.values()} | {
        "Selector", "ComboBox", "Label", "Button", "SpinBox", "Bar", "View", "CheckBox", "LineEdit", "Widget"})
    for path in CODE_USING_UI:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                owner = node.value
                if (isinstance(owner, ast.Name) and owner.id == "ui") or (isinstance(owner, ast.Attribute) and owner.attr == "ui"):
                    names.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"[a-z]\w+", node.value) \
                    and node.value.endswith(suffixes):
                names.add(node.value)
    return names


def test_every_widget_used_exists_with_its_class():
    widgets = ui_widgets()
    used = used_widget_names()
    unknown = sorted(used - set(EXPECTED_WIDGETS))
    assert not unknown, f"the panel uses widgets with no expected class in this test: {unknown}"
    for name in used:
        assert widgets.get(name) == EXPECTED_WIDGETS[name], f"{name}: {widgets.get(name)} in TumorSeg.ui, expected {EXPECTED_WIDGETS[name]}"
    assert set(EXPECTED_WIDGETS) <= used, f"expected but unused: {sorted(set(EXPECTED_WIDGETS) - used)}"


def test_ui_scene_connections_reach_mrml_widgets():
    tree = ElementTree.parse(UI_FILE)
    widgets = ui_widgets()
    receivers = {c.findtext("receiver") for c in tree.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    mrml = {name for name, cls in widgets.items() if cls in ("qMRMLNodeComboBox", "qMRMLTableView")}
    assert receivers == mrml, f"widgets without the scene: {sorted(mrml - receivers)}"


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in MODULE.rglob("*.py")))
def test_headless_modules_do_not_import_qt(path):
    """Only TumorSeg.py and panel.py may import qt/ctk: the logic must run headless."""
    imported = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    if Path(path) not in {p.relative_to(ROOT) for p in CODE_USING_UI}:
        assert not imported & {"qt", "ctk"}, f"{path} imports {imported & {'qt', 'ctk'}}"


def test_extension_catalog_entry_agrees_with_cmake_and_license():
    """TumorSeg.json (the ExtensionsIndex entry) builds after PyTorch, in the category CMake declares; the
    LICENSE file is the Apache-2.0 text that pyproject.toml names and CMake packages."""
    import json

    entry = json.loads((ROOT / "TumorSeg.json").read_text())
    text = cmake_text(ROOT / "CMakeLists.txt")
    assert {"$schema", "build_dependencies", "category", "scm_revision", "scm_url", "tier"} <= set(entry)
    assert entry["build_dependencies"] == ["PyTorch"] and 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in text
    assert re.search(r'set\(EXTENSION_HOMEPAGE "https://', text)
    assert entry["scm_url"].startswith(re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', text).group(1))
    assert "set(EXTENSION_LICENSE_FILE ${CMAKE_CURRENT_SOURCE_DIR}/LICENSE)" in text
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
