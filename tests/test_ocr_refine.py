"""The refiner of look-alike characters: crop geometry, candidate search, the decision rule, and `ocr refine`
through the real CLI on the shipped default model."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.conftest import run_cli

from captchalab.runtime.ocr_refine import Refiner, RefineSpec, candidates, char_runs


def _log_probs(path: list[int], classes: int, sure: float = 0.9) -> np.ndarray:
    """(1, T, classes) log-probs whose greedy path is ``path``."""
    p = np.full((len(path), classes), (1 - sure) / (classes - 1))
    p[np.arange(len(path)), path] = sure
    return np.log(p)[None]


def test_char_runs_one_per_emitted_character():
    assert char_runs(np.array([0, 3, 3, 0, 3, 5, 5, 0])) == [(3, 1, 3), (3, 4, 5), (5, 5, 7)]
    assert char_runs(np.array([0, 0])) == []


def test_candidates_follow_the_output_charset():
    chars = "0AOo"  # classes 1..4
    found = candidates(["0AO"], _log_probs([1, 0, 2, 3, 3], 5), chars, "0Oo")
    assert [(c.position, c.start, c.end, c.options) for c in found] == [(0, 0, 1, "0Oo"), (2, 3, 5, "0Oo")]
    # case-folded outputs: 'O' counts for 'o'; only one of the group left: nothing to decide
    assert candidates(["o"], _log_probs([2], 3), "0o", "0Oo")[0].options == "0o"
    assert candidates(["0"], _log_probs([1], 3), "0a", "0Oo") == []
    # a reading that does not line up with the path (fixed-length decoder) is left alone
    assert candidates(["00"], _log_probs([1], 2), "0O", "0O") == []


def test_crop_is_centred_and_repeats_edges():
    spec = RefineSpec("0O", height=4, width=6)
    source = np.tile(np.arange(20, dtype=np.uint8), (4, 1))  # column index as value
    assert spec.crop(source, 0.5)[0].tolist() == [7, 8, 9, 10, 11, 12]
    assert spec.crop(source, 0.0)[0].tolist() == [0, 0, 0, 0, 1, 2]
    assert spec.crop(source, 1.0).shape == (4, 6)
    assert spec.source(Image.new("RGB", (80, 32))).shape == (4, 10)
    # moved for the second look: dx columns right, dy rows down, edges repeated
    assert spec.crop(source, 0.5, dx=2)[0].tolist() == [9, 10, 11, 12, 13, 14]
    assert spec.crop(source, 0.0, dx=-2)[0].tolist() == [0, 0, 0, 0, 0, 0]
    rows = np.repeat(np.arange(4, dtype=np.uint8)[:, None], 20, 1)  # row index as value
    assert spec.crop(rows, 0.5, dy=1)[:, 0].tolist() == [1, 2, 3, 3]
    assert spec.crop(rows, 0.5, dy=-1)[:, 0].tolist() == [0, 0, 1, 2]


class _ScriptedRefiner(Refiner):
    """A refiner whose classifier answers from a script: probabilities for the centre crops' call, then for the
    shifted crops' call; it records how many crops each call had."""

    def __init__(self, spec: RefineSpec, answers: list[list[list[float]]]):
        self.spec, self.answers, self.calls = spec, answers, []

    def log_probs(self, crops: np.ndarray) -> np.ndarray:
        self.calls.append(len(crops))
        return np.log(np.asarray(self.answers[len(self.calls) - 1][: len(crops)]))


