import pickle

import pytest
import torch

from snc.errors import CheckpointError
from snc.models.checkpoint import load_checkpoint, save_checkpoint

from conftest import HostilePickle, make_model


def _save(path, model, arch="spiking-mlp"):
    save_checkpoint(path, arch, model, {"note": "test"})
    return path


def test_round_trip_is_exact(tmp):
    model = make_model("digits-mlp")
    ckpt = load_checkpoint(_save(tmp / "m.pt", model))
    assert ckpt.arch == "spiking-mlp" and ckpt.config == model.config and ckpt.meta == {"note": "test"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt.model.state_dict()[k])
    assert not ckpt.model.training


def test_hostile_pickle_is_refused_and_never_executed(tmp):
    marker = tmp / "pwned"
    torch.save({"format": "snc-checkpoint", "payload": HostilePickle(str(marker))}, tmp / "evil.pt")
    assert not marker.exists()  # saving only records the call
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(tmp / "evil.pt")
    assert not marker.exists()


def test_raw_pickle_file_is_refused(tmp):
    marker = tmp / "pwned"
    (tmp / "raw.pt").write_bytes(pickle.dumps(HostilePickle(str(marker))))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp / "raw.pt")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_files_give_one_clear_error(tmp, content):
    (tmp / "bad.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(tmp / "bad.pt")


def test_truncated_checkpoint(tmp):
    path = _save(tmp / "m.pt", make_model("digits-mlp"))
    data = path.read_bytes()
    (tmp / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp / "cut.pt")


def test_wrong_kind_of_file(tmp):
    torch.save({"net_model": {}}, tmp / "other.pt")
    with pytest.raises(CheckpointError, match="not an snc checkpoint"):
        load_checkpoint(tmp / "other.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp / "missing.pt")


def test_nan_weights_are_refused(tmp):
    model = make_model("digits-mlp")
    with torch.no_grad():
        model.readout.weight[0, 0] = float("nan")
        model.hidden[0].fc.bias[1] = float("inf")
    with pytest.raises(CheckpointError, match="readout.weight.*hidden.0.fc.bias|hidden.0.fc.bias.*readout.weight"):
        load_checkpoint(_save(tmp / "nan.pt", model))


def test_state_dict_mismatch_lists_every_problem(tmp):
    model = make_model("digits-mlp")
    path = _save(tmp / "m.pt", model)
    raw = torch.load(path, weights_only=True)
    del raw["state_dict"]["readout.bias"]
    raw["state_dict"]["extra.weight"] = torch.zeros(1)
    raw["state_dict"]["hidden.0.fc.weight"] = torch.zeros(3, 3)
    torch.save(raw, tmp / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp / "bad.pt")
    msg = str(info.value)
    assert "readout.bias" in msg and "extra.weight" in msg and "hidden.0.fc.weight (3, 3)" in msg


def test_unknown_config_keys(tmp):
    path = _save(tmp / "m.pt", make_model("digits-mlp"))
    raw = torch.load(path, weights_only=True)
    raw["config"]["bogus"] = 1
    torch.save(raw, tmp / "bad.pt")
    with pytest.raises(CheckpointError, match="bogus"):
        load_checkpoint(tmp / "bad.pt")
