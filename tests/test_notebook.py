"""The example notebook runs top to bottom on the offline sample, its answers are the course
notebook's (analyzing-dnns, questions 2.1 to 2.7), and the outputs stored with it are current.

The notebook is executed with nbclient in a temporary folder, exactly as `make notebook` runs
it; then this test runs one cell of its own in the same kernel that gathers the notebook's
figures as JSON (the notebook itself carries no test plumbing), and compares them with the
figures the course notebook prints. Expected numbers come from the course notebook's own
output (/work/shared/seed/analyzing-dnns.txt) or are derived by hand in a comment, never from
dnnlens. The stored outputs of every cell not tagged ``varies`` (training, timings) must equal
a fresh run's: a stale notebook fails here until `make notebook` is run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "analyzing-dnns.ipynb"

pytestmark = pytest.mark.slow  # trains 10 epochs and verifies both engines (about a minute)

#: The course notebook's answers (its printed output for 2.3 to 2.7) for the layers that
#: exist in both lists, by our layer name.
COURSE_DESCRIPTORS = {
    "conv1": (5, 5, 1, 4),
    "pool": (2, 2, 2, 2),
    "conv2": (5, 5, 4, 8),
    "pool#2": (2, 2, 2, 2),
    "fc1": (256, 392),
    "fc2": (10, 256),
}
COURSE_WEIGHTS = {"conv1": 100, "conv2": 800, "fc1": 100_352, "fc2": 2_560}  # 2.5
COURSE_MACS = {"conv1": 78_400, "conv2": 156_800, "fc1": 100_352, "fc2": 2_560}  # 2.6
COURSE_INTENSITY = {
    "conv1": 19.502487562189053,
    "conv2": 49.746192893401016,  # 2.7
    "fc1": 0.9935841584158416,
    "fc2": 0.9058740268931351,
}
COURSE_OUTPUT_SHAPES = {  # 2.4, written (N, C, W, H), fc layers as (N, features, 1, 1)
    "conv1": (1, 4, 28, 28),
    "relu": (1, 4, 28, 28),
    "pool": (1, 4, 14, 14),
    "conv2": (1, 8, 14, 14),
    "relu#2": (1, 8, 14, 14),
    "pool#2": (1, 8, 7, 7),
    "fc1": (1, 256, 1, 1),
    "fc2": (1, 10, 1, 1),
}

#: Run by this test after the notebook, in its kernel: the notebook's figures as JSON.
GATHER = """
import inspect as _inspect, json as _json
_summary = analysis.to_json_dict()
print(_json.dumps({
    "kernels": {f: _inspect.getsource(k) for f, k in KERNELS.items()},
    "verify": {e: {"images": r.images, "correct": r.correct, "torch_correct": r.torch_correct,
                   "mismatches": r.mismatches, "max_abs_diff": r.max_abs_diff}
               for e, r in checks.items()},
    "layers": _summary["layers"], "totals": _summary["totals"],
    "input_shape": list(analysis.input_shape),
    "course_shapes": [list(course_shape(r.output_shape)) for r in analysis.rows],
    "course_list_error": course_list_error, "weight_memory": memory,
    "roofline": {str(b): {l.name: l.bound for l in roof.layers} for b, roof in roofs.items()},
    "footprint": {"weight_bytes": footprint.weight_bytes, "bias_bytes": footprint.bias_bytes,
                  "peak_activation_bytes": footprint.peak_activation_bytes},
    "charts": [str(Path(png).resolve()), str(Path(svg).resolve())],
    "report": str(Path(page).resolve()),
}))
"""


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], Path]:
    """The notebook after running it as `make notebook` does, its figures and its folder."""
    folder = tmp_path_factory.mktemp("notebook")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as env:  # the kernel inherits this process's environment
        env.setenv("MPLBACKEND", "Agg")
        client = NotebookClient(
            notebook,
            timeout=900,
            startup_timeout=120,
            kernel_name="python3",
            resources={"metadata": {"path": str(folder)}},
        )
        with client.setup_kernel():
            for index, cell in enumerate(notebook.cells):
                client.execute_cell(cell, index)
            gather = nbformat.v4.new_code_cell(GATHER)
            notebook.cells.append(gather)  # nbclient stores a cell's outputs by its index
            client.execute_cell(gather, len(notebook.cells) - 1)
            notebook.cells.pop()
    text = "".join(o.get("text", "") for o in gather.outputs if o.output_type == "stream")
    return notebook, json.loads(text), folder


def code_cells(notebook: Any) -> list[Any]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_stored_with_outputs_from_one_run() -> None:
    """A reader on a code host sees the answers: every code cell has its outputs, from one
    run top to bottom (execution counts 1, 2, 3, ...), none of them an error."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    cells = code_cells(notebook)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))
    for cell in cells:
        assert cell.outputs, f"no output stored: {cell.source[:60]}"
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:60]