def test_second_look_averages_shifted_crops_where_the_answer_is_close():
    chars, image = "0AO", [Image.new("RGB", (160, 60), (200, 200, 200))]
    log_probs = _log_probs([1, 0, 2, 0, 3], 4, sure=0.8)  # "0AO": the CTC model is not used (weight 0)
    shifts = ((-2, 0), (2, 0))
    spec = RefineSpec("0O", main_weight=0.0, shifts=shifts, shift_margin=1.0)
    # centre crops: the first 0 is clearly 0 (margin 2.2), the O is 'O' by a hair; both shifted crops say '0'
    look = _ScriptedRefiner(spec, [[[0.9, 0.1], [0.45, 0.55]], [[0.9, 0.1], [0.9, 0.1]]])
    assert look.refine(["0AO"], log_probs, chars, image) == ["0A0"]
    assert look.calls == [2, 2]  # one more call, with the unsure character's two shifted crops only
    sure = _ScriptedRefiner(spec, [[[0.9, 0.1], [0.1, 0.9]]])
    assert sure.refine(["0AO"], log_probs, chars, image) == ["0AO"] and sure.calls == [2]
    plain = _ScriptedRefiner(RefineSpec("0O", main_weight=0.0), [[[0.9, 0.1], [0.45, 0.55]]])
    assert plain.refine(["0AO"], log_probs, chars, image) == ["0AO"] and plain.calls == [2]
    # written to a manifest and read back; a manifest from before the second look has none
    assert RefineSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert RefineSpec.from_dict({"chars": "0O"}).shifts == ()


def test_refiner_decides_with_the_cnn_and_the_ctc_score(tmp_path: Path):
    torch = pytest.importorskip("torch")
    from captchalab.models.ocr_refiner import RefinerNet

    net = RefinerNet(3).eval()
    with torch.no_grad():
        for p in net.classifier.parameters():
            p.zero_()
        net.classifier.bias.copy_(torch.tensor([0.0, 3.0, 0.0]))  # the CNN says 'O' (e^3 against 1 and 1)
    path = tmp_path / "refiner.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 1, 60, 48), str(path), input_names=["crop"], output_names=["logits"],
                          dynamic_axes={"crop": {0: "b"}}, dynamo=False)  # fmt: skip
    chars, sources = "0AO", [Image.new("RGB", (160, 60), (200, 200, 200))]
    log_probs = _log_probs([1, 0, 2, 0, 1], 4, sure=0.8)  # "0A0": the CTC model's 0 beats its O by e^2.5
    cnn_only = Refiner(path, RefineSpec("0Oo", main_weight=0.0), 1, None)
    assert cnn_only.refine(["0A0"], log_probs, chars, sources) == ["OAO"]
    trusting_ctc = Refiner(path, RefineSpec("0Oo", main_weight=2.0), 1, None)
    assert trusting_ctc.refine(["0A0"], log_probs, chars, sources) == ["0A0"]
    assert cnn_only.refine(["A"], _log_probs([2], 4), chars, sources) == ["A"]  # nothing of the group: untouched
    # a weight of its own for the classes allowed here (0 and O: the reading's alphabet has no 'o'), else main_weight
    own = Refiner(path, RefineSpec("0Oo", main_weight=2.0, main_weights={"0O": 0.0, "0o": 2.0}), 1, None)
    assert own.refine(["0A0"], log_probs, chars, sources) == ["OAO"]
    other = Refiner(path, RefineSpec("0Oo", main_weight=2.0, main_weights={"0Oo": 0.0}), 1, None)
    assert other.refine(["0A0"], log_probs, chars, sources) == ["0A0"]


@pytest.fixture(scope="module")
def look_alike_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("refine-data")
    run_cli("ocr", "generate", str(out), "--count", "240", "--charset", "upper+digits", "--favour", "0O:0.5",
            "--seed", "5")  # fmt: skip
    return out


