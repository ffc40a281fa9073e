"""Test bodies shared by Slicer's ``TumorSegTest`` and pytest (Testing/Python/test_slicer_logic.py).

Each body takes a ``TumorSegLogic`` on a live scene and a ``Workspace`` (a folder for files and
tiny test models); they use real MRML nodes, the real background ``tumorseg segment`` process on
the CPU and synthetic volumes with known lesions on a flipped, oblique, anisotropic grid.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from scipy import ndimage

from TumorSegLib import testing
from TumorSegLib.errors import Cancelled, TumorSegError
from TumorSegLib.io import read_image, write_image
from TumorSegLib.measure import measure_lesions
from TumorSegLib.metrics import dice
from TumorSegLib.mip import coronal_mip
from TumorSegLib.phantoms import ellipsoid

from . import mrml, readouts as readouts_table, recist
from .logic import INPUT_ROLE, READOUTS_ROLE, EditedSegmentationError, TumorSegLogic
from .process import BackgroundProcess, python_executable


@dataclass
class Workspace:
    directory: Path
    models: dict = field(default_factory=dict)

    def model(self, mode="sliding-window-3d", modality="CT"):
        """A tiny trained model card (cached in the workspace folder)."""
        key = (mode, modality)
        if key not in self.models:
            self.models[key] = testing.tiny_model(self.directory / "models", mode, modality)
        return self.models[key]

    def cascade(self):
        """A tiny cascade whose card names its organ, the liver (``TumorSegLib.testing.tiny_cascade``)."""
        if "cascade" not in self.models:
            self.models["cascade"] = testing.tiny_cascade(self.directory / "models", threshold=0.1)
        return self.models["cascade"]

    def folder(self, name) -> Path:
        path = self.directory / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


_WORKSPACE = None


def workspace(directory=None) -> Workspace:
    global _WORKSPACE
    if directory is not None:
        return Workspace(Path(directory))
    if _WORKSPACE is None:
        _WORKSPACE = Workspace(Path(tempfile.gettempdir()) / "TumorSegSelfTest")
    return _WORKSPACE


def check(condition, message) -> None:
    """An assertion that survives ``python -O`` (Slicer self-tests report the message)."""
    if not condition:
        raise AssertionError(message)


def add_case(logic, modality="CT"):
    """The oblique, flipped, anisotropic two-lesion volume as a volume node: (node, Image, truth mask)."""
    image, truth = testing.lesion_volume(modality)
    volume = mrml.add_volume_from_image(logic.scene, image, f"case {modality}")
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(logic.scene)
    study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "patient"), "study")
    item = shNode.GetItemByDataNode(volume)
    if item:
        shNode.SetItemParent(item, study)
    else:  # headless: no subject hierarchy plugins to create the item
        shNode.CreateItem(study, volume)
    return volume, image, truth


def study_of(logic, node) -> int:
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(logic.scene)
    return shNode.GetItemParent(shNode.GetItemByDataNode(node))


def cli_mask(ws, folder_name, image, output_name, card) -> np.ndarray:
    """The mask ``tumorseg segment`` writes for ``image`` with ``card``: what the module's result must equal."""
    folder = ws.folder(folder_name)
    write_image(folder / "input.nii.gz", image)
    cli("segment", folder / "input.nii.gz", "-o", folder / output_name, "--model", card.path, "--device", "cpu")
    return read_image(folder / output_name).array != 0


def cli(*args) -> None:
    """Run ``tumorseg ARGS`` with the same Python the module uses; fail with its error line."""
    process = BackgroundProcess([python_executable(), "-m", "TumorSegLib", *map(str, args)])
    code = process.wait()
    check(code == 0, f"tumorseg {' '.join(map(str, args))} failed: {process.error_message()}")


def scene_state(scene) -> list:
    return [(n.GetID(), n.GetClassName(), n.GetName(), n.GetMTime()) for n in
            (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))]


def scene_nodes(scene) -> list:
    """Each node's ID, class and name, for segmentations the fingerprint of their tumour voxels, and the subject
    hierarchy items."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    state = [("subject hierarchy", sorted(shNode.GetItemName(i) for i in mrml.subject_hierarchy_items(scene)))]
    for node in (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())):
        entry = (node.GetID(), node.GetClassName(), node.GetName())
        if node.IsA("vtkMRMLSegmentationNode") and node.GetNodeReference(INPUT_ROLE) is not None:
            entry += (mrml.fingerprint(TumorSegLogic(scene).tumorMask(node)),)
        state.append(entry)
    return state


def wait_until(condition, seconds, message) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        check(time.monotonic() < deadline, message)
        time.sleep(0.02)


def process_alive(pid) -> bool:
    """Whether process ``pid`` is running (a zombie counts as ended)."""
    if os.name == "nt":
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


class FakeProcess:
    """A ``tumorseg segment`` stand-in (``ProcessProtocol``) that has already ended as told.

    ``write(output_path)`` makes its output file; ``stderr`` is its error line.
    """

    def __init__(self, command, returncode=0, stderr="", write=None):
        self.command = command
        self.cancelled = False
        self.done = None
        self.returncode = returncode
        self.stderr = stderr
        self.events = [("progress", 0.5, "halfway")]
        if write is not None:
            write(Path(command[command.index("-o") + 1]))
        if returncode == 0:
            self.events.append(("done", {"done": True, "lesions": 2}))

    def poll(self) -> list:
        events, self.events = self.events, []
        for event in events:
            if event[0] == "done":
                self.done = event[1]
        return events

    def cancel(self) -> None:
        self.cancelled = True

    def error_message(self) -> str:
        return self.stderr or f"tumorseg process failed with exit code {self.returncode}"


def fake_factory(commands=None, **behaviour):
    """A process factory making ``FakeProcess(command, **behaviour)``; the commands are recorded in ``commands``."""
    def make(command):
        if commands is not None:
            commands.append(command)
        return FakeProcess(command, **behaviour)
    return make


def mask_writer(image, mask):
    """``write`` for a FakeProcess: ``mask`` on ``image``'s grid."""
    return lambda path: write_image(path, image.with_array(np.asarray(mask, dtype=np.uint8)))


