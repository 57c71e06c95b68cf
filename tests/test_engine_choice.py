"""`auto` measures, then remembers: on a CPU it races the engines and settings that can run
the model for the workload and keeps the fastest; the choice is cached per machine, model
files and engine versions, ignored when damaged or stale, and turned off by
EDGEL2_ENGINE_PROBE=0. A folder holding a model's ONNX and TFLite files is one model.

The race's logic is pinned with fake engines of known speeds on a fake clock: no timing in
these tests, only arithmetic."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_tiny_onnx, tiny_metadata

from edgel2.cli import cli
from edgel2.errors import ModelError, OptionError
from edgel2.runtime import Classifier, auto, choices
from edgel2.runtime.auto import open_engine
from edgel2.runtime.engines import Engine
from edgel2.runtime.modelfile import model_files
from edgel2.runtime.probe import (
    DROP_RATIO,
    LATENCY_RUNS,
    MAX_ROUNDS,
    Candidate,
    candidates,
    latency_sample,
    race,
    throughput_sample,
)

# Milliseconds a fake engine takes for a batch of n: fixed + per_image * n. Batch 1: LiteRT
# 1.6, ONNX Runtime 1.9, OpenVINO 2.0; batch 64: OpenVINO's THROUGHPUT streams 1,320 img/s,
# ONNX Runtime 1,092, LiteRT 713. One thread doubles the per-image part.
SPEEDS = {("litert", None): (0.2, 1.4), ("onnxruntime", None): (1.0, 0.9),
          ("openvino", "latency"): (1.2, 0.8), ("openvino", "throughput"): (0.5, 0.75)}


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeEngine(Engine):
    def __init__(self, candidate: Candidate, clock: FakeClock):
        fixed, per_image = SPEEDS[(candidate.engine, candidate.streams or (
            "throughput" if candidate.engine == "openvino" else None))]  # the default streams
        self.cost = (fixed, per_image * (2 if candidate.threads == 1 else 1))
        self.name, self.path, self.clock = candidate.engine, candidate.path, clock
        self.providers = [f"fake {candidate.label}"]
        self.metadata = tiny_metadata()
        self.input_shape, self.input_dtype, self.output_shape = (None, 8, 8, 3), "uint8", (None, 3)

    def run(self, batch: np.ndarray) -> np.ndarray:
        fixed, per_image = self.cost
        self.clock.now += (fixed + per_image * len(batch)) / 1000
        return np.zeros((len(batch), 3), np.float32)


class Opened(list):
    """The candidates opened, in order, and the fake clock they run on."""

    clock: FakeClock


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    """Fake engines on a fake clock, a cache folder of the test's own, and the race on.
    Returns the list of candidates opened, in order."""
    clock, opened = FakeClock(), Opened()

    def open_one(candidate, providers, strict, compute_dtype):
        opened.append(candidate)
        return FakeEngine(candidate, clock)

    monkeypatch.setattr(auto, "_open_one", open_one)
    monkeypatch.setattr(auto, "probe_clock", clock)
    monkeypatch.setattr(auto.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("EDGEL2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEL2_ENGINE_PROBE", "1")
    opened.clock = clock
    return opened


def make_pair(folder: Path, stem: str = "m-int8", **onnx_metadata) -> Path:
    """A folder with ``stem``.onnx (a tiny real model) and ``stem``.tflite (bytes that sniff
    as TFLite: the fake engines never parse them)."""
    make_tiny_onnx(folder / f"{stem}.onnx", {**tiny_metadata(), **onnx_metadata})
    (folder / f"{stem}.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    return folder


def entries(folder: Path) -> list[Path]:
    return sorted((folder / "engine-choices").glob("*.json"))


def test_the_race_ranks_by_median_and_drops_a_contender_far_behind_after_one_round():
    laps = {"a": [3.0, 1.0, 1.0, 1.0], "b": [1.1, 1.1, 1.1, 1.1], "slow": [2.0]}
    taken = {name: iter(values) for name, values in laps.items()}
    clock = FakeClock()

    def sample(name):
        clock.now += 0.01
        return next(taken[name])

    ranked = race(["a", "b", "slow"], sample, label=str, clock=clock)
    # round 1: b 1.1 is best; slow (2.0 > 1.1 * DROP_RATIO) is out, a (3.0) too. b alone: done
    assert DROP_RATIO < 2.0 / 1.1
    assert [(m.contender, m.seconds, m.rounds) for m in ranked] == [
        ("b", 1.1, 1), ("slow", 2.0, 1), ("a", 3.0, 1)]


def test_the_race_runs_rounds_while_the_budget_lasts_and_no_more_than_max_rounds():
    clock = FakeClock()

    def sample(name):  # 0.1 s a sample: two contenders make a round of 0.2 s
        clock.now += 0.1
        return {"a": 1.0, "b": 1.05}[name]

    assert [m.rounds for m in race(["a", "b"], sample, label=str, budget_s=0.7, clock=clock)] \
        == [3, 3]  # after 3 rounds 0.6 s are spent and a fourth would end at 0.8
    assert [m.rounds for m in race(["a", "b"], sample, label=str, budget_s=99, clock=clock)] \
        == [MAX_ROUNDS, MAX_ROUNDS]
    assert race(["a", "b"], sample, label=str, budget_s=0, clock=clock)[0].rounds == 1


def test_the_candidates_are_each_engine_with_the_settings_worth_trying_for_the_workload():
    plan = [("openvino", Path("m.onnx")), ("onnxruntime", Path("m.onnx")),
            ("litert", Path("m.tflite"))]
    assert [c.label for c in candidates(plan, "latency", None, cores=2)] == [
        "openvino m.onnx (LATENCY hint)", "onnxruntime m.onnx", "onnxruntime m.onnx (1 thread)",
        "litert m.tflite", "litert m.tflite (1 thread)"]
    assert [c.label for c in candidates(plan, "throughput", None, cores=2)] == [
        "openvino m.onnx (THROUGHPUT hint)", "onnxruntime m.onnx", "litert m.tflite"]
    # threads asked for are kept; one core has no one-thread variant to try
    assert [c.label for c in candidates(plan, "latency", 3, cores=4)] == [
        "openvino m.onnx (3 threads, LATENCY hint)", "onnxruntime m.onnx (3 threads)",
        "litert m.tflite (3 threads)"]
    assert len(candidates(plan, "latency", None, cores=1)) == 3


def test_auto_takes_the_fastest_for_each_workload_and_says_what_it_measured(fakes, tmp_path):
    pair = make_pair(tmp_path / "pair")
    latency = open_engine(pair, workload="latency")
    assert (latency.name, latency.path.name) == ("litert", "m-int8.tflite")
    assert latency.choice.source == "measured"
    assert [(m.label, round(m.seconds * 1000, 6)) for m in latency.choice.measured] == [
        ("litert m-int8.tflite", 1.6), ("onnxruntime m-int8.onnx", 1.9),  # still racing
        ("openvino m-int8.onnx (LATENCY hint)", 2.0),  # out after round 1 (> 1.2 x 1.6 ms)
        ("onnxruntime m-int8.onnx (1 thread)", 2.8), ("litert m-int8.tflite (1 thread)", 3.0)]
    assert str(latency.choice).startswith(
        "litert m-int8.tflite, batch-1 median 1.60 ms: the fastest of 5 measured on this CPU "
        "(onnxruntime m-int8.onnx 1.90 ms; openvino m-int8.onnx (LATENCY hint) 2.00 ms;")

    throughput = open_engine(pair, workload="throughput", batch_size=64)
    assert (throughput.name, throughput.path.name) == ("openvino", "m-int8.onnx")
    assert [(m.label, round(1 / m.seconds)) for m in throughput.choice.measured] == [
        ("openvino m-int8.onnx (THROUGHPUT hint)", 1320), ("onnxruntime m-int8.onnx", 1092),
        ("litert m-int8.tflite", 713)]
    assert throughput.choice.summary()["measured"][0] == {
        "candidate": "openvino m-int8.onnx (THROUGHPUT hint)", "figure": "1,320 img/s"}


def test_a_sample_is_the_median_of_timed_runs_after_an_untimed_one_or_whole_batches():
    clock = FakeClock()
    durations = iter([50.0] + [1.0] * 4 + [9.0] * 3 + [2.0] * 3)  # the first run is not timed
    assert LATENCY_RUNS == 10

    def run(batch):
        clock.now += next(durations)
    assert latency_sample(run, np.zeros((1, 8, 8, 3), np.uint8), clock) == 2.0

    def run_stream(items):
        for tag, batch in items:
            clock.now += 0.001 * len(batch)  # 1 ms an image
            yield tag, None
    seconds = throughput_sample(run_stream, np.zeros((4, 8, 8, 3), np.uint8), 3, clock)
    assert round(seconds, 9) == 0.001


def test_the_choice_is_remembered_and_a_later_open_measures_nothing(fakes, tmp_path):
    pair, cache = make_pair(tmp_path / "pair"), tmp_path / "cache"
    first = open_engine(pair)
    assert len(entries(cache)) == 1 and len(fakes) == 5
    fakes.clear()
    before = fakes.clock.now
    again = open_engine(pair)
    assert fakes == [Candidate("litert", pair / "m-int8.tflite")]  # only the chosen one opened
    assert fakes.clock.now == before                                 # and nothing was timed
    assert again.choice.source == "cached"
    assert again.choice.measured == first.choice.measured


def test_a_renamed_copy_of_the_model_keeps_its_choice(fakes, tmp_path):
    pair = make_pair(tmp_path / "pair")
    open_engine(pair)
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    for f in pair.iterdir():
        shutil.copy(f, copy / f.name.replace("m-", "renamed-"))
    fakes.clear()
    assert open_engine(copy).choice.source == "cached"


@pytest.mark.parametrize("damage", ["not json", "truncated", "wrong key", "unknown candidate",
                                    "not finite", "not a list"])
def test_a_damaged_or_stale_cache_entry_is_ignored_and_measured_again(fakes, tmp_path, damage):
    pair, cache = make_pair(tmp_path / "pair"), tmp_path / "cache"
    open_engine(pair)
    [entry_file] = entries(cache)
    text = entry_file.read_text()
    entry = json.loads(text)
    if damage == "not json":
        entry_file.write_text("{{{")
    elif damage == "truncated":
        entry_file.write_text(text[:len(text) // 2])
    else:
        if damage == "wrong key":
            entry["key"]["cores"] += 1
        elif damage == "unknown candidate":
            entry["measured"][0][0]["threads"] = 7  # a setting this open does not race
        elif damage == "not finite":
            entry["measured"][0][1] = float("nan")
        else:
            entry["measured"] = {"litert": 0.001}
        entry_file.write_text(json.dumps(entry))
    fakes.clear()
    engine = open_engine(pair)
    assert engine.choice.source == "measured" and len(fakes) == 5
    assert json.loads(entry_file.read_text())["key"] == json.loads(text)["key"]  # rewritten


def test_a_changed_file_or_engine_version_is_measured_again(fakes, tmp_path, monkeypatch):
    pair = make_pair(tmp_path / "pair")
    open_engine(pair)
    make_tiny_onnx(pair / "m-int8.onnx", {**tiny_metadata(), "name": "retrained"})
    fakes.clear()
    assert open_engine(pair).choice.source == "measured"
    assert open_engine(pair).choice.source == "cached"
    versions = choices.engine_versions()
    monkeypatch.setattr(choices, "engine_versions", lambda: {**versions, "openvino": "9999.0"})
    assert open_engine(pair).choice.source == "measured"


def test_the_opt_out_follows_the_fixed_rule_and_writes_nothing(fakes, tmp_path, monkeypatch):
    pair, cache = make_pair(tmp_path / "pair"), tmp_path / "cache"
    before = fakes.clock.now
    engine = open_engine(pair, probe=False)
    assert (engine.name, engine.path.name, engine.choice) == ("openvino", "m-int8.onnx", None)
    monkeypatch.setenv("EDGEL2_ENGINE_PROBE", "0")
    engine = open_engine(pair)
    assert (engine.name, engine.choice) == ("openvino", None)
    assert fakes.clock.now == before and not cache.exists()
    assert [c.engine for c in fakes] == ["openvino", "openvino"]


def test_an_engine_named_is_opened_as_asked_without_a_race(fakes, tmp_path):
    pair = make_pair(tmp_path / "pair")
    engine = open_engine(pair, engine="onnxruntime")
    assert (engine.name, engine.path.name, engine.choice) == ("onnxruntime", "m-int8.onnx", None)
    assert open_engine(pair, engine="litert").path.name == "m-int8.tflite"


def test_a_candidate_that_cannot_open_is_left_out_and_named(fakes, tmp_path, monkeypatch):
    opened_fake = auto._open_one

    def no_openvino(candidate, *args):
        if candidate.engine == "openvino":
            raise ModelError("cannot load m-int8.onnx with OpenVINO: unsupported")
        return opened_fake(candidate, *args)

    monkeypatch.setattr(auto, "_open_one", no_openvino)
    engine = open_engine(make_pair(tmp_path / "pair"), workload="throughput")
    assert engine.name == "onnxruntime"
    assert engine.fallback == ("openvino m-int8.onnx (THROUGHPUT hint): cannot load "
                               "m-int8.onnx with OpenVINO: unsupported")


def test_the_files_of_a_pair_must_classify_the_same_things(fakes, tmp_path, monkeypatch):
    pair = make_pair(tmp_path / "pair")

    class OtherClasses(FakeEngine):
        def __init__(self, candidate, clock):
            super().__init__(candidate, clock)
            if candidate.engine == "litert":
                self.metadata = tiny_metadata(["x", "y", "z"])

    monkeypatch.setattr(auto, "_open_one", lambda c, *a: OtherClasses(c, fakes.clock))
    with pytest.raises(ModelError, match="m-int8.tflite and m-int8.onnx are not one model"):
        open_engine(pair)


def test_the_race_never_allocates_more_than_its_cap_for_a_huge_input(fakes, tmp_path,
                                                                     monkeypatch):
    batches = []

    class Huge(FakeEngine):
        def __init__(self, candidate, clock):
            super().__init__(candidate, clock)
            self.metadata = tiny_metadata(size=4096)
            self.input_shape = (None, 4096, 4096, 3)

        def run(self, batch):
            batches.append(batch.shape)
            return super().run(batch)

    monkeypatch.setattr(auto, "_open_one", lambda c, *a: Huge(c, fakes.clock))
    open_engine(make_pair(tmp_path / "pair"), workload="throughput", batch_size=64)
    assert set(batches) == {(auto.MAX_RACE_BATCH_BYTES // (4096 * 4096 * 3), 4096, 4096, 3)}


def test_a_folder_is_one_model_its_int8_pair_first(tmp_path):
    folder = tmp_path / "export"
    for stem in ("m-fp32", "m-int8", "m-fp16"):
        make_pair(folder, stem)
    (folder / "export_report.json").write_text("{}")
    assert [p.name for p in model_files(folder)] == ["m-int8.onnx", "m-int8.tflite"]
    for f in folder.glob("m-int8.*"):
        f.unlink()
    assert [p.name for p in model_files(folder)] == ["m-fp32.onnx", "m-fp32.tflite"]
    make_pair(folder, "other-int8")
    with pytest.raises(ModelError, match=r"holds several models \(m-fp16, m-fp32, other-int8\)"):
        model_files(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no .onnx or .tflite model in the folder"):
        model_files(tmp_path / "empty")


def test_an_unknown_workload_is_an_option_error(tiny_onnx):
    with pytest.raises(OptionError, match="workload must be one of latency, throughput"):
        Classifier(tiny_onnx, workload="batch")


def test_the_benchmark_refreshes_the_choice_that_auto_then_runs(fakes, tmp_path):
    from edgel2.benchmark import fastest_line, remember_choices

    pair = make_pair(tmp_path / "pair")
    onnx, tflite = str(pair / "m-int8.onnx"), str(pair / "m-int8.tflite")

    def row(fmt, file, p50, b64):
        return {"format": fmt, "precision": "int8", "status": "ok", "file": file,
                "latency_ms": {"p50": p50}, "throughput": {"64": b64}}

    rows = [row("onnx", onnx, 1.5, 700.0), row("tflite", tflite, 1.7, 650.0),
            row("openvino", onnx, 1.6, 780.0), row("keras", None, 9.0, 100.0)]
    auto = remember_choices(rows, [1, 64], None, 3)
    assert auto == {"precision": "int8", "latency": "onnxruntime m-int8.onnx 1.50 ms",
                    "64": "openvino m-int8.onnx (THROUGHPUT hint) 780 img/s"}
    assert fastest_line({"batch_sizes": [64], "rows": rows[:3], "auto": auto}).endswith(
        "; auto here (int8, remembered): batch-1 onnxruntime m-int8.onnx 1.50 ms, "
        "b64 openvino m-int8.onnx (THROUGHPUT hint) 780 img/s")
    before = fakes.clock.now
    latency = open_engine(pair, workload="latency")
    assert (latency.name, latency.choice.source, fakes.clock.now) == (
        "onnxruntime", "edgel2 benchmark", before)
    alone = open_engine(pair / "m-int8.onnx", workload="throughput")  # one file: its own entry
    assert (alone.name, alone.choice.source) == ("openvino", "edgel2 benchmark")


def test_real_engines_race_once_then_the_cached_choice_opens(tmp_path, monkeypatch):
    """The shipped pair with the installed engines: which one wins depends on the CPU; that
    it is one of the candidates, is remembered, and opens again from the cache does not."""
    monkeypatch.setenv("EDGEL2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEL2_ENGINE_PROBE", "1")
    first = Classifier(workload="latency")
    assert first.engine.choice.source == "measured"
    assert first.engine.choice.chosen.startswith(first.engine.name + " resnet18-int8.")
    assert len(entries(tmp_path / "cache")) == 1
    again = Classifier(workload="latency")
    assert (again.engine.name, again.path, again.engine.choice.source) == (
        first.engine.name, first.path, "cached")
    assert repr(again).startswith(f"Classifier({again.path.name} (int8) on {again.engine.name}")
    assert "auto for latency: " in repr(again)


def test_infer_verbose_says_what_auto_chose(tmp_path, monkeypatch, fakes):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image)
    result = CliRunner().invoke(cli, ["infer", str(image), "--model",
                                      str(make_pair(tmp_path / "pair")), "-v"])
    assert result.exit_code == 0, result.output
    assert ("edgel2: auto for throughput: openvino m-int8.onnx (THROUGHPUT hint), batch-64 "
            "throughput 1,320 img/s: the fastest of 3 measured on this CPU") in result.output