def test_refine_cli_writes_a_bundle_the_reader_uses(look_alike_data: Path, tmp_path: Path):
    from captchalab.ocr import OcrReader

    out = tmp_path / "refined"
    done = run_cli("ocr", "refine", "default", str(look_alike_data), "--out", str(out), "--epochs", "1",
                   "--chars", "0O", "--channels", "8,16,16,24")  # fmt: skip
    assert "held-out crops" in done.stdout_text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["refiner"] == "refiner.onnx" and (out / "refiner.onnx").is_file()
    refiner = manifest["refiner"]
    assert refiner["chars"] == "0O" and refiner["parity"]["mismatches"] == 0
    assert refiner["training"]["options"]["channels"] == [8, 16, 16, 24]
    # the default's int8 refiner keeps its fp32 original beside it; a new refiner replaces both
    assert (Path(OcrReader("default").bundle.path) / "refiner.fp32.onnx").is_file()
    assert not (out / "refiner.fp32.onnx").exists() and "refiner.fp32.onnx" not in manifest["sha256"]
    assert "quantization" not in refiner
    assert refiner["main_weight"] in (0.0, 0.25, 0.5, 1.0, 2.0)
    assert refiner["shifts"] == [] and refiner["shift_margin"] == 0  # the second look is off unless asked for
    assert 0.5 < refiner["training"]["valid_accuracy"]["combined_second_look"] <= 1.0
    crops = refiner["training"]["crops"]
    assert crops["train"] > 100 and crops["per_class"]["0"] > 0 and crops["per_class"]["O"] > 0

    images = sorted(look_alike_data.glob("*.png"))[:40]
    # the shipped default has a refiner of its own (0 / O / o): compared here with it switched off
    refined, plain, default = OcrReader(out), OcrReader(out, refine=False), OcrReader("default", refine=False)
    assert refined.refiner is not None and plain.refiner is None
    assert [r.text for r in plain.read_batch(images)] == [r.text for r in default.read_batch(images)]
    for a, b in zip(refined.read_batch(images), default.read_batch(images)):  # only 0 / O may change
        assert len(a.text) == len(b.text)
        assert all(x == y or {x, y} <= {"0", "O"} for x, y in zip(a.text, b.text))
    predicted = run_cli("ocr", "predict", "--model", str(out), "--json", str(images[0]))
    assert json.loads(predicted.stdout_text)["text"] == refined.read(images[0]).text

    reports = {}
    for name, model, flags in (("on", str(out), []), ("off", str(out), ["--no-refine"]),
                               ("default", "default", ["--no-refine"])):  # fmt: skip
        run_cli("ocr", "eval", model, str(look_alike_data), "--out", str(tmp_path / f"{name}.json"), *flags)
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["on"]["refiner"] and not reports["off"]["refiner"]
    assert reports["off"]["exact_accuracy"] == reports["default"]["exact_accuracy"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--chars", "0"], "at least two characters"),
        (["--chars", "0é"], "cannot output 'é'"),
        (["--channels", "8,8,8"], "four widths"),
        (["--channels", "8,x,8,8"], "four widths"),
        (["--main-weight", "-1"], "the weight must be a number >= 0"),
        (["--main-weight", "nan"], "the weight must be a number >= 0"),
    ],
)
def test_refine_bad_options_one_line(args: list[str], message: str, look_alike_data: Path, tmp_path: Path):
    done = run_cli("ocr", "refine", "default", str(look_alike_data), "--out", str(tmp_path / "b"), *args,
                   check=False)  # fmt: skip
    assert done.returncode == 2 and message in done.stderr_text and "Traceback" not in done.stderr_text


def test_refine_without_look_alikes_says_so(tmp_path: Path):
    data = tmp_path / "abc"
    run_cli("ocr", "generate", str(data), "--count", "20", "--charset", "ABC", "--seed", "1")
    done = run_cli("ocr", "refine", "default", str(data), "--out", str(tmp_path / "b"), check=False)
    assert done.returncode == 2 and "too few look-alike characters" in done.stderr_text