def same_rows(a, b, rel_tol=1e-9) -> bool:
    """Readouts table rows equal (numbers to ``rel_tol``, NaN equal to NaN)."""
    def same(x, y):
        if isinstance(x, float) and isinstance(y, float):
            return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-9)
        return x == y
    return len(a) == len(b) and all(r.keys() == q.keys() and all(same(r[k], q[k]) for k in r) for r, q in zip(a, b))


def test_segment_lands_on_lesions(logic: TumorSegLogic, ws: Workspace) -> None:
    """Slicer's round trip (write volume, process, read mask, segment) equals the CLI on the same image, voxel for voxel."""
    card = ws.model()
    volume, image, truth = add_case(logic)
    progress = []
    logic.tempRoot = ws.folder("runs")  # this test's runs only, whatever else uses the system's temporary folder
    segmentation = logic.segment(volume, str(card.path), device="cpu", progressCallback=lambda f, m: progress.append(f))
    mask = logic.tumorMask(segmentation)
    folder = ws.folder("cli")
    write_image(folder / "case.nii.gz", image)
    cli("segment", folder / "case.nii.gz", "-o", folder / "mask.nrrd", "--model", card.path, "--device", "cpu")
    expected = read_image(folder / "mask.nrrd").array != 0
    check(mask.shape == image.shape, f"segment grid {mask.shape} != volume grid {image.shape}")
    check(np.array_equal(mask, expected), f"{np.count_nonzero(mask != expected)} voxels differ from the CLI's mask")
    check(dice(mask, truth) > 0.7, f"segmentation misses the lesions (Dice {dice(mask, truth):.2f})")
    check(progress and progress[-1] == 1.0 and progress == sorted(progress), f"progress not monotonic to 1: {progress}")
    segment = segmentation.GetSegmentation().GetSegment(logic.tumorSegmentId(segmentation))
    check(segmentation.GetSegmentation().GetNumberOfSegments() == 1 and segment.GetName() == "Tumor", "one Tumor segment")
    terminology = vtk.reference("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), terminology)
    check("108369006" in str(terminology), f"Neoplasm terminology missing: {terminology}")
    check(not logic.isEdited(segmentation), "a fresh TumorSeg segmentation must not count as edited")
    table = segmentation.GetNodeReference(READOUTS_ROLE)
    check(study_of(logic, segmentation) == study_of(logic, volume) == study_of(logic, table) != 0,
          "segmentation and readouts must be placed in the input volume's study")
    check(not any(logic.tempRoot.iterdir()), "temporary folders left behind")


def test_readouts_match_cli(logic: TumorSegLogic, ws: Workspace) -> None:
    """The table equals ``tumorseg measure`` on the labelmap Slicer exports; volumes = voxels x spacing product.

    Exported as NRRD, which keeps the geometry in double precision: both sides measure the same grid.
    """
    volume, image, truth = add_case(logic)
    segmentation = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "manual")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.SetNodeReferenceID(INPUT_ROLE, volume.GetID())
    mrml.set_segment_mask(segmentation, logic.tumorSegmentId(segmentation), truth, volume)
    table = logic.computeReadouts(segmentation, volume)
    folder = ws.folder("measure")
    labelmap = logic.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(segmentation, labelmap, 0)
    mrml.write_volume(labelmap, folder / "mask.nrrd")
    logic.scene.RemoveNode(labelmap)
    mrml.write_volume(volume, folder / "image.nrrd")
    cli("measure", folder / "mask.nrrd", "--image", folder / "image.nrrd", "--modality", "CT",
        "--csv", folder / "readouts.csv")
    with open(folder / "readouts.csv") as stream:
        expected = list(csv.DictReader(stream))
    rows = readouts_table.table_rows(table)
    check(len(rows) == len(expected) + 1 and rows[-1]["label"] == "Total", f"{len(rows)} rows for {len(expected)} lesions")
    for row, want in zip(rows, expected):
        check(set(want) <= set(row), f"columns missing from the table: {set(want) - set(row)}")
        for key, value in want.items():
            mine = row[key]
            if isinstance(mine, float) and value != "":
                check(math.isclose(mine, float(value), rel_tol=1e-6, abs_tol=1e-6), f"{key}: {mine} != {value}")
            else:
                check(str(mine if not (isinstance(mine, float) and math.isnan(mine)) else "") == value, f"{key}: {mine!r} != {value!r}")
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    volumes = [r["volume_ml"] for r in rows[:-1]]
    check(math.isclose(sum(volumes), np.count_nonzero(truth) * voxel_ml, rel_tol=1e-9),
          f"volumes {volumes} != voxel count x spacing product")


