"""tools/still_neighbours.py: the "still" clips hold only the key frame, nothing else changes."""

import torch
from script_loader import load_script


def _tool():
    return load_script("tools/still_neighbours.py")


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, inputs):
        self.seen = inputs
        return [{"n": i} for i in range(len(inputs))]


def test_still_clips_repeat_the_key_frame_and_keep_the_rest():
    recorder = _Recorder()
    still = _tool().StillClips(recorder)
    clip = torch.arange(3 * 3 * 2 * 2, dtype=torch.uint8).view(3, 3, 2, 2)
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    inputs = [
        {"image": clip, "key_index": 1, "video_id": "v", "height": 8},
        {"image": image, "key_index": 0},  # a single image passes through
    ]
    out = still(inputs)
    assert out == [{"n": 0}, {"n": 1}]
    got = recorder.seen[0]["image"]
    assert got.shape == clip.shape
    for t in range(3):
        assert torch.equal(got[t], clip[1])
    assert recorder.seen[0]["video_id"] == "v" and recorder.seen[0]["height"] == 8
    assert torch.equal(inputs[0]["image"], clip)  # the caller's input is not modified
    assert recorder.seen[1]["image"] is image