def test_favour_draws_the_group_more_often_and_is_seeded():
    from captchalab.data.generate import GenerateConfig, iter_samples

    config = GenerateConfig("ABCDEFGHIJ0O", 4, 4, seed=3, favour="0Ox", favour_rate=0.6)
    labels = [t for t, _ in iter_samples(config, 200)]
    assert labels == [t for t, _ in iter_samples(config, 200)]
    share = sum(c in "0O" for t in labels for c in t) / 800
    assert 0.55 < share < 0.8  # 0.6 + 0.4 x 2/12 expected; 2/12 without favour
    plain = [t for t, _ in iter_samples(GenerateConfig("ABCDEFGHIJ0O", 4, 4, seed=3), 200)]
    assert sum(c in "0O" for t in plain for c in t) / 800 < 0.25


# ------------------------------------------------------------------------------------------------ interrupted runs
def _tiny_crops(n: int = 192):
    from captchalab.training.ocr_refine import Crops

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    images = (rng.random((n, 16, 12)) * 80 + labels[:, None, None] * 120).astype(np.uint8)  # learnable: brightness
    return Crops(images, labels.astype(np.int64), np.zeros((n, 2), np.float32))


def test_refiner_resumed_after_an_interruption_ends_as_if_never_stopped(tmp_path: Path, monkeypatch):
    torch = pytest.importorskip("torch")
    from captchalab.training import ocr_refine as training

    crops, spec = _tiny_crops(), RefineSpec("0O", height=16, width=12)
    opts = training.RefineOptions(chars="0O", epochs=3, batch_size=32, channels=(4, 4, 4, 4), device="cpu")
    train, valid = training.split_crops(crops, 0.2, 0)
    straight, _, report = training.train_refiner(crops, spec, opts, train, valid)

    state, saves = tmp_path / "state.pt", []
    real_save = training.save_torch

    def save_then_die(obj, path):  # noqa: ANN001, ANN202 - the process is killed right after epoch 2 is saved
        real_save(obj, path)
        saves.append(obj["epoch"])
        if obj["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_torch", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        training.train_refiner(crops, spec, opts, train, valid, state_file=state)
    monkeypatch.setattr(training, "save_torch", real_save)
    resumed, _, resumed_report = training.train_refiner(crops, spec, opts, train, valid, state_file=state)
    assert saves == [1, 2]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["valid_accuracy"] for h in resumed_report["history"]] == [h["valid_accuracy"] for h in report["history"]]
    # resumed once more after the last epoch (e.g. the export failed): the same model, no epoch run again
    again, _, again_report = training.train_refiner(crops, spec, opts, train, valid, state_file=state)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), resumed.state_dict().values()))
    assert again_report["valid_accuracy"] == resumed_report["valid_accuracy"]


def test_refine_cli_resumes_after_kill_9(look_alike_data: Path, tmp_path: Path):
    import signal
    import subprocess
    import time

    from tests.conftest import CLI

    out = tmp_path / "refined"
    work = tmp_path / "refined.refining"
    args = ["ocr", "refine", "default", str(look_alike_data), "--out", str(out), "--epochs", "40", "--chars", "0O",
            "--channels", "4,4,4,4", "--batch-size", "64"]  # fmt: skip
    process = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (work / "state.pt").exists():
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (work / "state.pt").exists() and not out.exists(), "the run ended before it could be killed"

    again = run_cli(*args, check=False)  # the same command without --resume: refused, nothing lost
    assert again.returncode == 2 and "add --resume to continue it" in again.stderr_text
    changed = run_cli(*args[:-2], "--batch-size", "32", "--resume", check=False)
    assert changed.returncode == 2 and "differs in --batch-size" in changed.stderr_text
    done = run_cli(*args, "--resume")
    assert "resuming the refiner after epoch" in done.stderr_text
    history = json.loads((out / "manifest.json").read_text())["refiner"]["training"]["history"]
    assert [h["epoch"] for h in history] == list(range(40)) and not work.exists()


def test_refine_resume_with_nothing_to_resume(look_alike_data: Path, tmp_path: Path):
    done = run_cli("ocr", "refine", "default", str(look_alike_data), "--out", str(tmp_path / "b"), "--resume",
                   check=False)  # fmt: skip
    assert done.returncode == 2 and "nothing to resume" in done.stderr_text


