"""Checkpoints: the clip layout the weights assume, writes that survive kill -9, ``--resume``
that takes the newest checkpoint that loads, clear errors for broken files (issue 13, items 4,
8, 9)."""

import vpose_d2  # noqa: F401  isort: skip  (compat must run before detectron2)

import io
import json
import logging
import os
import select
import signal
import time
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from test_engine import ToyTrainer, toy_cfg
from torch import nn

from vpose_d2.config import add_vpose_config
from vpose_d2.engine import StrictShapeCheckpointer, VPoseTrainer

REPO = Path(__file__).resolve().parents[1]
QUICK_PAVE = REPO / "configs" / "quick" / "pave_synthetic.yaml"
QUICK_PETR = REPO / "configs" / "quick" / "petr_synthetic.yaml"


# ------------------------------------------------------------------------------------------
# 4. The clip layout
# ------------------------------------------------------------------------------------------
class NoDataTrainer(VPoseTrainer):
    """A VPoseTrainer whose loader is never read: these tests only save and load."""

    @classmethod
    def build_train_loader(cls, cfg):
        return iter(())


def _quick_cfg(config: Path, output_dir: Path, offsets=(-1, 1), weights: str = ""):
    cfg = get_cfg()
    add_vpose_config(cfg)
    cfg.merge_from_file(str(config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.CLIP.OFFSETS = list(offsets)
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.MODEL.WEIGHTS = weights
    return cfg


@pytest.fixture(scope="module")
def pave_checkpoint(tmp_path_factory):
    """A PAVE-Net checkpoint (T = 3, offsets [-1, 1]) saved by the trainer's checkpointer."""
    out = tmp_path_factory.mktemp("pave")
    trainer = NoDataTrainer(_quick_cfg(QUICK_PAVE, out))
    trainer.checkpointer.save("model_final")
    return out / "model_final.pth"


@pytest.mark.parametrize("offsets", [(-2, -1), (1, 2), (-2, 2)])
def test_weights_of_another_clip_layout_are_refused(pave_checkpoint, tmp_path, offsets):
    """Same frame count, so every tensor has the same shape; the layout differs."""
    cfg = _quick_cfg(QUICK_PAVE, tmp_path, offsets, str(pave_checkpoint))
    trainer = NoDataTrainer(cfg)
    with pytest.raises(ValueError) as err:
        trainer.resume_or_load(resume=False)
    msg = str(err.value)
    assert str(pave_checkpoint) in msg and "INPUT.CLIP.OFFSETS" in msg
    assert "[-1, 1]" in msg and str(list(offsets)) in msg
    # The checkpointer the predictor and --eval-only use refuses it as well.
    with pytest.raises(ValueError, match="INPUT.CLIP.OFFSETS"):
        StrictShapeCheckpointer(trainer.model, cfg=cfg).load(str(pave_checkpoint))


def test_weights_of_the_same_layout_load_and_an_override_exists(pave_checkpoint, tmp_path):
    cfg = _quick_cfg(QUICK_PAVE, tmp_path, (-1, 1), str(pave_checkpoint))
    model = build_model(cfg)
    StrictShapeCheckpointer(model, cfg=cfg).load(str(pave_checkpoint))
    saved = torch.load(pave_checkpoint, weights_only=False)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())

    cfg = _quick_cfg(QUICK_PAVE, tmp_path, (-2, -1), str(pave_checkpoint))
    cfg.MODEL.WEIGHTS_CHECK_LAYOUT = False
    model = build_model(cfg)
    StrictShapeCheckpointer(model, cfg=cfg, check_layout=False).load(str(pave_checkpoint))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_weights_of_another_meta_architecture_are_refused(pave_checkpoint, tmp_path):
    cfg = _quick_cfg(QUICK_PETR, tmp_path, weights=str(pave_checkpoint))
    model = build_model(cfg)
    with pytest.raises(ValueError, match=r"MODEL.META_ARCHITECTURE.*PAVENet.*ImagePoseTransformer"):
        StrictShapeCheckpointer(model, cfg=cfg).load(str(pave_checkpoint))


def test_checkpoint_without_a_layout_record_loads_with_one_warning(tmp_path, caplog):
    """Checkpoints saved before the record existed still load."""
    cfg = _quick_cfg(QUICK_PAVE, tmp_path)
    model = build_model(cfg)
    old = tmp_path / "old.pth"
    torch.save({"model": model.state_dict(), "iteration": 9}, old)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            StrictShapeCheckpointer(model, cfg=cfg).load(str(old))
    warned = [r for r in caplog.records if "records no clip layout" in r.getMessage()]
    assert len(warned) == 1 and str(old) in warned[0].getMessage()


# ------------------------------------------------------------------------------------------
# 8. Atomic writes: kill -9 in the middle of a save
# ------------------------------------------------------------------------------------------
def _save_then_hang_in_the_second_save(out: Path, ready_fd: int) -> None:
    """In a forked child: save one checkpoint, then start a second save that writes half of
    its bytes, says so on ``ready_fd`` and hangs, to be killed there."""
    torch.manual_seed(0)
    checkpointer = StrictShapeCheckpointer(nn.Linear(256, 256), str(out))
    checkpointer.save("model_0000004", iteration=4)
    real_save = torch.save

    def half_then_hang(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.write(ready_fd, b"H")
        time.sleep(120)

    torch.save = half_then_hang
    checkpointer.save("model_0000009", iteration=9)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to kill a process mid-save")
def test_kill_during_save_leaves_the_last_checkpoint_intact(tmp_path):
    """A real SIGKILL of a process in the middle of writing a checkpoint (a forked child, so
    that it needs no second interpreter start)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_fd)
            _save_then_hang_in_the_second_save(tmp_path, write_fd)
        finally:
            os._exit(1)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], 120)
        assert ready and os.read(read_fd, 1) == b"H", "the child never reached the second save"
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(read_fd)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000004.pth"
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000004.pth"]

    torch.manual_seed(0)
    expected = nn.Linear(256, 256).weight.detach().clone()
    model = nn.Linear(256, 256)
    checkpointer = StrictShapeCheckpointer(model, str(tmp_path))
    extra = checkpointer.resume_or_load("", resume=True)
    assert extra["iteration"] == 4 and torch.equal(model.weight, expected)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp file left"


# ------------------------------------------------------------------------------------------
# 8, 9. --resume picks the newest checkpoint that loads; broken files are named
# ------------------------------------------------------------------------------------------
def _train_toy(out: Path):
    cfg = toy_cfg(out, MAX_ITER=6, CHECKPOINT_PERIOD=2)
    trainer = ToyTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg


def test_resume_skips_broken_checkpoints_and_says_why(tmp_path, caplog):
    cfg = _train_toy(tmp_path)
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    good = torch.load(tmp_path / "model_0000003.pth", weights_only=False)
    final = tmp_path / "model_final.pth"
    final.write_bytes(final.read_bytes()[:1000])  # truncated
    (tmp_path / "model_0000005.pth").write_bytes(b"")  # 0 bytes
    resumed = ToyTrainer(cfg.clone())
    with caplog.at_level(logging.WARNING):
        resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, good["model"][name]), name
    text = caplog.text
    assert "model_final.pth" in text and "truncated" in text
    assert "model_0000005.pth" in text and "empty" in text
    assert "model_0000003.pth" in text


@pytest.mark.parametrize("content", ["", "model_0000042.pth"])
def test_resume_with_an_empty_or_stale_last_checkpoint(tmp_path, caplog, content):
    cfg = _train_toy(tmp_path)
    (tmp_path / "last_checkpoint").write_text(content)
    resumed = ToyTrainer(cfg.clone())
    with caplog.at_level(logging.WARNING):
        resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 6  # model_final.pth, the newest, holds iteration 5
    assert str(tmp_path / "last_checkpoint") in caplog.text
    assert ("is empty" if not content else "model_0000042.pth, which does not exist") in caplog.text


def test_resume_takes_a_checkpoint_written_after_last_checkpoint(tmp_path, caplog):
    """A kill between renaming a new checkpoint into place and updating last_checkpoint: the
    newer complete checkpoint wins. A last_checkpoint written after every checkpoint (a user
    choosing an older one) is obeyed."""
    cfg = _train_toy(tmp_path)
    last = tmp_path / "last_checkpoint"
    last.write_text("model_0000003.pth")
    resumed = ToyTrainer(cfg.clone())
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4  # obeyed

    tag_time = last.stat().st_mtime_ns
    for name in ("model_0000005.pth", "model_final.pth"):
        os.utime(tmp_path / name, ns=(tag_time + 10**9, tag_time + 10**9))
    (tmp_path / "model_final.pth").unlink()  # the kill hit before the last save
    resumed = ToyTrainer(cfg.clone())
    with caplog.at_level(logging.WARNING):
        resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 6
    assert "model_0000005.pth was written after it" in caplog.text


def test_resume_fails_naming_every_file_when_none_loads(tmp_path):
    cfg = _train_toy(tmp_path)
    for p in tmp_path.glob("*.pth"):
        p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(OSError) as err:
        ToyTrainer(cfg.clone()).resume_or_load(resume=True)
    for name in ("model_final.pth", "model_0000005.pth", "model_0000003.pth", "model_0000001.pth"):
        assert name in str(err.value)


def test_resume_without_any_checkpoint_starts_from_scratch(tmp_path):
    cfg = toy_cfg(tmp_path)
    trainer = ToyTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 0


def test_broken_checkpoint_files_are_named(tmp_path):
    model = nn.Linear(4, 4)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(OSError, match=rf"{empty}.*empty \(0 bytes\)"):
        StrictShapeCheckpointer(model).load(str(empty))
    torch.save({"model": model.state_dict()}, tmp_path / "full.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes((tmp_path / "full.pth").read_bytes()[:300])
    with pytest.raises(OSError, match=rf"{cut}.*truncated or corrupt"):
        StrictShapeCheckpointer(model).load(str(cut))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.pth")):
        StrictShapeCheckpointer(model).load(str(tmp_path / "nope.pth"))


# ------------------------------------------------------------------------------------------
# metrics.json
# ------------------------------------------------------------------------------------------
def test_metrics_json_is_never_empty_nor_glued_to_a_torn_line(tmp_path, caplog):
    cfg = toy_cfg(tmp_path)
    trainer = ToyTrainer(cfg)
    json_writers = [w for w in trainer.build_writers() if "JSON" in type(w).__name__]
    assert len(json_writers) == 1
    assert not (tmp_path / "metrics.json").exists(), "a 0-byte metrics.json before any record"

    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"iteration": 1, "loss": 0.5}\n{"iteration": 2, "lo')  # killed mid-line
    writer = type(json_writers[0])(str(metrics))
    with EventStorage(3) as storage, caplog.at_level(logging.WARNING):
        storage.put_scalar("loss", 0.25, smoothing_hint=False)
        writer.write()
    writer.close()
    lines = metrics.read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [1, 3]
    assert "metrics.json" in caplog.text and "incomplete last line" in caplog.text
