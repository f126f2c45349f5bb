"""tools/benchmark.py: scenes with person boxes, interleaved timing of several systems, the
systems comparison end to end at a tiny size."""

import json

import numpy as np
import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("tools/benchmark.py")


def test_scene_boxes_one_per_person_per_frame_scaled_to_the_frame(bench):
    small = bench.render_scene(3, 2, (64, 96), seed=4)
    square = bench.render_scene(3, 2, (96, 96), seed=4)
    assert len(small.frames) == len(small.boxes) == 2
    assert small.frames[0].shape == (64, 96, 3) and small.frames[0].dtype == np.uint8
    for boxes in small.boxes:
        assert boxes.shape == (3, 4)
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (
            (boxes >= 0).all() and (boxes[:, [0, 2]] <= 96).all() and (boxes[:, [1, 3]] <= 64).all()
        )
    # The same scene rendered square (it is drawn at the longer side, then resized): same x,
    # y scaled by 64 / 96.
    np.testing.assert_allclose(
        small.boxes[1], square.boxes[1] * [1, 64 / 96, 1, 64 / 96], rtol=1e-5
    )
    # The frames are render_video's.
    assert np.array_equal(bench.render_video(3, 2, (64, 96), seed=4)[1], small.frames[1])
    # A person's box holds drawn pixels (the scene differs from its background there).
    empty = bench.render_scene(0, 1, (64, 96), seed=4).frames[0]
    x0, y0, x1, y1 = small.boxes[0][0].astype(int)
    assert (small.frames[0][y0:y1, x0:x1] != empty[y0:y1, x0:x1]).any()


def test_time_systems_interleaves_and_warms_up_every_pair(bench):
    calls = []

    def system(name):
        def run(scene):
            calls.append((name, len(scene.frames), scene.boxes[0].shape[0]))
            return len(scene.frames)

        return bench.System(name, run)

    scenes = [bench.Scene([np.zeros((8, 8, 3), np.uint8)] * 4, [np.zeros((p, 4))] * 4)
              for p in (1, 2)]  # fmt: skip
    wall, cpu = bench.time_systems([system("a"), system("b"), system("c")], scenes, repeats=2)
    assert wall.shape == cpu.shape == (2, 2, 3) and (wall >= 0).all() and (cpu >= 0).all()
    warm, timed = calls[:6], calls[6:]
    assert all(n == 1 for _, n, _ in warm)  # warm-up on one frame of each scene
    assert sorted((s, p) for s, _, p in warm) == sorted((s, p) for s in "abc" for p in (1, 2))
    assert all(n == 4 for _, n, _ in timed) and len(timed) == 12
    # Rounds start at a different scene and a different system.
    assert timed[0][::2] == ("a", 1) and timed[6][::2] == ("b", 2)


def test_vepe_is_found_beside_pave_or_skipped_with_a_message(bench, tmp_path, capsys):
    assert bench.default_vepe_config("configs/quick/pave_synthetic.yaml") == str(
        bench.Path("configs/quick/vepe_synthetic.yaml")
    )
    assert bench.default_vepe_config("configs/pave_r50.yaml") == "configs/vepe_r50.yaml"
    assert bench.default_vepe_config("configs/petr_r50.yaml") is None

    pave = tmp_path / "pave_x.yaml"
    pave.write_text("")
    args = bench.get_parser().parse_args([])
    assert bench.end_to_end_configs(args, str(pave)) == [("PAVE-Net (streaming)", str(pave))]
    message = capsys.readouterr().out
    assert "VEPE skipped" in message and "vepe_x.yaml" in message

    (tmp_path / "vepe_x.yaml").write_text("")
    assert [n for n, _ in bench.end_to_end_configs(args, str(pave))] == [
        "PAVE-Net (streaming)",
        "VEPE (streaming)",
    ]
    args = bench.get_parser().parse_args(["--compare-config-files", str(tmp_path / "nope.yaml")])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        bench.end_to_end_configs(args, str(pave))


def test_comparison_end_to_end_tiny(bench, tmp_path, capsys):
    argv = [
        "--config-file", "configs/quick/pave_synthetic.yaml", "--no-flops", "--no-windowed",
        "--threads", "1", "--latency-size", "64",
        "--persons", "1", "2", "--peer-depth", "18", "--peer-crop", "64x64",
        "--compare-frames", "2", "--compare-scenes", "1", "--compare-repeats", "1",
        "--output", str(tmp_path),
    ]  # fmt: skip
    results = bench.main(argv)
    systems = results["systems"]
    assert systems["systems"][0].startswith("two-stage")
    assert "PAVE-Net (streaming)" in systems["systems"]
    assert [r["persons"] for r in systems["rows"]] == [1, 2]
    for row in systems["rows"]:
        assert all(v > 0 for v in row["median_ms"].values())
        assert all(v > 0 for v in row["cpu_median_ms"].values())
    assert (tmp_path / "latency_vs_persons.png").stat().st_size > 0
    assert json.loads((tmp_path / "benchmark.json").read_text())["systems"]["rows"]
    out = capsys.readouterr().out
    assert "ratio two-stage / PAVE-Net (streaming)" in out
    assert "x(2/1)" in out
    assert "process CPU time" in out