def test_held_out_second_look_averages_the_shifted_crops():
    torch = pytest.importorskip("torch")
    from captchalab.models.ocr_refiner import RefinerNet
    from captchalab.training.ocr_refine import predict_log_probs, second_look

    torch.manual_seed(0)
    net, device = RefinerNet(2, (8, 8, 8, 8)).eval(), torch.device("cpu")
    spec = RefineSpec("0O", shifts=((0, 1),), shift_margin=1.0)
    images = np.random.default_rng(0).integers(0, 256, (2, 60, 48), dtype=np.uint8)
    cnn = np.log(np.array([[0.5, 0.5], [0.99, 0.01]]))  # the first is unsure, the second is not
    main = np.zeros((2, 2), dtype=np.float32)
    looked = second_look(net, spec, images, cnn, main, np.zeros((2, 1)), device)
    moved = np.concatenate([images[:1, 1:], images[:1, -1:]], 1)  # one row down, the last row repeated
    expected = np.log((0.5 + np.exp(predict_log_probs(net, spec, moved, device)[0])) / 2)
    assert np.allclose(looked[0], expected, atol=1e-5) and np.array_equal(looked[1], cnn[1])
    assert second_look(net, RefineSpec("0O"), images, cnn, main, np.zeros((2, 1)), device) is cnn


def test_main_weight_ties_lean_on_the_ctc_model():
    from captchalab.training.ocr_refine import choose_main_weight

    # the default refiner's held-out accuracies (9 epochs): 0.0 is 5 crops in 32,773 ahead of 0.25, a tie
    measured = {0.0: 0.94981, 0.25: 0.94965, 0.5: 0.94578, 1.0: 0.93540, 2.0: 0.92204}
    assert choose_main_weight(measured) == 0.25
    assert choose_main_weight({0.0: 0.95, 0.25: 0.94, 0.5: 0.93}) == 0.0
    assert choose_main_weight({0.0: 0.90, 0.25: 0.90, 0.5: 0.90}) == 0.5


def test_a_given_main_weight_is_kept_and_said_so():
    torch = pytest.importorskip("torch")
    from captchalab.training.ocr_refine import Crops, RefineOptions, split_crops, train_refiner

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    crops = Crops(rng.integers(0, 256, (300, 60, 48), dtype=np.uint8), rng.integers(0, 3, 300),
                  rng.normal(size=(300, 3)).astype(np.float32))  # fmt: skip
    train, valid = split_crops(crops, 0.1, 0)
    for given, source in ((None, "held-out crops, per alphabet"), (0.7, "--main-weight")):
        opts = RefineOptions(epochs=1, batch_size=64, channels=(8, 8, 8, 8), device="cpu", main_weight=given)
        _, spec, report = train_refiner(crops, RefineSpec("0Oo"), opts, train, valid)
        assert report["main_weight_from"] == source
        assert spec.main_weight == (0.7 if given else choose_from(report["accuracy_by_main_weight"]))
        assert spec.main_weights == {}  # 30 held-out crops: too few for a weight per alphabet


