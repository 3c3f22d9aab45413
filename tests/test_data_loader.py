"""BatchLoader: shapes, dtype, the x/y shift, bounds, determinism from a seed, resume, errors."""

import io
import json

import numpy as np
import pytest
import torch

from data import BatchLoader, DataError, read_split


def write_bin(tmp_path, tokens, dtype="uint16", split="train", meta=True):
    path = tmp_path / f"{split}.bin"
    np.asarray(tokens, dtype=dtype).tofile(path)
    if meta:
        (tmp_path / "meta.json").write_text(json.dumps({
            "dataset": "t", "tokenizer": {"kind": "char", "chars": "ab"}, "vocab_size": 2, "dtype": dtype,
            "train_tokens": len(tokens), "val_tokens": len(tokens), "source": "test", "sha256": "",
            "split": "test"}))
    return path


def batches(loader, k):
    return [loader.next_batch() for _ in range(k)]


def test_shapes_dtype_and_shift(tmp_path):
    path = write_bin(tmp_path, np.arange(1000))  # token value == position, so windows are checkable
    x, y = BatchLoader(path, block_size=16, batch_size=4).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert x.device.type == "cpu" and x.is_contiguous() and y.is_contiguous()
    assert torch.equal(y, x + 1)  # y is x shifted by one ...
    assert torch.equal(x, x[:, :1] + torch.arange(16))  # ... and each row is a contiguous window


def test_windows_cover_the_whole_file_and_stay_in_bounds(tmp_path):
    n, T = 40, 8
    path = write_bin(tmp_path, np.arange(n))
    xs, ys = zip(*batches(BatchLoader(path, T, 32, seed=3), 20))
    assert min(int(x.min()) for x in xs) == 0 and max(int(y.max()) for y in ys) == n - 1
    # exactly block_size+1 tokens: a single possible window
    path = write_bin(tmp_path, np.arange(T + 1))
    x, y = BatchLoader(path, T, 3).next_batch()
    assert torch.equal(x, torch.arange(T).repeat(3, 1)) and torch.equal(y, x + 1)


def test_dtype_from_meta_and_uint32(tmp_path):
    big = np.arange(70000, 70000 + 500)  # ids beyond uint16
    path = write_bin(tmp_path, big, dtype="uint32")
    x, _ = BatchLoader(path, 10, 2).next_batch()  # dtype read from meta.json
    assert int(x.min()) >= 70000 and x.dtype == torch.int64


def test_seed_determinism(tmp_path):
    path = write_bin(tmp_path, np.arange(5000))
    a, b, c = (batches(BatchLoader(path, 32, 8, seed=s), 5) for s in (7, 7, 8))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))


def test_resume_gives_the_same_batches(tmp_path):
    path = write_bin(tmp_path, np.arange(5000))
    full = BatchLoader(path, 32, 8, seed=1)
    first, rest = batches(full, 5), batches(full, 5)
    half = BatchLoader(path, 32, 8, seed=1)
    batches(half, 5)
    state = half.state_dict()
    # the state survives JSON and torch.save/torch.load(weights_only=True), as in a checkpoint
    state = json.loads(json.dumps(state))
    buf = io.BytesIO()
    torch.save({"loader": state}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["loader"]
    resumed = BatchLoader(path, 32, 8, seed=123)  # a different seed: the state wins
    resumed.load_state_dict(state)
    assert resumed.batches == 5
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(rest, batches(resumed, 5)))
    assert not torch.equal(first[0][0], rest[0][0])


@pytest.mark.cuda
def test_cuda_batches():
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        path = write_bin(Path(d), np.arange(1000))
        x, y = BatchLoader(path, 16, 4, device="cuda").next_batch()
        assert x.is_cuda and y.is_cuda and torch.equal(y, x + 1)
        tokens = read_split(path, "cuda")  # resident: gathered on the GPU, the same windows
        x2, y2 = BatchLoader(path, 16, 4, device="cuda", tokens=tokens).next_batch()
        assert x2.is_cuda and torch.equal(x2, x) and torch.equal(y2, y)


def test_split_too_short(tmp_path):
    path = write_bin(tmp_path, np.arange(50), split="val")
    with pytest.raises(DataError, match=r"val split has 50 tokens; need at least block_size\+1 = 257"):
        BatchLoader(path, 256, 4)
    BatchLoader(path, 49, 4)  # 50 tokens are enough for block_size 49


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="not found; prepare"):
        BatchLoader(tmp_path / "train.bin", 8, 2)
    path = write_bin(tmp_path, np.arange(100), meta=False)
    with pytest.raises(DataError, match="meta.json not found"):
        BatchLoader(path, 8, 2)  # no meta.json to read the dtype from
    with pytest.raises(DataError, match="unknown dtype"):
        BatchLoader(write_bin(tmp_path, np.arange(100), dtype="float32"), 8, 2)
    path = write_bin(tmp_path, np.arange(100))
    path.write_bytes(path.read_bytes()[:-1])  # 199 bytes: not whole uint16 tokens
    with pytest.raises(DataError, match="truncated or corrupt"):
        BatchLoader(path, 8, 2)
    with pytest.raises(DataError, match="must be positive"):
        BatchLoader(write_bin(tmp_path, np.arange(100)), 0, 2)


def test_bad_state_dict(tmp_path):
    loader = BatchLoader(write_bin(tmp_path, np.arange(100)), 8, 2)
    for bad in ({}, {"seed": 0, "batches": 0, "rng": {"bit_generator": "MT19937"}}, None):
        with pytest.raises(DataError, match="not a BatchLoader state"):
            loader.load_state_dict(bad)


def test_resident_loader_gives_the_same_batches(tmp_path):
    path = write_bin(tmp_path, np.arange(3000) % 1000)
    mapped = BatchLoader(path, 32, 8, seed=5)
    resident = BatchLoader(path, 32, 8, seed=5, tokens=read_split(path))
    assert resident.tokens is not None
    for (x1, y1), (x2, y2) in zip(batches(mapped, 4), batches(resident, 4)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ValueError, match="tokens must be the 3000 tokens"):
        BatchLoader(path, 32, 8, tokens=read_split(path)[1:])
    again = BatchLoader(path, 32, 8, seed=0, tokens=read_split(path))
    again.load_state_dict(mapped.state_dict())  # resumes the mapped loader's stream exactly
    x1, _ = mapped.next_batch()
    x2, _ = again.next_batch()
    assert torch.equal(x1, x2)
