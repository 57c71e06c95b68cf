"""Down to a microcontroller: the tensor arena TensorFlow Lite Micro needs for an int8 TFLite
file, measured with its own interpreter, and the file as C source that compiles and holds the
same bytes."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from edgel2.cli import cli
from edgel2.errors import EdgeL2Error
from edgel2.export.micro import c_identifier, micro_footprint, write_c_array
from edgel2.model import count_multiply_adds, count_params, resnet20
from edgel2.runtime.modelfile import read_metadata

pytest.importorskip("tflite_micro", reason="TensorFlow Lite Micro figures need edgel2[micro]")


def test_the_arena_is_the_smallest_the_interpreter_accepts(small_resnet20):
    from tflite_micro.python.tflite_micro import runtime

    path = small_resnet20["r20-int8.tflite"]
    measured = micro_footprint(path)
    arena = measured["arena_bytes"]
    assert arena % 16 == 0 and 1024 < arena < 100 * 1024
    runtime.Interpreter.from_file(str(path), arena_size=arena)  # allocates
    with pytest.raises(RuntimeError):
        runtime.Interpreter.from_file(str(path), arena_size=arena - 16)
    assert measured["flash_bytes"] == path.stat().st_size


def test_tflite_micro_computes_what_litert_does_on_the_file(small_resnet20, cifar):
    from tflite_micro.python.tflite_micro import runtime

    from edgel2.runtime.auto import open_engine

    path = small_resnet20["r20-int8.tflite"]
    micro = runtime.Interpreter.from_file(str(path), arena_size=micro_footprint(path)["arena_bytes"])
    litert = open_engine(path, engine="litert")
    outputs, expected = [], []
    for image in cifar.x_test[:20]:
        micro.set_input(image[None], 0)
        micro.invoke()
        outputs.append(micro.get_output(0)[0])
        expected.append(litert.run(image[None])[0])
    outputs, expected = np.array(outputs), np.array(expected)
    # reference kernels against XNNPACK: the same int8 graph, each layer's rounding apart, so
    # logits a few quantization steps apart (a step is about 0.1 in this file), rarely a top-1
    step = np.min(np.diff(np.unique(np.round(expected, 3))))  # float noise rounded away
    assert np.abs(outputs - expected).mean() <= step
    assert np.abs(outputs - expected).max() <= 5 * step
    assert np.mean(outputs.argmax(1) == expected.argmax(1)) >= 0.9


def test_the_export_report_carries_the_arena_and_prints_it(small_resnet20):
    from edgel2.export import format_table

    report = small_resnet20["report"]
    row = next(r for r in report["rows"] if r["file"] == "r20-int8.tflite")
    assert row["micro_arena_bytes"] == micro_footprint(small_resnet20["r20-int8.tflite"])["arena_bytes"]
    onnx_row = next(r for r in report["rows"] if r["file"] == "r20-int8.onnx")
    assert "micro_arena_bytes" not in onnx_row
    line = next(x for x in format_table(report).splitlines() if x.startswith("TensorFlow Lite"))
    assert line == (f"TensorFlow Lite Micro: r20-int8.tflite needs a "
                    f"{row['micro_arena_bytes'] / 1024:.1f} KiB tensor arena and "
                    f"{row['size_mb'] * 1024:.1f} KiB of flash (measured); C source: "
                    "r20-int8.cc, r20-int8.h")


def test_the_metadata_says_the_network_and_its_cost(small_resnet20):
    network = read_metadata(small_resnet20["r20-int8.onnx"])["network"]
    model = resnet20(width=4)
    assert network == {"architecture": "resnet20", "width": 4, "parameters": count_params(model),
                       "multiply_adds": count_multiply_adds(model)}
    assert read_metadata(small_resnet20["r20-int8.tflite"])["network"] == network


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_the_c_array_compiles_and_holds_the_files_bytes_names_and_arena(small_resnet20,
                                                                       tmp_path):
    path = small_resnet20["r20-int8.tflite"]
    arena = small_resnet20["report"]["rows"][1]["micro_arena_bytes"]
    program = tmp_path / "check.cc"
    program.write_text(
        '#include <cstdio>\n#include "r20-int8.h"\n'
        "int main() {\n"
        '  std::printf("%u %u %u %s\\n", g_r20_int8_len, k_r20_int8_arena_bytes,\n'
        "              k_r20_int8_num_classes, k_r20_int8_class_names[9]);\n"
        "  std::fwrite(g_r20_int8, 1, g_r20_int8_len, stderr);\n"
        '  return reinterpret_cast<unsigned long>(g_r20_int8) % 16;\n}\n')
    binary = tmp_path / "check"
    subprocess.run(["g++", "-std=c++17", "-I", str(path.parent), str(program),
                    str(path.with_suffix(".cc")), "-o", str(binary)], check=True, timeout=120)
    ran = subprocess.run([str(binary)], capture_output=True, timeout=30)
    assert ran.returncode == 0  # the array is 16-byte aligned
    assert ran.stdout.decode().split() == [str(path.stat().st_size), str(arena), "10", "truck"]
    assert ran.stderr == path.read_bytes()


def test_class_names_with_quotes_and_non_ascii_are_escaped(tmp_path):
    path = tmp_path / "m-int8.tflite"
    path.write_bytes(bytes(range(20)))
    source, header = write_c_array(path, {"class_names": ['say "hi"', "café"],
                                          "input": {"shape": [None, 8, 8, 3]}})
    text = source.read_text()
    assert r'{"say \042hi\042", "caf\303\251"}' in text
    assert "k_m_int8_arena_bytes" not in header.read_text()  # not measured: not claimed
    assert "uint8 [1, 8, 8, 3]" in header.read_text()


def test_a_c_identifier_is_made_from_any_stem():
    assert c_identifier("photos v2-int8") == "photos_v2_int8"
    assert c_identifier("9lives") == "_9lives"


def test_a_file_tflite_micro_cannot_run_is_one_line(tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\0" * 64)
    with pytest.raises(EdgeL2Error, match="^TensorFlow Lite Micro cannot run broken.tflite"):
        micro_footprint(broken)


def test_c_array_without_an_int8_tflite_file_is_refused_in_one_line():
    result = CliRunner().invoke(cli, ["export", "m.keras", "--c-array"])
    assert result.exit_code == 2
    assert result.stderr == ("edgel2: error: --c-array writes int8 TFLite files as C source: "
                             "export format tflite at precision int8\n")
