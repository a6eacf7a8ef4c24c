import pytest

from aggregator.models import ModelSpec, build_model
from fl_client.data import load_local_data, make_loader
from fl_client.train import TrainConfig, TrainingError, evaluate, train
from fl_server.data_prep import miner_dir


def test_training_lowers_loss_on_private_data(digits_root, digits_cfg):
    data = load_local_data(miner_dir(digits_root, digits_cfg, 0), "digits")
    model = build_model(ModelSpec("mlp", {"image_size": 8}), seed=0)
    loader = make_loader(data.train, 32, shuffle=True)
    before, acc_before, _ = evaluate(model, loader)
    result = train(model, loader, TrainConfig(epochs=2, batch_size=32, lr=0.05))
    after, acc_after, _ = evaluate(model, loader)
    assert result.num_examples == len(data.train)
    assert after < before * 0.7 and acc_after > acc_before


def test_divergence_and_bad_settings_raise(digits_root, digits_cfg):
    data = load_local_data(miner_dir(digits_root, digits_cfg, 0), "digits")
    model = build_model(ModelSpec("mlp", {"image_size": 8}), seed=0)
    loader = make_loader(data.train, 32, shuffle=True)
    with pytest.raises(TrainingError, match="NaN"):
        train(model, loader, TrainConfig(lr=1e30, momentum=0.0))
    with pytest.raises(TrainingError, match="optimizer"):
        train(model, loader, TrainConfig(optimizer="lbfgs"))
    with pytest.raises(TrainingError, match="positive"):
        train(model, loader, TrainConfig(epochs=0))
