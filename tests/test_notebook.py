"""The example notebook runs top to bottom on the offline sample and its answers are the course
notebook's (analyzing-dnns, questions 2.1 to 2.7), so it cannot rot.

The notebook is executed with nbclient in a temporary folder (one short training epoch: the
figures of 2.3 to 2.7 do not depend on training); its last cell writes its answers as JSON,
which the tests compare with the figures the course notebook prints. Expected numbers come from
the course notebook's own output (/work/shared/seed/analyzing-dnns.txt) or are derived by hand
in a comment, never from dnnlens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "analyzing-dnns.ipynb"

#: The course notebook's answers (its printed output for 2.3 to 2.7) for the layers that
#: exist in both lists, by our layer name.
COURSE_DESCRIPTORS = {"conv1": (5, 5, 1, 4), "pool": (2, 2, 2, 2), "conv2": (5, 5, 4, 8),
                      "pool#2": (2, 2, 2, 2), "fc1": (256, 392), "fc2": (10, 256)}
COURSE_WEIGHTS = {"conv1": 100, "conv2": 800, "fc1": 100_352, "fc2": 2_560}  # 2.5
COURSE_MACS = {"conv1": 78_400, "conv2": 156_800, "fc1": 100_352, "fc2": 2_560}  # 2.6
COURSE_INTENSITY = {"conv1": 19.502487562189053, "conv2": 49.746192893401016,  # 2.7
                    "fc1": 0.9935841584158416, "fc2": 0.9058740268931351}
COURSE_OUTPUT_SHAPES = {  # 2.4, written (N, C, W, H), fc layers as (N, features, 1, 1)
    "conv1": (1, 4, 28, 28), "relu": (1, 4, 28, 28), "pool": (1, 4, 14, 14),
    "conv2": (1, 8, 14, 14), "relu#2": (1, 8, 14, 14), "pool#2": (1, 8, 7, 7),
    "fc1": (1, 256, 1, 1), "fc2": (1, 10, 1, 1)}


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], Path]:
    """The notebook after running it (one training epoch), its JSON answers and its folder."""
    folder = tmp_path_factory.mktemp("notebook")
    results = folder / "results.json"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as env:  # the kernel inherits this process's environment
        env.setenv("DNNLENS_EPOCHS", "1")
        env.setenv("DNNLENS_WORKDIR", str(folder / "work"))
        env.setenv("DNNLENS_RESULTS", str(results))
        env.delenv("DNNLENS_CHECKPOINT", raising=False)
        env.setenv("MPLBACKEND", "Agg")
        client = NotebookClient(notebook, timeout=600, startup_timeout=120,
                                kernel_name="python3",
                                resources={"metadata": {"path": str(folder)}})
        client.execute()
    return notebook, json.loads(results.read_text()), folder


def code_cells(notebook: Any) -> list[Any]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_committed_without_outputs() -> None:
    """The notebook is kept as source: no stale outputs for anyone to mistake for results."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in code_cells(notebook):
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_every_cell_runs_without_error(executed: tuple[Any, dict[str, Any], Path]) -> None:
    notebook, _, _ = executed
    for cell in code_cells(notebook):
        assert cell.execution_count is not None, f"not executed: {cell.source[:60]}"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{cell.source[:60]}: {errors[0].ename}: {errors[0].evalue}"
        streams = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        assert "Traceback" not in streams


def test_2_1_shows_our_loop_nests(executed: tuple[Any, dict[str, Any], Path]) -> None:
    _, results, _ = executed
    kernels = results["kernels"]
    assert set(kernels) == {"conv", "fc", "relu", "pool2", "flatten"}  # the course's five
    assert kernels["conv"].startswith("def conv2d_reference")
    assert kernels["fc"].startswith("def linear_reference")
    for function in ("conv", "fc", "pool2"):  # explicit loops, no library products
        source = kernels[function]
        assert "for " in source
        assert not any(call in source for call in ("np.dot", "np.matmul", "einsum", " @ "))


def test_2_2_our_engines_agree_with_pytorch_on_every_image(
        executed: tuple[Any, dict[str, Any], Path]) -> None:
    _, results, _ = executed
    assert set(results["verify"]) == {"compiled", "reference"}
    for engine, check in results["verify"].items():
        assert check["images"] == 1000, engine  # the sample's 1,000 test images
        assert check["mismatches"] == 0, engine
        assert check["correct"] == check["torch_correct"], engine
        assert check["max_abs_diff"] < 1e-4, engine  # float32 logits
        assert check["correct"] > 500, engine  # one epoch already learns (chance: 100)


