"""Training-loop tests on small synthetic problems (fast)."""

import warnings
from dataclasses import replace

import numpy as np
import pytest

from nnexp.engine.network import init_network
from nnexp.train import (DIVERGED, EARLY_STOPPED, EarlyStopping, HalveOnPlateau, Monitor, Piecewise,
                         Streams, TrainSpec, fit)


class Split:
    def __init__(self, x, y):
        self.x, self.y = x, y


def blobs(n, seed, n_in=8, k=3, noise=0.9):
    """k Gaussian blobs in n_in dimensions: learnable, not trivially."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(k, n_in))
    y = rng.integers(0, k, n)
    return Split(centres[y] + noise * rng.normal(size=(n, n_in)), y)


TRAIN, VAL, TEST = blobs(300, 1), blobs(200, 2), blobs(200, 3)
ALL = ("training_cost", "training_accuracy", "validation_cost", "validation_accuracy",
       "test_cost", "test_accuracy")


def run(spec, seed=0, sizes=(8, 10, 3), observers=(), init="scaled", **net_kw):
    streams = Streams.from_seed(seed)
    net = init_network(list(sizes), streams.init, init=init, **net_kw)
    return net, fit(net, TRAIN, spec, validation=VAL, test=TEST, streams=streams, observers=observers)


def test_training_learns_and_records_every_epoch():
    from nnexp.engine.network import evaluate

    untrained = init_network([8, 10, 3], Streams.from_seed(0).init)  # the run's initial weights
    chance = evaluate(untrained, TRAIN.x, TRAIN.y)[1]
    net, h = run(TrainSpec(epochs=8, mini_batch_size=10, eta=0.5, lmbda=0.1, monitor=Monitor(metrics=ALL)))
    assert h.outcome == "completed" and len(h.records) == 8
    assert [r.epoch for r in h.records] == list(range(1, 9))
    assert chance < 0.6 and h.records[-1].training_accuracy > 0.8  # three classes: from near chance to learnt
    assert h.records[-1].training_cost < h.records[0].training_cost
    assert h.best_validation_accuracy == max(r.validation_accuracy for r in h.records)
    assert all(r.epoch_seconds > 0 for r in h.records)
    assert "validation_accuracy" in h.to_csv().splitlines()[0]


def test_same_seed_same_history_and_dropout_changes_neither_init_nor_order():
    spec = TrainSpec(epochs=3, mini_batch_size=7, eta=0.3, lmbda=0.1)
    _, a = run(spec, seed=4)
    _, b = run(spec, seed=4)
    assert a.column("training_cost") == b.column("training_cost")
    s1, s2 = Streams.from_seed(4), Streams.from_seed(4)
    s2.dropout.random(1000)  # consuming dropout randomness leaves the other streams alone
    assert np.array_equal(s1.shuffle.permutation(50), s2.shuffle.permutation(50))
    assert np.array_equal(init_network([8, 4, 3], s1.init).weights[0],
                          init_network([8, 4, 3], s2.init).weights[0])


def test_larger_lambda_gives_smaller_weights():
    norms = []
    for lmbda in (0.0, 5.0, 50.0):
        net, _ = run(TrainSpec(epochs=5, mini_batch_size=10, eta=0.5, lmbda=lmbda))
        norms.append(sum(float((w ** 2).sum()) for w in net.weights))
    assert norms[0] > norms[1] > norms[2]


def test_penalty_in_each_cost_is_scaled_by_the_size_of_the_set_scored():
    # the book's network2.total_cost: (lambda / 2n) sum w^2 with n = len(data) of the set scored
    spec = TrainSpec(epochs=1, mini_batch_size=10, eta=0.0, lmbda=30.0, monitor=Monitor(metrics=ALL))
    net, h = run(spec)
    squares = sum(float((w ** 2).sum()) for w in net.weights)
    _, h0 = run(TrainSpec(epochs=1, mini_batch_size=10, eta=0.0, lmbda=0.0, monitor=Monitor(metrics=ALL)))
    assert len(VAL.x) != len(TRAIN.x)  # else the test could not tell the two scalings apart
    assert h.records[0].validation_cost - h0.records[0].validation_cost == pytest.approx(0.5 * 30.0 / len(VAL.x) * squares)
    assert h.records[0].training_cost - h0.records[0].training_cost == pytest.approx(0.5 * 30.0 / len(TRAIN.x) * squares)


def test_dropout_is_off_at_evaluation_time():
    from nnexp.engine.network import forward

    spec = TrainSpec(epochs=2, mini_batch_size=10, eta=0.5, dropout=0.5, monitor=Monitor(metrics=ALL))
    net, h = run(spec)
    acts, _ = forward(net, VAL.x)  # every hidden neuron on, no 1/(1-p) rescaling
    assert h.records[-1].validation_accuracy == np.mean(acts[-1].argmax(axis=1) == VAL.y)
    masked = [(np.random.default_rng(0).random((len(VAL.x), 10)) < 0.5) / 0.5]
    acts_dropped, _ = forward(net, VAL.x, masks=masked)
    assert not np.array_equal(acts_dropped[-1], acts[-1])  # a mask would have shown


def test_dropout_changes_training_but_not_initial_weights_or_data_order():
    _, plain = run(TrainSpec(epochs=2, mini_batch_size=10, eta=0.5))
    _, drop = run(TrainSpec(epochs=2, mini_batch_size=10, eta=0.5, dropout=0.5))
    # dropout that (almost surely) keeps every neuron: masks 1/(1-1e-12); any change of the initial
    # weights or the data order by dropout's own random stream would show as a different curve
    _, keep_all = run(TrainSpec(epochs=2, mini_batch_size=10, eta=0.5, dropout=1e-12))
    assert plain.column("training_cost") != pytest.approx(drop.column("training_cost"), rel=1e-3)
    assert keep_all.column("training_cost") == pytest.approx(plain.column("training_cost"), rel=1e-9)


@pytest.mark.parametrize("eta", [100.0, 1e4])
def test_absurd_learning_rates_diverge_quietly(eta):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net, h = run(TrainSpec(epochs=5, mini_batch_size=10, eta=eta, lmbda=5.0), init="large")
    costs = h.column("training_cost")
    if eta == 1e4:  # eta lambda / n = 167 > 2: weights explode by construction
        assert h.outcome == DIVERGED and len(h.records) == 1 and "training_cost" in h.reason
    else:  # decay factor |1 - 100 x 5 / 300| < 1: large but bounded, all five epochs, nothing NaN
        assert h.outcome == "completed" and len(costs) == 5
        assert all(np.isfinite(c) for c in costs) and net.params_finite() and max(costs) > 100


def test_early_stopping_stops_and_restores_best():
    spec = TrainSpec(epochs=200, mini_batch_size=10, eta=0.5, early_stopping=EarlyStopping(patience=3, restore_best=True))
    net, h = run(spec)
    assert h.outcome == EARLY_STOPPED and len(h.records) < 200
    accs = h.column("validation_accuracy")
    first_best = accs.index(max(accs))  # "no improvement": equal is not better
    assert h.best_validation_accuracy == max(accs) and h.best_epoch == h.records[first_best].epoch
    assert len(accs) - 1 - first_best == 3  # stopped exactly `patience` evaluations after the best
    from nnexp.engine.network import evaluate
    assert evaluate(net, VAL.x, VAL.y)[1] == h.best_validation_accuracy


def test_halve_on_plateau_halves_eta_and_ends_at_eta0_over_1024():
    spec = TrainSpec(epochs=500, mini_batch_size=10, eta=0.5, schedule=HalveOnPlateau(patience=2, min_factor=1 / 1024))
    _, h = run(spec)
    etas = h.column("eta")
    assert etas[0] == 0.5 and min(etas) == 0.5 / 512  # the run stops when it reaches 1/1024
    assert h.outcome == "completed" and h.reason.startswith("learning rate reached eta0")
    ratios = {round(a / b, 6) for a, b in zip(etas, etas[1:]) if a != b}
    assert ratios == {2.0}


def test_sub_epoch_monitoring_on_a_validation_sample():
    spec = TrainSpec(epochs=2, mini_batch_size=10, eta=0.5,
                     monitor=Monitor(metrics=("validation_accuracy",), every_images=100, validation_sample=50))
    _, h = run(spec)
    assert [r.images_seen for r in h.records] == [100, 200, 300, 400, 500, 600]
    assert h.records[0].epoch == pytest.approx(1 / 3)
    # accuracy on 50 images moves in steps of 1/50
    assert all(abs(r.validation_accuracy * 50 - round(r.validation_accuracy * 50)) < 1e-9 for r in h.records)


def test_an_observer_can_stop_training():
    seen = []

    def pruner(record, net):
        seen.append(record.epoch)
        return "pruned" if record.epoch >= 2 else None

    _, h = run(TrainSpec(epochs=10, mini_batch_size=10, eta=0.5), observers=[pruner])
    assert h.outcome == "pruned" and seen == [1, 2] and len(h.records) == 2


def test_bad_mini_batch_and_missing_validation_are_errors():
    with pytest.raises(ValueError, match="mini_batch_size"):
        run(TrainSpec(epochs=1, mini_batch_size=10_000, eta=0.5))
    with pytest.raises(ValueError, match="validation_accuracy"):
        run(TrainSpec(epochs=1, mini_batch_size=10, eta=0.5, early_stopping=EarlyStopping(patience=10, restore_best=True),
                      monitor=Monitor(metrics=("training_cost",))))


def test_evaluation_every_k_images_spanning_epochs_ends_with_a_final_evaluation():
    # 300 training images, evaluate every 700 images: after 700, 1400, then at the end (1500)
    spec = TrainSpec(epochs=5, mini_batch_size=10, eta=0.5,
                     monitor=Monitor(metrics=("validation_accuracy",), every_images=700))
    _, h = run(spec)
    assert [r.images_seen for r in h.records] == [700, 1400, 1500]
    # each record's clock: the training steps since the evaluation before (evaluations not counted):
    # each above zero, together within the run's wall time. (It compared the sum with the wall time
    # within 50% and failed in CI: an 8 ms run, whose three evaluations took most of it under load.)
    seconds = [r.epoch_seconds for r in h.records]
    assert all(t > 0 for t in seconds) and sum(seconds) <= h.train_seconds + 1e-9


# -- checkpoints and resume -------------------------------------------------------------------------
class Stop(Exception):
    """Stands for the process dying just after its n-th checkpoint."""


def unclocked(records):
    """The records without their clock (epoch_seconds)."""
    from dataclasses import replace

    return [replace(r, epoch_seconds=0.0) for r in records]


def _population(specs, dtype):
    streams = [Streams.from_seed(k) for k in range(len(specs))]
    return [init_network([8, 10, 3], s.init, dtype=dtype) for s in streams], streams


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_population_resumed_from_any_of_its_checkpoints_ends_bit_for_bit_as_if_never_stopped(tmp_path, dtype):
    """The whole state a member's next step depends on is in its checkpoint: killed after its
    n-th checkpoint (every n, mid-epoch ones included), each member resumed from its file (alone:
    another population composition) has the uninterrupted run's every record and final weights.
    The members use momentum, dropout, a validation sample every 110 images, halve-on-plateau,
    early stopping with restore and a piecewise eta/lambda schedule, so every piece of state is
    exercised."""
    from nnexp.train import checkpoint, fit_population

    monitor = Monitor(ALL, every_images=110, validation_sample=50)
    specs = [TrainSpec(epochs=6, mini_batch_size=10, eta=0.5, lmbda=0.5, momentum=0.5, dropout=0.2, monitor=monitor,
                       schedule=HalveOnPlateau(2, 1 / 8), early_stopping=EarlyStopping(6, True)),
             TrainSpec(epochs=4, mini_batch_size=10, eta=2.0, dropout=0.2, monitor=monitor),
             TrainSpec(epochs=5, mini_batch_size=10, eta=1.0, lmbda=2.0, dropout=0.2, monitor=monitor,
                       schedule=Piecewise(((250, 0.5, 1.0), (700, 0.2, 4.0))))]
    nets, streams = _population(specs, dtype)
    counted = []
    want = fit_population(nets, TRAIN, specs, validation=VAL, test=TEST, streams=streams,
                          checkpoints=[counted.append] * len(specs))
    want_weights = [n.copy_params() for n in nets]
    n_checkpoints = len(counted)
    assert n_checkpoints >= sum(len(h.records) for h in want)  # one per evaluation at least
    outcomes = set()
    for stop_after in sorted({*range(1, n_checkpoints, 3), n_checkpoints}):
        saved = []

        def keeper(k):
            def keep(state):
                checkpoint.save(tmp_path / f"m{k}.bin", state)
                saved.append(k)
                if len(saved) == stop_after:
                    raise Stop
            return keep

        nets, streams = _population(specs, dtype)
        with pytest.raises(Stop):
            fit_population(nets, TRAIN, specs, validation=VAL, test=TEST, streams=streams,
                           checkpoints=[keeper(k) for k in range(len(specs))])
        for k, spec in enumerate(specs):
            path = tmp_path / f"m{k}.bin"
            state = checkpoint.load(path, "") if checkpoint.exists(path) else None  # none yet: from the start
            if state is None or not state.finished:
                stream = Streams.from_seed(k)  # the member's own seed, as in the population
                net = init_network([8, 10, 3], stream.init, dtype=dtype)
                history = fit_population([net], TRAIN, [spec], validation=VAL, test=TEST, streams=[stream],
                                         resume=[state])[0]
                for f in (*checkpoint.slot_paths(path), checkpoint.history_path(path)):
                    f.unlink(missing_ok=True)
                weights = net.copy_params()
            else:
                history, weights = state.history, (state.weights, state.biases)
            outcomes.add((k, state.finished, state.position.offset > 0) if state else (k, None, None))
            assert unclocked(history.records) == unclocked(want[k].records), (stop_after, k)
            assert (history.outcome, history.best_epoch) == (want[k].outcome, want[k].best_epoch)
            for got, expected in zip(weights[0] + weights[1], want_weights[k][0] + want_weights[k][1]):
                assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes(), (stop_after, k)
    # resumed mid-epoch, at an epoch's start, and from a member's end were all exercised
    assert {(1, False, True), (1, True, False), (0, False, True)} <= outcomes, outcomes


def test_a_damaged_checkpoint_falls_back_to_the_previous_one_and_a_foreign_one_is_refused(tmp_path):
    """Two slots, written in turn: a newest slot cut short, scrambled or with one bit flipped is
    passed over for the previous one (said in one line); both damaged, or another configuration's,
    is a one-line CheckpointError. The history file's lines beyond a state's count are not its own."""
    from nnexp.train import checkpoint, fit_population

    nets, streams = _population([None], np.float64)
    saved = []
    path = tmp_path / "c.bin"
    writer = checkpoint.Writer(path)
    fit_population(nets, TRAIN, [TrainSpec(epochs=2, mini_batch_size=10, eta=0.5)], validation=VAL, streams=streams,
                   checkpoints=[lambda s: (setattr(s, "identity", "abc"), writer.save(s), saved.append(s.finished))])
    assert saved == [False, False, True]  # two evaluations and the end
    assert checkpoint.load(path, "abc").finished
    with pytest.raises(checkpoint.CheckpointError, match="another configuration"):
        checkpoint.load(path, "other")
    newest, previous = sorted(checkpoint.slot_paths(path), key=checkpoint.sequence, reverse=True)
    data = newest.read_bytes()
    flipped = bytearray(data)
    flipped[-5] ^= 1  # one bit of one weight
    for damaged in (data[: len(data) // 2], data[:200] + bytes(len(data) - 200), b"", bytes(flipped)):
        newest.write_bytes(damaged)
        state = checkpoint.load(path, "abc")
        assert not state.finished and len(state.history.records) == 2  # the previous one: after epoch 2
        assert "is damaged" in state.note and "\n" not in state.note
    # a run resumed from the previous slot writes its next state over the damaged one, never over
    # the state it read (here the damaged slot's header still reads: only its arrays are bad)
    newest.write_bytes(bytes(flipped))
    resumed = checkpoint.load(path, "abc")
    checkpoint.Writer(path).save(resumed)
    assert checkpoint.sequence(newest) > checkpoint.sequence(previous) and checkpoint.load(path, "abc").note == ""
    newest.write_bytes(data[:100])
    assert len(checkpoint.load(path, "abc").history.records) == 2  # the previous slot is still whole
    previous.write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match="damaged") as err:
        checkpoint.load(path, "abc")
    assert "\n" not in str(err.value)
    newest.write_bytes(data)
    history = checkpoint.history_path(path)
    lines = history.read_text().splitlines(keepends=True)
    history.write_text("".join(lines) + '{"epoch": 3')  # a line cut short after the checkpoint: not its own
    assert len(checkpoint.load(path, "abc").history.records) == 2
    history.write_text(lines[0])  # its history lost a record
    with pytest.raises(checkpoint.CheckpointError, match="1 of its 2 records"):
        checkpoint.load(path, "abc")


def test_a_piecewise_schedule_sets_eta_and_lambda_from_its_image_counts_on():
    """Before its first point the run is the constant run; from a point on, every step uses its
    eta and lambda (eq. 93: the weight decay changes with lambda), and each evaluation reports them."""
    base = dict(epochs=4, mini_batch_size=10, eta=0.5, lmbda=1.0, monitor=Monitor(ALL, every_images=100))
    _, constant = run(TrainSpec(**base))
    _, same = run(TrainSpec(**base, schedule=Piecewise(((0, 0.5, 1.0),))))
    assert unclocked(constant.records) == [replace(r, lmbda=None) for r in unclocked(same.records)]
    net, changed = run(TrainSpec(**base, schedule=Piecewise(((600, 0.1, 5.0), (900, 0.05, 2.0)))))
    assert [r.lmbda for r in changed.records][:6] == [1.0] * 6 and changed.records[5].images_seen == 600
    assert unclocked([replace(r, lmbda=None) for r in changed.records[:6]]) == unclocked(constant.records[:6])
    assert changed.records[6].training_cost != constant.records[6].training_cost  # the change took effect
    assert [(r.eta, r.lmbda) for r in changed.records[6:9]] == [(0.1, 5.0)] * 3
    assert {(r.eta, r.lmbda) for r in changed.records[9:]} == {(0.05, 2.0)}
    assert "lmbda" in changed.records[0].metrics() and "lmbda" not in constant.records[0].metrics()
    # the reported cost's penalty is the current lambda's: (2 / 2n) sum w^2 (eq. 85), not the first one's
    from nnexp.engine.network import evaluate

    data_cost = evaluate(net, TRAIN.x, TRAIN.y)[0]
    penalty = 2.0 / (2 * len(TRAIN.x)) * sum(float((w ** 2).sum()) for w in net.weights)
    assert changed.records[-1].training_cost == pytest.approx(data_cost + penalty, rel=1e-12)


def test_a_population_controller_copies_a_network_between_rows_and_changes_its_hyper_parameters(tmp_path):
    """Population-based training's two moves inside one batched population: after each
    evaluation of all members, the worst takes the best's network (exploit: a row copy) and a
    new eta and lambda (explore). The copy is exact, the copied member goes on under its new eta
    (no longer its donor's twin), every record reports eta and lambda, and the whole run is
    deterministic, also when resumed from a checkpoint taken after a copy."""
    from nnexp.train import checkpoint, fit_population

    spec = TrainSpec(epochs=4, mini_batch_size=10, eta=0.5, lmbda=1.0, monitor=Monitor(ALL, every_images=150))
    moves = []

    def exploit_explore(pop, nets):
        ranked = sorted(pop.members(), key=lambda i: (pop.score(i), -i))
        worst, best = ranked[0], ranked[-1]
        if worst == best:
            return
        pop.copy(best, worst)
        eta, lmbda = pop.hyper(best)
        pop.set_hyper(worst, eta * 0.8, lmbda * 1.2)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(nets[worst].weights + nets[worst].biases,
                                                              nets[best].weights + nets[best].biases))
        moves.append((pop.images_seen, best, worst))

    def train(checkpoints=None, resume=None, stop_after=None):
        nets, streams = _population([spec] * 4, np.float64)
        saved = []

        def keep(k):
            def save(state):
                checkpoint.save(tmp_path / f"p{k}.bin", state)
                saved.append(k)
                if stop_after and len(saved) == stop_after:
                    raise Stop
            return save

        histories = fit_population(nets, TRAIN, [spec] * 4, validation=VAL, streams=streams,
                                   control=lambda pop: exploit_explore(pop, nets), resume=resume,
                                   checkpoints=[keep(k) for k in range(4)] if checkpoints else None)
        return histories, nets

    want, want_nets = train()
    n_moves = len(moves)
    assert n_moves >= 5
    images, best, worst = moves[0]
    rec = want[worst].records
    after = [r for r in rec if r.images_seen > images][0]  # the copied member's next evaluation
    eta, lmbda = want[best].records[[r.images_seen for r in want[best].records].index(images)].eta, 1.0
    assert (after.eta, after.lmbda) == (eta * 0.8, lmbda * 1.2)
    assert all(r.lmbda is not None for h in want for r in h.records)
    assert not np.array_equal(want_nets[best].weights[0], want_nets[worst].weights[0])  # its own eta since
    moves.clear()
    again, again_nets = train()
    assert [unclocked(h.records) for h in again] == [unclocked(h.records) for h in want]
    with pytest.raises(Stop):  # stopped after the checkpoints of 3 rounds (after their copies)
        train(checkpoints=True, stop_after=4 * 3)
    states = [checkpoint.load(tmp_path / f"p{k}.bin", "") for k in range(4)]
    resumed, resumed_nets = train(resume=states)
    assert [unclocked(h.records) for h in resumed] == [unclocked(h.records) for h in want]
    for got, expected in zip(resumed_nets, want_nets):
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got.weights + got.biases, expected.weights + expected.biases))