def test_edit_updates_readouts(logic: TumorSegLogic, ws: Workspace) -> None:
    """Changing the segment's voxels (as Segment Editor does) marks the readouts stale; the update measures the edit."""
    volume, image, truth = add_case(logic)
    segmentation = logic.segment(volume, str(ws.model().path), device="cpu")
    before = readouts_table.table_rows(segmentation.GetNodeReference(READOUTS_ROLE))
    requested = []
    logic.readoutsUpdateRequested = lambda: requested.append(True)
    mask = logic.tumorMask(segmentation)
    blob = ellipsoid(image.shape, image.affine, image.to_world(np.array(image.shape) * [0.8, 0.2, 0.5]), (4.0, 4.0, 5.0))
    check(not np.any(blob & mask) and blob.any(), "test blob must be a new, separate lesion")
    mrml.set_segment_mask(segmentation, logic.tumorSegmentId(segmentation), mask | blob, volume)
    check(requested and segmentation.GetID() in logic.pendingReadouts, "an edit must schedule a readouts update")
    logic.updatePendingReadouts()
    after = readouts_table.table_rows(segmentation.GetNodeReference(READOUTS_ROLE))
    check(len(after) == len(before) + 1, f"{len(before) - 1} lesions before, {len(after) - 1} after adding one")
    added = after[-1]["volume_ml"] - before[-1]["volume_ml"]
    expected = np.count_nonzero(blob) * float(np.prod(image.spacing)) / 1000.0
    check(math.isclose(added, expected, rel_tol=1e-9), f"total volume grew by {added} mL, expected {expected}")
    check(logic.isEdited(segmentation), "an edited segmentation must count as edited")
    lines = logic.setRecistLinesVisible(segmentation, True)
    lesions = logic.readouts[segmentation.GetID()].lesions
    check(len(lines) == 2 * len(lesions), f"{len(lines)} RECIST lines for {len(lesions)} lesions")
    check(math.isclose(lines[0].GetLineLengthWorld(), lesions[0].recist_long_mm, rel_tol=1e-9), "long-axis line length")
    check(math.isclose(lines[1].GetLineLengthWorld(), lesions[0].recist_short_mm, rel_tol=1e-9), "short-axis line length")
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(logic.scene)
    folder = shNode.GetItemParent(shNode.GetItemByDataNode(lines[0]))
    check(folder and shNode.GetItemParent(folder) == shNode.GetItemByDataNode(segmentation),
          "RECIST lines must sit in a folder under the segmentation")
    mrml.set_segment_mask(segmentation, logic.tumorSegmentId(segmentation), mask, volume)  # remove the added lesion
    logic.updatePendingReadouts()
    kept = [segmentation.GetNthNodeReference(recist.LINE_ROLE, i)
            for i in range(segmentation.GetNumberOfNodeReferences(recist.LINE_ROLE))]
    check([n.GetID() for n in kept] == [n.GetID() for n in lines[:len(kept)]] and len(kept) == len(lines) - 2,
          "RECIST lines must be updated in place, one lesion's pair removed")
    check(all(logic.scene.GetNodeByID(n.GetID()) is None for n in lines[len(kept):]), "stale RECIST lines left")


def test_cancel_leaves_scene_unchanged(logic: TumorSegLogic, ws: Workspace) -> None:
    """Cancel during a run: the process ends, its files go, and every node is as it was."""
    card = ws.model()
    volume, image, truth = add_case(logic)
    before = scene_state(logic.scene)
    messages = []
    run = logic.segment(volume, str(card.path), device="cpu", waitForCompletion=False,
                        progressCallback=lambda f, m: messages.append(m))
    while not messages and not run.poll():
        time.sleep(0.01)
    check(not run.finished, "the run ended before it could be cancelled")
    run.cancel()
    wait_until(run.poll, 10.0, "the cancelled run did not end")
    check(isinstance(run.error, Cancelled), f"cancel must end the run as cancelled, got {run.error!r}")
    check(run.process.returncode is not None, "the process must have ended")
    check(not run.temp_dir.exists(), "temporary files must be removed")
    check(scene_state(logic.scene) == before, "the scene changed after a cancelled run")


LAUNCHER = """import subprocess, sys
child = subprocess.Popen(sys.argv[2:])
open(sys.argv[1], "w").write(str(child.pid))
sys.exit(child.wait())
"""


def test_cancel_stops_the_launched_process_tree(logic: TumorSegLogic, ws: Workspace) -> None:
    """Like PythonSlicer, a launcher starts the real ``tumorseg segment`` as its child: Cancel returns at once and
    ends the grandchild within 2 s (stopping only the launcher would leave it running)."""
    folder = ws.folder("launcher")
    launcher, pid_file = folder / "launcher.py", folder / "child.pid"
    launcher.write_text(LAUNCHER)
    logic.processFactory = lambda command: BackgroundProcess([python_executable(), str(launcher), str(pid_file), *command])
    volume, image, truth = add_case(logic)
    before = scene_state(logic.scene)
    run = logic.segment(volume, str(ws.model().path), device="cpu", waitForCompletion=False)
    wait_until(lambda: pid_file.is_file() and pid_file.read_text().strip() or run.poll(), 60.0, "no child started")
    check(not run.finished, f"the run ended before it could be cancelled: {run.error}")
    child = int(pid_file.read_text())
    check(process_alive(child), "the launched child is not running")
    started = time.monotonic()
    run.cancel()
    check(time.monotonic() - started < 0.5, f"cancel() blocked the caller for {time.monotonic() - started:.2f} s")
    wait_until(lambda: (run.poll() or True) and not process_alive(child), 2.0, "the launched child outlived Cancel by 2 s")
    wait_until(run.poll, 5.0, "the cancelled run did not end")
    check(isinstance(run.error, Cancelled), f"cancel must end the run as cancelled, got {run.error!r}")
    check(not run.temp_dir.exists() and scene_state(logic.scene) == before, "a cancelled run changed the scene or left files")


def expect_failure(run, kind, text) -> str:
    """The run's one error: of type ``kind``, its message containing ``text`` and on one line."""
    check(run.finished and isinstance(run.error, kind), f"expected a {kind.__name__}, got {run.error!r}")
    check(text in run.message and "\n" not in run.message, f"message {run.message!r} lacks {text!r} or spans lines")
    return run.message