def test_reads_as_a_course_companion() -> None:
    """No test plumbing in what a student reads: no environment switches, no test files."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        for pattern in (r"DNNLENS_\w+", r"os\.environ", r"tests?/test_\w+", r"\bpytest\b"):
            assert not re.search(pattern, cell.source), (pattern, cell.source[:80])


def _shown(cell: Any) -> list[Any]:
    """What a cell shows, comparable between runs: text as is, images by their kind only."""
    shown: list[Any] = []
    for output in cell.outputs:
        if output.output_type == "stream":
            # The kernel splits a stream into chunks as it flushes: compare the joined text.
            if shown and isinstance(shown[-1], tuple) and shown[-1][0] == output.name:
                shown[-1] = (output.name, shown[-1][1] + output.text)
            else:
                shown.append((output.name, output.text))
        elif output.output_type in ("display_data", "execute_result"):
            data = output.get("data", {})
            shown.append(
                {kind: (data[kind] if kind.startswith("text/") else kind) for kind in sorted(data)}
            )
    return shown


def test_stored_outputs_are_current(executed: tuple[Any, dict[str, Any], Path]) -> None:
    """Every cell that does not vary run to run shows what a fresh run shows; otherwise
    run `make notebook`."""
    fresh, _, _ = executed
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in code_cells(stored)] == [c.source for c in code_cells(fresh)]
    compared = 0
    for old, new in zip(code_cells(stored), code_cells(fresh)):
        if "varies" in old.metadata.get("tags", []):
            continue
        assert _shown(old) == _shown(new), f"stale output (run `make notebook`): {old.source[:60]}"
        compared += 1
    assert compared >= 12  # the analysis cells: 2.1, 2.3 to 2.7, roofline, footprint, report


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
    executed: tuple[Any, dict[str, Any], Path],
) -> None:
    _, results, _ = executed
    assert set(results["verify"]) == {"compiled", "reference"}
    for engine, check in results["verify"].items():
        assert check["images"] == 1000, engine  # the sample's 1,000 test images
        assert check["mismatches"] == 0, engine
        assert check["correct"] == check["torch_correct"], engine
        assert check["max_abs_diff"] < 1e-4, engine  # float32 logits
        assert check["correct"] > 500, engine  # one epoch already learns (chance: 100)


def test_2_3_the_ten_layers_and_the_course_descriptors(
    executed: tuple[Any, dict[str, Any], Path],
) -> None:
    _, results, _ = executed
    layers = results["layers"]
    # The course's Net.forward, read by hand: pool(relu(conv1)), pool(relu(conv2)), view,
    # relu(fc1), fc2: ten operators, where the course's list has nine.
    assert [layer["type"] for layer in layers] == [
        "conv",
        "relu",
        "maxpool",
        "conv",
        "relu",
        "maxpool",
        "flatten",
        "fc",
        "relu",
        "fc",
    ]
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
    others = [
        layer["weights"] for layer in results["layers"] if layer["name"] not in COURSE_WEIGHTS
    ]
    assert others == [0] * 6
    assert results["totals"]["weights"] == 103_812  # the course's expected total
    # 4 + 8 + 256 + 10 biases, counted apart
    assert results["totals"]["biases"] == 278
    assert results["weight_memory"] == {"fp32": 103_812 * 4, "fp16": 103_812 * 2, "int8": 103_812}


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
