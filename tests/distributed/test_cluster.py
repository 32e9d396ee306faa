"""Data-parallel fit on a LocalCluster of 2 worker processes: bitwise the in-process run with 2 replicas, and the
same bits again when a worker is killed mid-epoch."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from xpcnn import nn, optim  # noqa: E402
import xpcnn.distributed as xd  # noqa: E402
from tests.distributed.common import BATCH, bitwise_equal, bn_dropout_model, data, make_optimizer  # noqa: E402

EPOCHS = 3


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as client:
            yield client


def run(client, **kwargs):
    x, y = data()
    xv, yv = data(29, seed=1)
    model = bn_dropout_model()
    opt = make_optimizer("adam", model)
    scheduler = optim.StepLR(opt, step_size=1, gamma=0.5)  # stepped per epoch: restored after the lost worker
    history = xd.fit(client, model, nn.CrossEntropyLoss(), opt, (x, y), epochs=EPOCHS, batch_size=BATCH, seed=5,
                     validation_data=(xv, yv), scheduler=scheduler, progress=False, **kwargs)
    assert scheduler.get_last_lr() == [1e-2 * 0.5**EPOCHS] and opt.lr == 1e-2 * 0.5**EPOCHS
    return model.state_dict(), history


@pytest.fixture(scope="module")
def in_process():
    return run(xd.InProcess(2))


def test_two_worker_processes_give_the_in_process_bits(client, in_process):
    state, history = run(client)
    assert bitwise_equal(state, in_process[0])
    assert history == in_process[1]


def test_a_worker_killed_mid_epoch_changes_no_bit(client, in_process, tmp_path):
    killed, steps = [], []

    def kill_one(step):
        steps.append(step)
        if step == 4 and not killed:  # the second step of the second epoch; last snapshot: step 3
            worker = sorted(client.scheduler_info(n_workers=-1)["workers"])[-1]
            killed.append(worker)
            try:
                client.run(os._exit, 1, workers=[worker])
            except Exception:  # noqa: BLE001 - the worker dies before it answers
                pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, history = run(client, checkpoint=str(tmp_path), checkpoint_every=3, on_step=kill_one)
    assert killed
    lost = [w for w in caught if "rebuilding the replicas" in str(w.message)]
    assert lost and "resuming from step 3" in str(lost[0].message)
    assert steps[:5] == [1, 2, 3, 4, 4] or steps[:6] == [1, 2, 3, 4, 5, 4]  # step 4 (or 5) again after the restart
    assert bitwise_equal(state, in_process[0])
    assert history == in_process[1]



def test_an_exchanged_loss_denominator_gives_the_in_process_bits(client):
    """Class weights and ignored targets without a batch norm: the step's only exchange is the cross-entropy's
    denominator, through the actors' step threads; validation in chunks."""
    from tests.distributed.test_in_process import dropout_model

    x, y = data()
    y = np.where(np.arange(len(y)) % 5 == 1, -100, y)
    weight = np.linspace(0.5, 2.0, 10)
    runs = []
    for where in (xd.InProcess(2), client):
        model = dropout_model()
        history = xd.fit(where, model, nn.CrossEntropyLoss(weight=weight), make_optimizer("sgd", model), (x, y),
                         epochs=2, batch_size=BATCH, validation_data=(x[:50], y[:50]), progress=False)
        runs.append((model.state_dict(), history))
    assert bitwise_equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