def test_errors_end_as_one_message_scene_unchanged(logic: TumorSegLogic, ws: Workspace) -> None:
    """Every failure of a run, inside the process or while its result is imported, of any exception type, ends as
    one error message; no node is added, the output segmentation keeps its voxels and readouts, no files remain."""
    card = str(ws.model().path)
    volume, image, truth = add_case(logic)
    logic.tempRoot = ws.folder("runs")  # this test's runs only, whatever else uses the system's temporary folder

    def attempt(factory, output=None, progress=None):
        logic.processFactory = factory
        before = scene_nodes(logic.scene)
        rows = readouts_table.table_rows(output.GetNodeReference(READOUTS_ROLE)) if output is not None else None
        run = logic.segment(volume, card, device="cpu", waitForCompletion=False, outputSegmentation=output,
                            progressCallback=progress)
        wait_until(run.poll, 10.0, "the run did not end")
        check(scene_nodes(logic.scene) == before, f"the scene changed after a failed run ({run.error!r})")
        if output is not None:
            check(same_rows(readouts_table.table_rows(output.GetNodeReference(READOUTS_ROLE)), rows, 0.0),
                  "the readouts changed")
        check(not run.temp_dir.exists(), "temporary files left behind")
        return run

    expect_failure(attempt(fake_factory(returncode=2, stderr="the weights do not match the card")),
                   TumorSegError, "the weights do not match the card")
    expect_failure(attempt(fake_factory(returncode=-9)), TumorSegError, "exit code -9")
    expect_failure(attempt(fake_factory()), TumorSegError, "segmentation result")  # exit 0 and no output file
    wrong_grid = testing.lesion_volume("CT", shape=(12, 10, 8))[0]
    expect_failure(attempt(fake_factory(write=mask_writer(wrong_grid, np.ones(wrong_grid.shape)))),
                   TumorSegError, "segmentation result")
    good = fake_factory(write=mask_writer(image, truth))

    def fail_progress(fraction, message):
        raise RuntimeError("progress display broke")
    expect_failure(attempt(good, progress=fail_progress), RuntimeError, "progress display broke")
    original = logic.tumorSegmentId
    logic.tumorSegmentId = lambda node: (_ for _ in ()).throw(AttributeError("'vtkSegment' has no 'SetTerminology'"))
    try:  # the failure Slicer 5.8 showed: after the new segmentation was added to the scene
        expect_failure(attempt(good), AttributeError, "SetTerminology")
    finally:
        logic.tumorSegmentId = original
    logic.processFactory = good
    output = logic.segment(volume, card, device="cpu")
    edited_before = logic.isEdited(output)
    measure = logic.computeReadouts
    logic.computeReadouts = lambda *args: (_ for _ in ()).throw(ValueError("cannot reshape array"))
    try:  # into an existing segmentation: its voxels, attributes and readouts come back
        half = truth.copy()
        half[: truth.shape[0] // 2] = False
        expect_failure(attempt(fake_factory(write=mask_writer(image, half)), output=output), ValueError, "reshape")
    finally:
        logic.computeReadouts = measure
    check(np.array_equal(logic.tumorMask(output), truth) and logic.isEdited(output) == edited_before is False,
          "the output segmentation was not restored")

    def cannot_start(command):
        raise FileNotFoundError("PythonSlicer")
    logic.processFactory = cannot_start
    before = scene_nodes(logic.scene)
    try:
        logic.segment(volume, card, device="cpu", waitForCompletion=False)
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("a process that cannot start must raise")
    check(scene_nodes(logic.scene) == before, "the scene changed when the process could not start")
    check(not any(logic.tempRoot.iterdir()), "temporary folders left behind")


def test_results_of_other_volumes_untouched(logic: TumorSegLogic, ws: Workspace) -> None:
    """A second Segment and a new input each get a new segmentation; another volume's result is never written to,
    not even with overwrite=True."""
    card = str(ws.model().path)
    baseline, image, truth = add_case(logic)
    followup, _, _ = add_case(logic)
    logic.processFactory = fake_factory(write=mask_writer(image, truth))
    first = logic.segment(baseline, card, device="cpu")
    rows = readouts_table.table_rows(first.GetNodeReference(READOUTS_ROLE))
    smaller = truth.copy()
    smaller[: truth.shape[0] // 2] = False
    logic.processFactory = fake_factory(write=mask_writer(image, smaller))
    for overwrite in (False, True):
        try:
            logic.segment(followup, card, device="cpu", outputSegmentation=first, overwrite=overwrite)
        except TumorSegError as error:
            check("new segmentation" in str(error), f"unclear refusal: {error}")
        else:
            raise AssertionError("a follow-up scan was segmented into the baseline's segmentation")
    second = logic.segment(followup, card, device="cpu")
    again = logic.segment(baseline, card, device="cpu")
    nodes = {first.GetID(), second.GetID(), again.GetID()}
    check(len(nodes) == 3, "each Segment without an output must make a new segmentation")
    check(len({first.GetName(), second.GetName(), again.GetName()}) == 3, "segmentation names must differ")
    check(first.GetNodeReference(INPUT_ROLE) is baseline and np.array_equal(logic.tumorMask(first), truth),
          "the baseline's result changed")
    check(same_rows(readouts_table.table_rows(first.GetNodeReference(READOUTS_ROLE)), rows, 0.0),
          "the baseline's readouts changed")
    check(np.array_equal(logic.tumorMask(second), smaller) and second.GetNodeReference(INPUT_ROLE) is followup,
          "the follow-up's result is wrong")


def load_volume(logic, path, name):
    """A volume read from a file by Slicer's own storage node (ITK readers), as a user's volume is."""
    volume = logic.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = logic.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    check(storage.ReadData(volume), f"could not read {path}")
    volume.SetAndObserveStorageNodeID(storage.GetID())
    volume.CreateDefaultDisplayNodes()
    return volume


def rigid_matrix(degrees, axis, translation) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    angle = math.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
    matrix[:3, 3] = translation
    return matrix


def test_parent_transforms_change_nothing(logic: TumorSegLogic, ws: Workspace) -> None:
    """A volume loaded from its file and put under a translated or rotated parent transform gives the same mask and
    readouts as without; it is not "edited" after Segment; the ROI, click point and RECIST lines follow the transform."""
    card = str(ws.model().path)
    folder = ws.folder("transforms")
    image, truth = testing.lesion_volume("CT")
    write_image(folder / "ct.nii.gz", image)
    plain = load_volume(logic, folder / "ct.nii.gz", "plain")
    reference = logic.segment(plain, card, device="cpu")
    mask = logic.tumorMask(reference)
    rows = readouts_table.table_rows(reference.GetNodeReference(READOUTS_ROLE))
    check(mask.any(), "the tiny model found nothing")
    lesion_center = np.array([-6.0, 6.0, 14.0])  # first lesion of testing.lesion_volume, in the volume's frame
    for name, matrix in (("translated", rigid_matrix(0.0, (0, 0, 1), (10.0, 0.0, 0.0))),
                         ("rotated", rigid_matrix(30.0, (1, 1, 0), (10.0, -5.0, 3.0)))):
        transform = logic.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
        volume = load_volume(logic, folder / "ct.nii.gz", name)
        volume.SetAndObserveTransformNodeID(transform.GetID())
        segmentation = logic.segment(volume, card, device="cpu")
        check(np.array_equal(logic.tumorMask(segmentation), mask), f"{name}: the mask differs from the untransformed one")
        check(not logic.isEdited(segmentation), f"{name}: a fresh result counts as edited")
        got = readouts_table.table_rows(segmentation.GetNodeReference(READOUTS_ROLE))
        check(same_rows(got, rows), f"{name}: readouts differ")
        roi = logic.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", f"{name} roi")
        roi.SetAndObserveTransformNodeID(transform.GetID())
        roi.SetCenter(*lesion_center)
        roi.SetSize(22.0, 22.0, 24.0)
        plain_roi = logic.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "plain roi")
        plain_roi.SetCenter(*lesion_center)
        plain_roi.SetSize(22.0, 22.0, 24.0)
        check(logic.roiIndexRange(volume, roi) == logic.roiIndexRange(plain, plain_roi), f"{name}: ROI voxels differ")
        click = logic.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{name} click")
        click.AddControlPoint((matrix @ np.append(lesion_center, 1.0))[:3].tolist())
        check(np.allclose(logic.pointPosition(click, volume), lesion_center, atol=1e-6), f"{name}: click point not mapped")
        lines = logic.setRecistLinesVisible(segmentation, True)
        lesion = logic.readouts[segmentation.GetID()].lesions[0]
        world = np.array([lines[0].GetNthControlPointPositionWorld(i) for i in range(2)])
        local = np.asarray(lesion.recist_long_endpoints_world, dtype=np.float64)
        check(np.allclose(world, local @ matrix[:3, :3].T + matrix[:3, 3], atol=1e-6), f"{name}: RECIST line not under the transform")
        check(math.isclose(lines[0].GetLineLengthWorld(), lesion.recist_long_mm, rel_tol=1e-9), f"{name}: RECIST length")


def check_rerun_refused(logic, volume, card, segmentation, what: str) -> None:
    """A run of ``card`` into the edited ``segmentation`` without overwrite=True must be refused."""
    try:
        logic.segment(volume, str(card.path), device="cpu", outputSegmentation=segmentation)
    except EditedSegmentationError:
        return
    raise AssertionError(f"a re-run overwrote an edited {what} without overwrite=True")


def test_rerun_keeps_edited_segmentation(logic: TumorSegLogic, ws: Workspace) -> None:
    """Segment again into an edited segmentation: refused (voxels kept) unless overwrite=True."""
    card = ws.model()
    volume, image, truth = add_case(logic)
    segmentation = logic.segment(volume, str(card.path), device="cpu")
    fresh = logic.tumorMask(segmentation)
    edited = fresh.copy()
    edited[tuple(np.argwhere(fresh)[0])] = False
    mrml.set_segment_mask(segmentation, logic.tumorSegmentId(segmentation), edited, volume)
    check_rerun_refused(logic, volume, card, segmentation, "segmentation")
    check(np.array_equal(logic.tumorMask(segmentation), edited), "the refused re-run changed the edited voxels")
    again = logic.segment(volume, str(card.path), device="cpu", outputSegmentation=segmentation, overwrite=True)
    check(again is segmentation and np.array_equal(logic.tumorMask(segmentation), fresh), "overwrite=True must replace")
    check(logic.segment(volume, str(card.path), device="cpu", outputSegmentation=segmentation) is segmentation,
          "re-running into an unedited TumorSeg segmentation is allowed")


def test_organ_segment(logic: TumorSegLogic, ws: Workspace) -> None:
    """A model naming its organ adds it as a second segment, equal to the CLI's organ mask, with its terminology and
    readouts; an edit of it is protected like one of the tumour; a run of a model without an organ removes it."""
    card = ws.cascade()
    volume, image, _ = add_case(logic)
    segmentation = logic.segment(volume, str(card.path), device="cpu")
    organ_id = logic.organSegmentId(segmentation)
    check(organ_id and segmentation.GetSegmentation().GetNumberOfSegments() == 2, "a Tumor and an organ segment")
    segment = segmentation.GetSegmentation().GetSegment(organ_id)
    terminology = vtk.reference("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), terminology)
    check(segment.GetName() == "Liver" and "SCT^10200004^Liver" in str(terminology), f"Liver segment: {terminology}")
    organ, tumour = mrml.segment_mask(segmentation, organ_id, volume), logic.tumorMask(segmentation)
    folder = ws.folder("organ")
    write_image(folder / "case.nii.gz", image)
    cli("segment", folder / "case.nii.gz", "-o", folder / "mask.nrrd", "--organ-mask", folder / "organ.nrrd",
        "--model", card.path, "--device", "cpu")
    check(np.array_equal(organ, read_image(folder / "organ.nrrd").array != 0), "the organ differs from the CLI's")
    check(np.array_equal(tumour, read_image(folder / "mask.nrrd").array != 0), "the tumour differs from the CLI's")
    check((organ & ~tumour).any() and not (tumour & ~organ).any(), "the organ holds its tumours and more")
    totals = logic.readouts[segmentation.GetID()].totals
    check(math.isclose(totals["liver_volume_ml"], organ.sum() * image.voxel_volume / 1000, rel_tol=1e-9) and
          math.isclose(totals["tumour_percent_of_liver"], 100 * tumour.sum() / organ.sum(), rel_tol=1e-9),
          f"organ readouts {totals}")
    check(not logic.isEdited(segmentation), "a fresh TumorSeg segmentation must not count as edited")
    segmentation.GetSegmentation().RemoveSegment(logic.tumorSegmentId(segmentation))
    check(not logic.tumorMask(segmentation, volume).any(), "without its Tumor segment the organ is no tumour")
    logic.segment(volume, str(card.path), device="cpu", outputSegmentation=segmentation, overwrite=True)
    edited = organ.copy()
    edited[tuple(np.argwhere(organ & ~tumour)[0])] = False
    mrml.set_segment_mask(segmentation, organ_id, edited, volume)
    check("edited" in logic.confirmationNeeded(segmentation), "an edit of the organ segment went unnoticed")
    check_rerun_refused(logic, volume, card, segmentation, "organ segment")
    check(np.array_equal(mrml.segment_mask(segmentation, organ_id, volume), edited), "the refused run changed the organ")
    mrml.set_segment_mask(segmentation, organ_id, np.zeros_like(organ), volume)
    logic.computeReadouts(segmentation)
    totals = logic.readouts[segmentation.GetID()].totals
    check(totals["liver_volume_ml"] == 0 and totals["tumour_percent_of_liver"] is None, f"emptied organ: {totals}")
    logic.segment(volume, str(ws.model().path), device="cpu", outputSegmentation=segmentation, overwrite=True)
    check(segmentation.GetSegmentation().GetNumberOfSegments() == 1 and not logic.organSegmentId(segmentation)
          and "liver_volume_ml" not in logic.readouts[segmentation.GetID()].totals,
          "a run without an organ must leave no organ segment or readouts")


def test_roi_restricts_inference(logic: TumorSegLogic, ws: Workspace) -> None:
    """A markups ROI around one lesion: only that lesion is segmented, nothing outside the ROI's voxels."""
    volume, image, truth = add_case(logic)
    center = np.array([-6.0, 6.0, 14.0])  # first lesion of testing.lesion_volume
    roi = logic.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    roi.SetCenterWorld(*center)
    roi.SetSizeWorld(22.0, 22.0, 24.0)
    box = logic.roiIndexRange(volume, roi)
    segmentation = logic.segment(volume, str(ws.model().path), device="cpu", roi=roi)
    mask = logic.tumorMask(segmentation)
    inside = np.zeros(image.shape, dtype=bool)
    inside[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = True
    check(mask.any() and not np.any(mask & ~inside), "voxels segmented outside the ROI")
    check(len(logic.readouts[segmentation.GetID()].lesions) == 1, "only the lesion inside the ROI")


def test_modality_detection(logic: TumorSegLogic, ws: Workspace) -> None:
    """auto modality: the DICOM Modality of the series when there is one, else CT by air / PET."""
    ct, _, _ = add_case(logic, "CT")
    pet, _, _ = add_case(logic, "PET")
    check(logic.detectModality(ct) == "CT" and logic.detectModality(pet) == "PET", "intensity-based modality")
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(logic.scene)
    name = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
    shNode.SetItemAttribute(shNode.GetItemByDataNode(ct), name, "PT")
    check(logic.detectModality(ct) == "PET", "the DICOM Modality must win over intensities")


def test_a_broken_card_hides_no_model(logic: TumorSegLogic, ws: Workspace) -> None:
    """A malformed card in a model folder is reported by itself; every valid model stays listed and usable."""
    card = ws.model()
    folder = ws.folder("broken-cards")
    shutil.copy(card.path, folder / card.path.name)
    shutil.copy(card.weights_path, folder / card.weights_path.name)
    (folder / "broken.json").write_text('{"name": "broken"')
    names = {c.name for c in logic.models(None, str(folder))}
    check(card.name in names and "ct-lung-lesion-3d" in names, f"valid models missing from the list: {names}")
    broken = logic.brokenModels(str(folder))
    check(list(broken) == [folder / "broken.json"] and "cannot read model card" in broken[folder / "broken.json"],
          f"the broken card must be reported with its error: {broken}")


def test_mip_model_segments_the_mip(logic: TumorSegLogic, ws: Workspace) -> None:
    """A MIP-PET model on a 3D PET volume in the MIP view: a single-slice MIP volume (MIP pixel spacing) and its
    segmentation."""
    card = ws.model("whole-image-2d", "MIP-PET")
    volume, image, truth = add_case(logic, "PET")
    segmentation = logic.segment(volume, str(card.path), device="cpu", mipView=True)
    mip = segmentation.GetNodeReference(INPUT_ROLE)
    check(mip is not volume and mip.GetImageData().GetDimensions()[2] == 1, "the segmentation must be on a MIP volume")
    check(study_of(logic, mip) == study_of(logic, volume) != 0, "the MIP volume belongs to the PET volume's study")
    expected_mip = coronal_mip(image, card)
    check(np.allclose(mip.GetSpacing()[:2], expected_mip.spacing), f"MIP spacing {mip.GetSpacing()} != {expected_mip.spacing}")
    check(np.array_equal(mrml.image_from_volume(mip).array, expected_mip.array), "MIP pixels differ from the engine's MIP")
    expected = cli_mask(ws, "mip", image, "mask.png", card)
    mask = logic.tumorMask(segmentation)
    check(mask.shape == expected.shape and np.array_equal(mask, expected), "MIP mask differs from the CLI's PNG mask")
    check(mask.any(), "the tiny MIP model found no lesion")
    rows = readouts_table.table_rows(segmentation.GetNodeReference(READOUTS_ROLE))
    check("area_mm2" in rows[0], f"2D readouts must be areas in mm2: {list(rows[0])}")
    labels, count = ndimage.label(expected, np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    check(count >= 2 and sizes.min() < sizes.max(), f"the MIP mask needs lesions of two sizes: {sizes}")
    smallest = int(sizes.min()) + 1  # a MIP's smallest lesion is set in pixels (card.min_size_setting)
    filtered = logic.segment(volume, str(card.path), device="cpu", overrides={card.min_size_setting: smallest},
                             mipView=True)
    kept = np.isin(labels, 1 + np.flatnonzero(sizes >= smallest))
    check(np.array_equal(logic.tumorMask(filtered), kept), "the minimum lesion size in pixels did not act on the MIP")
    mips = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if mrml.affine_2d(n) is not None]
    again = logic.segment(volume, str(card.path), device="cpu", outputSegmentation=segmentation, overwrite=True,
                          mipView=True)
    check(again is segmentation and again.GetNodeReference(INPUT_ROLE) is mip, "a re-run must reuse its MIP volume")
    check(len([n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if mrml.affine_2d(n) is not None])
          == len(mips) == 2, "a re-run into a MIP segmentation added a MIP volume")


def test_pet_volume_gets_a_3d_segmentation(logic: TumorSegLogic, ws: Workspace) -> None:
    """A PET volume and a PET model give a 3D Tumor segmentation on the PET volume itself, with PET readouts:
    the MIP model's lesions traced into 3D (as the CLI's 3D mask), and a click with a 3D PET model."""
    card = ws.model("whole-image-2d", "MIP-PET")
    volume, image, truth = add_case(logic, "PET")
    segmentation = logic.segment(volume, str(card.path), device="cpu")
    check(segmentation.GetNodeReference(INPUT_ROLE) is volume, "the segmentation must be on the PET volume, not a MIP")
    expected = cli_mask(ws, "pet3d", image, "mask.nii.gz", card)
    mask = logic.tumorMask(segmentation)
    check(mask.shape == image.shape and np.array_equal(mask, expected), "traced 3D mask differs from the CLI's")
    check(dice(mask, truth) > 0.5, f"traced lesions miss the truth (Dice {dice(mask, truth):.2f})")
    rows = readouts_table.table_rows(segmentation.GetNodeReference(READOUTS_ROLE))
    check(rows and "mtv_ml" in rows[0] and "suv_max" in rows[0], f"3D PET readouts expected: {list(rows[0]) if rows else rows}")
    whole = logic.scene.AddNewNodeByClass("vtkMRMLTableNode", "measured on the whole volume")
    readouts_table.update_table(whole, measure_lesions(mask, image, "PET"))
    check(same_rows(rows, readouts_table.table_rows(whole)), "the readouts (read in the lesions' box grown by the SUVpeak "
          "sphere) differ from the whole volume's")
    pet3d = ws.model("sliding-window-3d", "PET")
    lesion = np.argwhere(truth)[0]
    clicked = logic.segment(volume, str(pet3d.path), device="cpu", point=image.to_world(lesion).tolist())
    clicked_mask = logic.tumorMask(clicked)
    check(clicked.GetNodeReference(INPUT_ROLE) is volume and clicked_mask.shape == image.shape, "a click: 3D on the volume")
    check(clicked_mask[tuple(lesion)], "the clicked lesion must be segmented")


CLICK_LESIONS = [(-6.0, 6.0, 14.0), (12.0, -10.0, 6.0)]  # the lesion centres of testing.lesion_volume (volume frame)


def click_case(logic, ws, folder_name):
    """A volume larger than two click boxes, loaded from its file and under a rotated parent transform, and a
    point list with one point on each lesion (world): (volume, Image, points, transform matrix)."""
    folder = ws.folder(folder_name)
    image, _ = testing.lesion_volume("CT", shape=(80, 72, 30))
    write_image(folder / "ct.nii.gz", image)
    volume = load_volume(logic, folder / "ct.nii.gz", folder_name)
    matrix = rigid_matrix(25.0, (0, 1, 1), (8.0, -4.0, 2.0))
    transform = logic.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", f"{folder_name} transform")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    points = logic.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{folder_name} clicks")
    for center in CLICK_LESIONS:
        points.AddControlPoint((matrix @ np.append(center, 1.0))[:3].tolist())
    return volume, image, points, matrix


def box_slices(box) -> tuple:
    return tuple(slice(lo, hi) for lo, hi in box)


def test_clicks_add_up(logic: TumorSegLogic, ws: Workspace) -> None:
    """Each click adds its lesion inside its own box through one warm worker (the CLI's mask for the same points);
    a second click keeps the first lesion and manual edits, inside its box and elsewhere; Remove lesion restores the
    box exactly (and refuses when the box was edited since, unless confirmed); a whole-volume run over clicked lesions
    needs confirmation and changes nothing without it."""
    card = str(ws.model().path)
    volume, image, points, matrix = click_case(logic, ws, "clicks")
    folder = ws.folder("clicks-cli")
    write_image(folder / "ct.nii.gz", image)
    cli("segment", folder / "ct.nii.gz", "-o", folder / "mask.nrrd", "--model", card, "--device", "cpu",
        *[v for center in CLICK_LESIONS for v in ("--point", *map(str, center))])
    expected = read_image(folder / "mask.nrrd").array != 0
    lesions, count = ndimage.label(expected, np.ones((3, 3, 3)))
    check(count == 2, f"the CLI's two clicks gave {count} lesions")
    first_lesion = lesions == lesions[tuple(np.round(image.to_index(np.array(CLICK_LESIONS[0]))).astype(int))]
    segmentation = logic.click(volume, card, points, device="cpu", pointIndex=0)
    check(np.array_equal(logic.tumorMask(segmentation), first_lesion), "the first click's lesion differs from the CLI's")
    (worker,) = logic.workers.processes()
    check(logic.confirmationNeeded(segmentation).endswith("holds 1 clicked lesion(s)"), "one clicked lesion")
    (record,) = logic.clickHistory[segmentation.GetID()]
    first_box = np.zeros(image.shape, dtype=bool)
    first_box[box_slices(record.box)] = True
    far = ellipsoid(image.shape, image.affine, image.to_world(np.array([2, 2, 2])), (3.0, 3.0, 4.0))
    away = np.subtract(CLICK_LESIONS[1], CLICK_LESIONS[0])  # beyond the second lesion, seen from the first
    near = ellipsoid(image.shape, image.affine, CLICK_LESIONS[1] + 12.0 * away / np.linalg.norm(away), (2.0, 2.0, 3.0))
    check(far.any() and near.any() and not np.any((far | near) & (expected | first_box)),
          "the edits must touch neither the lesions nor the first click's box")
    edits = far | near
    mrml.set_segment_mask(segmentation, logic.tumorSegmentId(segmentation), first_lesion | edits, volume)
    before = logic.tumorMask(segmentation)
    again = logic.click(volume, card, points, outputSegmentation=segmentation, device="cpu", pointIndex=1)
    check(again is segmentation, "the second click must go into the same segmentation")
    check(logic.workers.processes() == [worker], "the second click must reuse the warm worker")
    inside = np.zeros(image.shape, dtype=bool)
    inside[box_slices(logic.clickHistory[segmentation.GetID()][-1].box)] = True
    check(np.any(near & inside) and not np.any(far & inside), "one edit inside the second box, one outside it")
    after = logic.tumorMask(segmentation)
    check(np.array_equal(after, expected | edits), "the second click lost the first lesion or an edit, or differs "
          "from the CLI's mask")
    check(not np.any((after != before) & ~inside), "the second click changed voxels outside its box")
    check(segmentation.GetID() in logic.pendingReadouts, "a click must mark the readouts stale")
    check(len(logic.updatePendingReadouts()) == 1 and len(logic.readouts[segmentation.GetID()].lesions) == 4,
          "the readouts must count two clicked lesions and two edits")
    mrml.set_segment_mask(segmentation, logic.tumorSegmentId(segmentation), after & ~near, volume)  # erase, in box 2
    try:
        logic.removeLastLesion(segmentation)
    except EditedSegmentationError:
        pass
    else:
        raise AssertionError("Remove lesion overrode an edit made after the click without confirmation")
    check(np.array_equal(logic.tumorMask(segmentation), after & ~near), "a refused Remove lesion changed voxels")
    logic.removeLastLesion(segmentation, overwrite=True)
    check(np.array_equal(logic.tumorMask(segmentation), before), "Remove lesion did not restore the box exactly")
    check(points.GetNumberOfControlPoints() == 1, "Remove lesion must remove its click point")
    logic.removeLastLesion(segmentation)
    check(np.array_equal(logic.tumorMask(segmentation), edits), "removing the first lesion must leave the edits only")
    check(points.GetNumberOfControlPoints() == 0, "both click points went with their lesions")
    points.AddControlPoint((matrix @ np.append(CLICK_LESIONS[0], 1.0))[:3].tolist())
    logic.click(volume, card, points, outputSegmentation=segmentation, device="cpu")
    clicked = logic.tumorMask(segmentation)
    check(np.array_equal(clicked, edits | first_lesion), "a click after Remove lesion")
    logic.processFactory = fake_factory(write=mask_writer(image, expected))
    reason = logic.confirmationNeeded(segmentation)
    check("clicked lesion" in reason, f"a segmentation holding clicked lesions must need confirmation: {reason!r}")
    try:
        logic.segment(volume, card, device="cpu", outputSegmentation=segmentation)
    except EditedSegmentationError as error:
        check("clicked lesion" in str(error), f"unclear refusal: {error}")
    else:
        raise AssertionError("a whole-volume run replaced clicked lesions without confirmation")
    check(np.array_equal(logic.tumorMask(segmentation), clicked), "the refused whole-volume run changed voxels")
    logic.segment(volume, card, device="cpu", outputSegmentation=segmentation, overwrite=True)
    check(np.array_equal(logic.tumorMask(segmentation), expected), "the confirmed whole-volume run must replace")
    check(not logic.confirmationNeeded(segmentation) and not logic.clickHistory.get(segmentation.GetID()),
          "after a whole-volume run the segmentation holds no clicked lesion")
    logic.shutdown()


def test_worker_ends_with_module_scene_and_cancel(logic: TumorSegLogic, ws: Workspace) -> None:
    """The warm worker ends with the module's cleanup (``shutdown``), with scene close, on its idle timeout, and on
    Cancel (its whole process tree, started through a launcher as PythonSlicer does); a cancelled click changes
    nothing."""
    card = str(ws.model().path)
    volume, image, points, matrix = click_case(logic, ws, "worker")

    def started_worker():
        (process,) = logic.workers.processes()
        check(process_alive(process.pid), "the worker must be running between clicks")
        return process.pid

    logic.click(volume, card, points, device="cpu", pointIndex=0)
    pid = started_worker()
    logic.shutdown()
    wait_until(lambda: not process_alive(pid), 5.0, "the worker outlived the module's cleanup by 5 s")
    check(not logic.workers.processes(), "no worker after cleanup")
    logic.click(volume, card, points, device="cpu", pointIndex=1)
    pid = started_worker()
    logic.scene.Clear(0)
    wait_until(lambda: not process_alive(pid), 5.0, "the worker outlived the scene's close by 5 s")
    check(not logic.clickHistory, "scene close must forget the clicks")
    volume, image, points, matrix = click_case(logic, ws, "worker-cancel")
    folder = ws.folder("worker-launcher")
    launcher, pid_file = folder / "launcher.py", folder / "child.pid"
    launcher.write_text(LAUNCHER)
    logic.processFactory = lambda command, **options: BackgroundProcess(
        [python_executable(), str(launcher), str(pid_file), *command], **options)
    before = scene_state(logic.scene)
    run = logic.click(volume, card, points, device="cpu", waitForCompletion=False)
    wait_until(lambda: pid_file.is_file() and pid_file.read_text().strip() or run.poll(), 60.0, "no worker started")
    check(not run.finished, f"the click ended before it could be cancelled: {run.error}")
    child = int(pid_file.read_text())
    run.cancel()
    wait_until(lambda: (run.poll() or True) and not process_alive(child), 3.0, "the worker outlived Cancel by 3 s")
    wait_until(run.poll, 5.0, "the cancelled click did not end")
    check(isinstance(run.error, Cancelled), f"cancel must end the click as cancelled, got {run.error!r}")
    check(scene_state(logic.scene) == before and not run.temp_dir.exists(), "a cancelled click changed the scene")
    logic.processFactory = BackgroundProcess
    logic.workerIdleTimeout = 1.0
    logic.click(volume, card, points, device="cpu")
    pid = started_worker()
    wait_until(lambda: not process_alive(pid), 10.0, "the worker outlived its idle timeout of 1 s by 9 s")
    logic.shutdown()


TESTS = [(f.__name__, f) for f in (test_modality_detection, test_readouts_match_cli, test_segment_lands_on_lesions,
                                   test_edit_updates_readouts, test_rerun_keeps_edited_segmentation, test_organ_segment,
                                   test_roi_restricts_inference, test_cancel_leaves_scene_unchanged,
                                   test_cancel_stops_the_launched_process_tree,
                                   test_errors_end_as_one_message_scene_unchanged,
                                   test_results_of_other_volumes_untouched, test_parent_transforms_change_nothing,
                                   test_mip_model_segments_the_mip, test_a_broken_card_hides_no_model,
                                   test_pet_volume_gets_a_3d_segmentation, test_clicks_add_up,
                                   test_worker_ends_with_module_scene_and_cancel)]
