"""`dnnlens analyze --json` carries everything the text shows: with --device the device,
the roofline of every layer and the memory footprint; with --measure the timings. Checked
against a JSON schema, and the figures against truths derived by hand here.

Truths (the course network at batch 1, fp32, on rpi5: 76.8e9 MAC/s, 17.07e9 B/s, read from
the shipped spec file with tomllib, not through dnnlens):
* conv1: 78,400 MACs over 4,020 values x 4 B = 16,080 B -> 4.876 MAC/byte >= ridge 4.499:
  compute-bound; fc1: 100,352 / (101,000 x 4) = 0.248 -> memory-bound.
* weights 103,812 x 4 B = 415,248 B; biases 278 x 4 = 1,112 B; peak activations at the
  first relu: conv1's output and relu's output alive together, 2 x 4x28x28 x 4 B = 25,088 B.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest

from dnnlens.cli import main

RPI5 = Path(__file__).resolve().parents[1] / "dnnlens" / "hardware" / "rpi5.toml"

NUMBER = {"type": "number"}
NULLABLE_NUMBER = {"type": ["number", "null"]}
FIGURE = {"type": ["object", "null"], "required": ["value", "source"]}
ROOFLINE = {
    "type": "object",
    "required": [
        "device",
        "dtype",
        "batch",
        "peak_macs_per_s",
        "bandwidth_bytes_per_s",
        "ridge_macs_per_byte",
        "latency_s",
        "throughput_per_s",
        "layers",
    ],
    "properties": {
        "device": {
            "type": "object",
            "required": ["name", "title", "peak_macs_per_s", "memory_bandwidth"],
            "properties": {"memory_bandwidth": FIGURE},
        },
        "latency_s": NUMBER,
        "ridge_macs_per_byte": NUMBER,
        "layers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "index",
                    "name",
                    "type",
                    "intensity_macs_per_byte",
                    "attainable_macs_per_s",
                    "bound",
                    "time_s",
                ],
                "properties": {
                    "bound": {"enum": ["compute", "memory", "none"]},
                    "time_s": NUMBER,
                    "intensity_macs_per_byte": NULLABLE_NUMBER,
                },
            },
        },
    },
}
FOOTPRINT = {
    "type": "object",
    "required": ["weight_bytes", "bias_bytes", "peak_activation_bytes", "peak_at", "total_bytes"],
}
SCHEMA = {
    "type": "object",
    "required": [
        "model",
        "input_shape",
        "batch",
        "dtype",
        "units",
        "layers",
        "totals",
        "warnings",
    ],
    "properties": {"roofline": ROOFLINE, "footprint": FOOTPRINT},
}
MEASURE = {
    "type": "object",
    "required": ["roofline", "device", "batch", "layers", "totals", "fused"],
    "properties": {
        "roofline": ROOFLINE,
        "layers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "estimate_s", "ours_s", "torch_s"],
                "properties": {
                    "estimate_s": NUMBER,
                    "ours_s": NULLABLE_NUMBER,
                    "torch_s": NULLABLE_NUMBER,
                },
            },
        },
    },
}


def analyze_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["analyze", *argv, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)  # stdout is one JSON document, nothing else
    jsonschema.validate(document, SCHEMA)
    return document


def test_plain_json_has_no_device_figures(capsys: pytest.CaptureFixture[str]) -> None:
    document = analyze_json(capsys)
    assert "roofline" not in document and "measure" not in document


def test_device_adds_roofline_and_footprint(capsys: pytest.CaptureFixture[str]) -> None:
    document = analyze_json(capsys, "--device", "rpi5")
    spec = tomllib.loads(RPI5.read_text())
    peak = spec["peak_macs_per_s"]["fp32"]["value"]
    bandwidth = spec["memory_bandwidth"]["value"]
    roof = document["roofline"]
    assert roof["device"]["name"] == "rpi5"
    assert roof["ridge_macs_per_byte"] == pytest.approx(peak / bandwidth)
    bounds = {layer["name"]: layer["bound"] for layer in roof["layers"]}
    assert bounds["conv1"] == "compute" and bounds["fc1"] == "memory"
    assert roof["layers"][0]["intensity_macs_per_byte"] == pytest.approx(78_400 / 16_080)
    # Latency: each layer max(MACs / peak, bytes / bandwidth), from the JSON's own rows.
    rows = document["layers"]
    expected = sum(max(r["macs"] / peak, 4 * r["values_moved"] / bandwidth) for r in rows)
    assert roof["latency_s"] == pytest.approx(expected)
    foot = document["footprint"]
    assert (foot["weight_bytes"], foot["bias_bytes"], foot["peak_activation_bytes"]) == (
        415_248,
        1_112,
        25_088,
    )
    assert roof["fits"] == {"main_memory": True, "on_chip_memory": True}


@pytest.mark.slow
def test_measure_adds_timings_and_stdout_stays_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dnnlens", "analyze", "--json", "--measure"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)
    jsonschema.validate(document, SCHEMA)
    jsonschema.validate(document["measure"], MEASURE)
    measure = document["measure"]
    assert measure["device"] == "this-machine"
    assert [t["name"] for t in measure["layers"]] == [r["name"] for r in document["layers"]]
    conv1 = measure["layers"][0]
    assert conv1["ours_s"] > 0 and conv1["torch_s"] > 0  # both libraries ran it
    assert "probing" in done.stderr  # progress is said, on stderr