def test_2_3_the_ten_layers_and_the_course_descriptors(
        executed: tuple[Any, dict[str, Any], Path]) -> None:
    _, results, _ = executed
    layers = results["layers"]
    # The course's Net.forward, read by hand: pool(relu(conv1)), pool(relu(conv2)), view,
    # relu(fc1), fc2: ten operators, where the course's list has nine.
    assert [layer["type"] for layer in layers] == [
        "conv", "relu", "maxpool", "conv", "relu", "maxpool", "flatten", "fc", "relu", "fc"]
    by_name = {layer["name"]: layer for layer in layers}
    for name, descriptor in COURSE_DESCRIPTORS.items():
        assert tuple(by_name[name]["descriptor"]) == descriptor, name
    assert results["input_shape"] == [1, 1, 28, 28]
    # The course's own list is refused where it goes wrong: its layer 7 "relu" keeps
    # (1, 8, 7, 7), so its layer 8, fc (256, 392), gets 7 values per row instead of 392.
    assert "layer 8" in results["course_list_error"]
    assert "392" in results["course_list_error"]


def test_2_4_output_sizes(executed: tuple[Any, dict[str, Any], Path]) -> None:
    _, results, _ = executed
    names = [layer["name"] for layer in results["layers"]]
    shapes = dict(zip(names, map(tuple, results["course_shapes"])))
    for name, shape in COURSE_OUTPUT_SHAPES.items():
        assert shapes[name] == shape, name
    assert shapes["flatten"] == (1, 392, 1, 1)  # 8 * 7 * 7 = 392, the course's view
    assert shapes["relu#3"] == (1, 256, 1, 1)  # the ReLU after fc1
    # The course's nine sum to 11,106 with 256 for its layer 7; the real flatten has 392 and
    # the missing ReLU 256 more: 11,106 - 256 + 392 + 256 = 11,498.
    assert results["totals"]["outputs"] == 11_106 - 256 + 392 + 256 == 11_498


def test_2_5_weights_and_weight_memory(executed: tuple[Any, dict[str, Any], Path]) -> None:
    _, results, _ = executed
    by_name = {layer["name"]: layer for layer in results["layers"]}
    for name, weights in COURSE_WEIGHTS.items():
        assert by_name[name]["weights"] == weights, name
    others = [layer["weights"] for layer in results["layers"] if layer["name"] not in
              COURSE_WEIGHTS]
    assert others == [0] * 6
    assert results["totals"]["weights"] == 103_812  # the course's expected total
    # 4 + 8 + 256 + 10 biases, counted apart
    assert results["totals"]["biases"] == 278
    assert results["weight_memory"] == {"fp32": 103_812 * 4, "fp16": 103_812 * 2,
                                        "int8": 103_812}


def test_2_6_multiplications(executed: tuple[Any, dict[str, Any], Path]) -> None:
    _, results, _ = executed
    by_name = {layer["name"]: layer for layer in results["layers"]}
    for name, macs in COURSE_MACS.items():
        assert by_name[name]["macs"] == macs, name
    assert results["totals"]["macs"] == 338_112  # the course's expected total


def test_2_7_compute_intensity(executed: tuple[Any, dict[str, Any], Path]) -> None:
    _, results, _ = executed
    by_name = {layer["name"]: layer for layer in results["layers"]}
    for name, intensity in COURSE_INTENSITY.items():
        assert by_name[name]["intensity"] == pytest.approx(intensity, rel=1e-12), name
    total = sum(layer["intensity"] for layer in results["layers"])
    assert total == pytest.approx(71.14813864089903, rel=1e-12)  # the course's expected sum


def test_roofline_and_memory_footprint(executed: tuple[Any, dict[str, Any], Path]) -> None:
    _, results, folder = executed
    # rpi5: 76.8 GMAC/s over 17.07 GB/s, ridge 4.499 MAC/byte. fc1 at batch 1:
    # 100,352 MACs / ((392 + 100,352 + 256) * 4 B) = 0.248 -> memory-bound; at batch 256:
    # 256 * 100,352 / ((256*392 + 100,352 + 256*256) * 4 B) = 25,690,112 / 1,064,960 = 24.1
    # -> compute-bound. conv1 at batch 1: 78,400 / (4,020 * 4 B) = 4.876 -> compute-bound.
    assert results["roofline"]["1"]["fc1"] == "memory"
    assert results["roofline"]["256"]["fc1"] == "compute"
    assert results["roofline"]["1"]["conv1"] == "compute"
    # 103,812 weights and 278 biases, 4 bytes each
    assert results["footprint"]["weight_bytes"] == 415_248
    assert results["footprint"]["bias_bytes"] == 1_112
    # At least the largest activation, conv1's output: 4 * 28 * 28 values * 4 B
    assert results["footprint"]["peak_activation_bytes"] >= 12_544
    for path in [*results["charts"], results["report"]]:
        assert Path(path).is_file() and Path(path).stat().st_size > 0
        assert Path(path).is_relative_to(folder)