def test_each_alphabet_gets_the_weight_best_for_it():
    from captchalab.training.ocr_refine import MIN_ALPHABET_CROPS, allowed_classes, weights_by_alphabet

    n = MIN_ALPHABET_CROPS
    rows = np.arange(3 * n)
    labels = np.where(rows < 2 * n, rows % 2, 2 * (rows % 2))  # 2n crops of '0' / 'O', then n of '0' / 'o'
    other = np.where(rows < 2 * n, 1 - labels, 2 - labels)  # the other class allowed there
    wrong = rows % 5 == 0  # the CNN prefers the other class for every fifth crop
    cnn = np.full((3 * n, 3), np.log(0.2))
    cnn[rows, np.where(wrong, other, labels)] = np.log(0.6)
    main = np.full((3 * n, 3), -np.inf, dtype=np.float32)
    main[rows, labels], main[rows, other] = 0.0, 0.0
    main[rows[: 2 * n], other[: 2 * n]] = 5.0  # for 0 / O the CTC model is always wrong, for 0 / o always right
    main[rows[2 * n :], labels[2 * n :]] = 5.0
    assert allowed_classes(main[[0, -1]], "0Oo").tolist() == ["0O", "0o"]
    found = weights_by_alphabet(cnn, main, labels, "0Oo")
    assert found["0O"]["crops"] == 2 * n and found["0o"]["crops"] == n
    assert found["0O"]["accuracy_by_main_weight"][0.0] == pytest.approx(0.8)
    assert found["0O"]["accuracy_by_main_weight"][1.0] == 0.0 and found["0O"]["chosen"] == 0.0
    assert found["0o"]["accuracy_by_main_weight"][1.0] == 1.0 and found["0o"]["chosen"] == 2.0  # ties: the largest
    assert weights_by_alphabet(cnn[:10], main[:10], labels[:10], "0Oo") == {}  # too few crops for a weight


def choose_from(by_weight: dict[str, float]) -> float:
    from captchalab.training.ocr_refine import choose_main_weight

    return choose_main_weight({float(w): a for w, a in by_weight.items()})


def test_refine_can_start_from_a_bundles_refiner(look_alike_data: Path, tmp_path: Path):
    out = tmp_path / "more"
    run_cli("ocr", "refine", "default", str(look_alike_data), "--out", str(out), "--epochs", "1", "--lr", "2e-4",
            "--init", "default", "--main-weight", "0.5", "--main-weight", "O0=0")  # fmt: skip
    refiner = json.loads((out / "manifest.json").read_text())["refiner"]
    assert refiner["main_weight"] == 0.5 and refiner["main_weights"] == {"0O": 0.0}  # in the order of --chars
    training = refiner["training"]
    assert training["main_weight_from"] == "--main-weight for 0O; --main-weight for the rest"
    init = training["initialised_from"]
    assert init["bundle"] == "default" and init["file"] == "refiner.fp32.onnx" and "data" in init
    assert init["valid_accuracy_before"] > 0.8  # the shipped refiner already knows these crops
    assert training["options"]["init"] == "default"
    # what cannot start from it is said before any crop is collected
    for flags, said in ((["--chars", "0O"], "give the same --chars"), (["--channels", "8,16,16,24"],
                        "give --channels 32,64,96,128"), (["--main-weight", "0X=1"], "name two or more of the"),
                        (["--main-weight", "0O=-1"], "must be a number >= 0")):  # fmt: skip
        done = run_cli("ocr", "refine", "default", str(tmp_path / "missing"), "--out", str(tmp_path / "x"),
                       "--init", "default", *flags, check=False)  # fmt: skip
        assert done.returncode == 2 and said in done.stderr_text


def test_a_started_refiner_is_the_bundles_and_its_batch_norms_fit_the_new_crops():
    torch = pytest.importorskip("torch")
    from captchalab.models.ocr_refiner import RefinerNet
    from captchalab.training.refiner_init import start_from

    spec = RefineSpec("0Oo")
    crops = np.random.default_rng(0).integers(0, 256, (512, 60, 48), dtype=np.uint8)
    net = RefinerNet(3)
    start_from(net, "default", spec, crops, torch.device("cpu"))  # raises if it differs from the ONNX refiner
    x = torch.from_numpy(spec.normalize(crops[:256]))
    with torch.no_grad():
        net.eval()
        settled = net.features(x)
        net.train()  # batch statistics: about the running ones, so training starts where the bundle left off
        batch = net.features(x)
    assert float((batch - settled).abs().max() / settled.abs().max()) < 0.05  # 1.2 without the calibration
