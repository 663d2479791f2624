"""The SGD training loop for K >= 1 networks: epochs of shuffled mini-batches, monitoring,
schedules, early stopping, divergence, observers. A single run is a population of one.

Pure Python + NumPy: no tracking, tuning or config framework is imported here. Observers
(tracking, progress bars, pruning) are called after every evaluation and may ask the loop to
stop a member by returning a status string (e.g. "pruned").

Each member keeps its own random streams (initial weights are the caller's; data order,
dropout masks and the validation sample are drawn from its streams exactly as they would be
alone), its own schedule, early stopping and observers. Since the stepper's arithmetic per
member does not depend on the other members (engine/stepper.py) and every member is
evaluated with its own products, a member's history and final weights are bit-for-bit those
of the same run trained alone.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np

from nnexp.engine.network import Network, EvaluationSet, evaluate, stack_networks
from nnexp.engine.regularizers import PENALTIES
from nnexp.engine.stepper import Stepper
from nnexp.config.names import DIVERGED, EARLY_STOPPED, COMPLETED, SPLIT_NAMES
from nnexp.train.checkpoint import MemberState, Position, stream_states
from nnexp.train.spec import HalveOnPlateau, History, Observer, Piecewise, Record, Streams, TrainSpec, population_key


def one_hot(labels: np.ndarray, n_classes: int, dtype) -> np.ndarray:
    y = np.zeros((len(labels), n_classes), dtype=dtype)  # (n, n_classes)
    y[np.arange(len(labels)), labels] = 1.0
    return y


class _Member:
    """One member's book-keeping: its sets, history, best parameters, schedule state."""

    def __init__(self, net: Network, spec: TrainSpec, streams: Streams, observers: Sequence[Observer],
                 sets: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.net, self.spec, self.streams, self.observers, self.sets = net, spec, streams, observers, sets
        self.history = History()
        self.eta, self.lmbda = spec.eta, spec.lmbda
        self.points = spec.schedule.points if isinstance(spec.schedule, Piecewise) else ()
        self.next_point = 0  # the first of ``points`` not yet applied
        self.varied = bool(self.points)  # lambda may change while it trains: each record reports it
        self.best_params = None
        self.since_best = 0
        self.since_best_sched = 0
        self.clock = 0.0  # training seconds since the previous evaluation
        self.active = True
        self.start_epoch = self.start_images = 0  # where the population stood when it joined (refill)
        self.joined_at = time.perf_counter()  # its train_seconds count from here
        self.generation = 0  # population-based training: copies along its network's lineage

    def restore(self, state: MemberState) -> None:
        """Continue from a checkpoint: its parameters (before the stack is built), schedule,
        early-stopping counters, history and random streams."""
        self.net.set_params(state.weights, state.biases)
        self.eta, self.since_best, self.since_best_sched = state.eta, state.since_best, state.since_best_sched
        if state.lmbda is not None:
            self.lmbda = state.lmbda
        self.next_point = state.next_point
        self.best_params = state.best_params
        self.history = state.history
        self.generation = next((r.generation for r in reversed(self.history.records) if r.generation is not None), 0)
        state.restore_streams(self.streams)
        if state.position.offset:  # mid-epoch: draw this epoch's permutation again
            self.streams.shuffle.bit_generator.state = state.epoch_shuffle

    def record(self, images_seen: int, n_train: int, evaluated: dict[str, tuple[float, float, int]]) -> Record:
        spec = self.spec
        rec = Record(epoch=images_seen / n_train, images_seen=images_seen, eta=self.eta, epoch_seconds=self.clock,
                     lmbda=self.lmbda if self.varied else None)
        if spec.monitor.every_images is None:
            rec.epoch = round(rec.epoch)  # whole epochs: a clean MLflow step
        for split, (cost, acc, n) in evaluated.items():
            if f"{split}_cost" in spec.monitor.metrics:
                # the book's network2.total_cost adds (lambda / 2n) sum w^2 with n = the size of the
                # set being scored (the training set for the training cost, 10,000 for the test cost)
                penalty = PENALTIES[spec.penalty].value(self.net.weights, self.lmbda, n)
                setattr(rec, f"{split}_cost", cost + penalty)
            if f"{split}_accuracy" in spec.monitor.metrics:
                setattr(rec, f"{split}_accuracy", acc)
        self.history.records.append(rec)
        self.clock = 0.0
        return rec

    def due(self, images_seen: int) -> bool:
        """A schedule point applies before the next step."""
        return self.next_point < len(self.points) and self.points[self.next_point][0] <= images_seen

    def apply_points(self, images_seen: int) -> None:
        """The schedule's points reached by ``images_seen``: eta and lambda from the last of them."""
        while self.due(images_seen):
            _, self.eta, self.lmbda = self.points[self.next_point]
            self.next_point += 1

    def diverged(self, rec: Record) -> str | None:
        if not self.net.params_finite():
            return "parameters became non-finite"
        for k in ("training_cost", "validation_cost", "test_cost"):
            v = getattr(rec, k)
            if v is not None and (not math.isfinite(v) or v > self.spec.divergence_cost):
                return f"{k} = {v:.4g} exceeds {self.spec.divergence_cost:g}"
        return None

    def after_evaluation(self, rec: Record) -> tuple[str, str] | None:
        """Book-keeping after an evaluation; returns (outcome, reason) to stop."""
        why = self.diverged(rec)
        if why:  # the observers still see the record: a diverged run keeps its curves
            for observer in self.observers:
                observer(rec, self.net)
            return DIVERGED, why
        h, spec = self.history, self.spec
        acc = rec.validation_accuracy
        if acc is not None:
            if h.best_validation_accuracy is None or acc > h.best_validation_accuracy:
                h.best_validation_accuracy, h.best_epoch = acc, rec.epoch
                self.since_best = self.since_best_sched = 0
                if spec.early_stopping and spec.early_stopping.restore_best:
                    self.best_params = self.net.copy_params()
            else:
                self.since_best += 1
                self.since_best_sched += 1
        for observer in self.observers:
            status = observer(rec, self.net)
            if status:
                return status, f"stopped by {getattr(observer, '__name__', type(observer).__name__)}"
        es = spec.early_stopping
        if es and acc is not None and self.since_best >= es.patience:
            return EARLY_STOPPED, f"no improvement in validation accuracy for {es.patience} evaluations"
        sched = spec.schedule
        if isinstance(sched, HalveOnPlateau) and acc is not None and self.since_best_sched >= sched.patience:
            self.eta /= 2
            self.since_best_sched = 0
            if self.eta <= spec.eta * sched.min_factor * (1 + 1e-12):
                return COMPLETED, f"learning rate reached eta0 x {sched.min_factor:g}"
        return None

    def finish(self, stop: tuple[str, str] | None) -> None:
        if stop:
            self.history.outcome, self.history.reason = stop
        if self.best_params is not None and self.history.outcome != DIVERGED:
            self.net.set_params(*self.best_params)
        self.active = False


class _Loop:
    """The epochs of K members. The stepper's stack holds the rows ``self.rows`` (the member
    of each row), shrinking as members finish (``compact``)."""

    def __init__(self, nets, train, specs, validation, test, streams, observers, resume=None, checkpoints=None,
                 control=None, ids=None, refill=None, ended=None, release=None, released=None):
        dtype = nets[0].dtype
        self.x = np.ascontiguousarray(train.x, dtype=dtype)  # (n, n_in)
        labels = np.asarray(train.y)
        self.y = one_hot(labels, nets[0].sizes[-1], dtype)  # (n, n_out)
        self.n = len(self.x)
        self.spec = specs[0]  # the settings every member shares (population_key)
        self._nonzero: dict[int, EvaluationSet] = {}
        shared = {"training": (self.x, labels)}
        if test is not None:
            shared["test"] = (np.asarray(test.x, dtype=dtype), np.asarray(test.y))
        val = None if validation is None else (np.asarray(validation.x, dtype=dtype), np.asarray(validation.y))
        self.val, self.shared = val, shared
        for split, used in ((train, self.x), (validation, val and val[0]), (test, shared.get("test", (None,))[0])):
            self._keep_columns(split, used)
        self.members = []
        for net, spec, st, obs in zip(nets, specs, streams, observers):
            sets = dict(shared)
            if val is not None:
                sets["validation"] = self._validation_set(val, spec, st)
            self.members.append(_Member(net, spec, st, obs, sets))
        resume = list(resume or [None] * len(nets))
        self.control = control  # called with a Population after each evaluation of every member
        self.ids = list(range(len(nets)) if ids is None else ids)  # the members' names for the controller
        self.refill = refill  # at an epoch's boundary, a finished member's row takes the member this gives
        self.ended = ended  # called with (member, its History) as each member ends
        self.release, self.released = release, released  # hand-over at an epoch's boundary (release_members)
        if control is not None:
            for m in self.members:
                m.varied = True
        self.checkpoints = list(checkpoints or [None] * len(nets))  # per member: save(MemberState) or None
        for m, state in zip(self.members, resume):
            if state is not None:
                m.restore(state)
        weights, biases = stack_networks(list(nets))
        self.stepper = Stepper(weights, biases, hidden=nets[0].hidden, cost=nets[0].cost, penalty=self.spec.penalty,
                               n_train=self.n, eta=[m.eta for m in self.members], lmbda=[m.lmbda for m in self.members],
                               momentum=[s.momentum for s in specs])
        self.rows = np.arange(len(nets))  # per row of the stack: its member
        self.start = Position(epoch=0, offset=0, images_seen=0, next_eval=specs[0].monitor.every_images or 0)
        for r, state in enumerate(resume):
            if state is not None:
                self.start = state.position
                if state.velocities is not None and self.stepper.vel_w is not None:  # (members without momentum never read theirs)
                    for v, saved in zip(self.stepper.vel_w + self.stepper.vel_b, state.velocities[0] + state.velocities[1]):
                        v[r][...] = saved
        self.images_seen = self.start.images_seen
        self.next_change = self._next_change()
        self.epoch_shuffle: dict[int, dict] = {}  # per member: its shuffle state before this epoch's permutation
        self.perms: np.ndarray | None = None  # (K, n): this epoch's data order, a row per row of the stack

    @staticmethod
    def _validation_set(val, spec: TrainSpec, streams: Streams):
        vx, vy = val
        m = spec.monitor.validation_sample
        if m is not None and m < len(vx):
            pick = streams.monitor.choice(len(vx), size=m, replace=False)
            vx, vy = vx[pick], vy[pick]
        return vx, vy

    def _keep_columns(self, split, x) -> None:
        """A split that carries a ``derived`` cache (data.Split) keeps its evaluation form there,
        so that the runs of one process (a sweep, a study) compute it once."""
        if x is not None and split is not None and split.x is x and getattr(split, "derived", None) is not None:
            self._nonzero[id(x)] = evaluation_form(split)

    def _columns(self, x: np.ndarray) -> EvaluationSet:
        """The set without its all-zero columns, made once per array shared by members."""
        key = id(x)
        if key not in self._nonzero or self._nonzero[key].source is not x:
            self._nonzero[key] = EvaluationSet(x)
        return self._nonzero[key]

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, m: _Member) -> Record:
        out = {}
        for split in SPLIT_NAMES:
            wanted = any(f"{split}_{k}" in m.spec.monitor.metrics for k in ("cost", "accuracy"))
            if wanted and split in m.sets:
                x, labels = m.sets[split]
                out[split] = (*evaluate(m.net, self._columns(x), labels), len(labels))
        return m.record(self.images_seen - m.start_images, self.n, out)

    def evaluate_members(self, which: Sequence[int]) -> None:
        for i in which:
            m = self.members[i]
            stop = m.after_evaluation(self.evaluate(m))
            if stop:
                self.finish(i, stop)
            elif m.eta != self.stepper.eta[self.row_of(i)]:
                self.stepper.set_eta(self.row_of(i), m.eta)

    def row_of(self, i: int) -> int:
        return int(np.flatnonzero(self.rows == i)[0])

    def active_members(self) -> list[int]:
        return [int(i) for i in self.rows if self.members[i].active]

    def refill_rows(self, epoch: int) -> None:
        """At an epoch's boundary: each row whose member has finished takes a new member from
        ``refill`` (successive halving with refill), which starts its own epoch 0 here, until
        ``refill`` gives None. The new member draws its data order from its own streams and its
        row's arithmetic is its own, so it trains exactly as it would alone."""
        if self.refill is None:
            return
        for r, i in enumerate(self.rows):
            if self.members[i].active:
                continue
            new = self.refill()
            if new is None:
                self.refill = None
                return
            net, spec, streams, observers = new
            if population_key(net.sizes, net.hidden, net.cost, net.dtype, spec) != population_key(
                    self.members[i].net.sizes, self.members[i].net.hidden, self.members[i].net.cost,
                    self.members[i].net.dtype, self.spec):
                raise ValueError("a refilled member must be compatible with the population (population_key)")
            old = self.members[i].net  # keeps its final parameters: its row is reused
            old.weights, old.biases = [w.copy(order="K") for w in old.weights], [b.copy() for b in old.biases]
            sets = dict(self.shared)
            if self.val is not None:
                sets["validation"] = self._validation_set(self.val, spec, streams)
            m = _Member(net, spec, streams, observers, sets)
            m.start_epoch, m.start_images, m.varied = epoch, self.images_seen, self.control is not None
            self.stepper.put(r, net.weights, net.biases, eta=m.eta, lmbda=m.lmbda, momentum=spec.momentum)
            net.weights = [w[r] for w in self.stepper.weights]
            net.biases = [b[r] for b in self.stepper.biases]
            self.members.append(m)
            self.checkpoints.append(None)  # a refilled member keeps no checkpoint
            self.ids.append(len(self.ids))
            self.rows[r] = len(self.members) - 1
        self.next_change = self._next_change()

    def compact(self) -> np.ndarray | None:
        """Drop finished members from the stack (their networks keep their final weights);
        returns the rows kept, or None if nothing changed."""
        keep = np.flatnonzero([self.members[i].active for i in self.rows])
        if len(keep) == len(self.rows) or len(keep) == 0:
            return None
        self.stepper.keep(keep)
        self.rows = self.rows[keep]
        for r, i in enumerate(self.rows):
            net = self.members[i].net
            net.weights = [w[r] for w in self.stepper.weights]
            net.biases = [b[r] for b in self.stepper.biases]
        return keep

    def _next_change(self) -> float:
        """Images at which a member's piecewise schedule next changes eta or lambda (inf: never)."""
        pending = [m.points[m.next_point][0] + m.start_images for m in self.members
                   if m.active and m.next_point < len(m.points)]
        return min(pending, default=math.inf)

    def apply_schedules(self) -> None:
        """Set the eta and lambda of every member whose schedule reached a point."""
        for i in self.active_members():
            m = self.members[i]
            if m.due(self.images_seen - m.start_images):
                m.apply_points(self.images_seen - m.start_images)
                self.set_hyper(i, m.eta, m.lmbda)
        self.next_change = self._next_change()

    def controlled(self) -> None:
        """Hand the population to its controller (population-based training), if any, once every
        member still training was evaluated at this point."""
        if self.control is not None and self.active_members():
            self.control(Population(self))

    def copy_member(self, src: int, dst: int) -> None:
        """Member ``dst`` becomes a copy of member ``src`` (exploit): its rows of the stacked
        parameters and momentum velocities, its random streams (data order, dropout, the epoch's
        permutation, the validation sample), eta and lambda. Only the history stays the member's
        own; its last record names the donor. From here on ``dst`` trains exactly as ``src``
        would, so a member's network is always its lineage's: the root's initial network and
        streams under the schedule of eta and lambda along the lineage (``Piecewise`` replays it)."""
        rs, rd = self.row_of(src), self.row_of(dst)
        arrays = self.stepper.weights + self.stepper.biases
        if self.stepper.vel_w is not None:
            arrays += self.stepper.vel_w + self.stepper.vel_b
        for a in arrays:
            a[rd] = a[rs]
        if self.perms is not None:
            self.perms[rd] = self.perms[rs]
        s, d = self.members[src], self.members[dst]
        for name in ("init", "shuffle", "dropout", "monitor"):
            getattr(d.streams, name).bit_generator.state = getattr(s.streams, name).bit_generator.state
        if src in self.epoch_shuffle:
            self.epoch_shuffle[dst] = self.epoch_shuffle[src]
        if "validation" in s.sets:
            d.sets["validation"] = s.sets["validation"]
        d.best_params = None if s.best_params is None else tuple([p.copy(order="K") for p in ps] for ps in s.best_params)
        d.since_best = d.since_best_sched = 0
        d.generation = s.generation + 1
        if d.history.records:
            d.history.records[-1].donor, d.history.records[-1].generation = self.ids[src], d.generation
        self.set_hyper(dst, s.eta, s.lmbda)

    def set_hyper(self, i: int, eta: float, lmbda: float) -> None:
        """Member ``i`` trains on with this eta and lambda."""
        m, r = self.members[i], self.row_of(i)
        m.eta, m.lmbda = float(eta), float(lmbda)
        self.stepper.set_eta(r, m.eta)
        self.stepper.set_lmbda(r, m.lmbda)

    def finish(self, i: int, stop: tuple[str, str] | None) -> None:
        m = self.members[i]
        m.history.train_seconds = self.now - m.joined_at  # members that end together share the clock
        m.finish(stop)
        self.checkpoint([i], None)
        if self.ended is not None:
            self.ended(i, m.history)

    def checkpoint(self, which: Sequence[int], position: Position | None) -> None:
        """Each member's state into its checkpoint (if it keeps one): ``position`` for a member
        that goes on, None for one that has ended (its final parameters)."""
        for i in which:
            if self.checkpoints[i] is not None:
                self.checkpoints[i](self.state_of(i, position))

    def state_of(self, i: int, position: Position | None) -> MemberState:
        """Member ``i``'s state at ``position`` (None: its end). Its arrays are views into the
        stack, to be saved at once (``MemberState.copy`` keeps them)."""
        m = self.members[i]
        velocities = None
        if m.active and self.stepper.vel_w is not None:
            r = self.row_of(i)
            velocities = ([v[r] for v in self.stepper.vel_w], [v[r] for v in self.stepper.vel_b])
        mid_epoch = position is not None and position.offset > 0
        return MemberState(position=position or Position(-1, 0, self.images_seen, 0),
                           weights=m.net.weights, biases=m.net.biases, velocities=velocities,
                           best_params=m.best_params, eta=m.eta, lmbda=m.lmbda, next_point=m.next_point,
                           since_best=m.since_best,
                           since_best_sched=m.since_best_sched, history=m.history,
                           streams=stream_states(m.streams),
                           epoch_shuffle=self.epoch_shuffle.get(i) if mid_epoch else None,
                           finished=position is None)

    def release_members(self, position: Position) -> None:
        """At an epoch's boundary, with two members or more training: the members ``release`` picks
        (given each training member's epochs left, and the seconds the last epoch took) leave the
        population without ending, each handed with its state to
        ``released(member, state)``, to go on elsewhere exactly as it would have here (e.g. in a
        process that became idle: ``runner.sweep``)."""
        active = self.active_members()
        if len(active) < 2:  # a member alone is not handed over: it would only move
            return
        left = {i: self.members[i].spec.epochs - (position.epoch - self.members[i].start_epoch) for i in active}
        for i in self.release(left, self.now - self.epoch_began):
            m = self.members[i]
            m.history.train_seconds = self.now - m.joined_at  # its time so far: the rest adds to it
            state = self.state_of(i, position).copy()
            m.active = False  # not finished: no outcome, no final checkpoint here
            self.released(i, state)

    # -- training -----------------------------------------------------------------------------
    def masks(self, mb: int) -> list[np.ndarray] | None:
        """Inverted-dropout multipliers, (K, mb, h) per hidden layer, each member drawing
        from its own stream in the order a lone run draws them."""
        if not self.spec.dropout:
            return None
        dtype = self.x.dtype
        hidden = self.members[0].net.sizes[1:-1]
        per_member = []
        for i in self.rows:
            m = self.members[i]
            keep = 1.0 - m.spec.dropout
            per_member.append([((m.streams.dropout.random((mb, h)) < keep) / keep).astype(dtype) for h in hidden])
        return [np.stack([pm[l] for pm in per_member]) for l in range(len(hidden))]

    def run(self) -> list[History]:
        self.now = time.perf_counter()  # the time of the last training step (see finish)
        for m in self.members:
            m.joined_at = self.now - m.history.train_seconds  # a member handed over goes on with its time
        every, mb = self.spec.monitor.every_images, self.spec.mini_batch_size
        first, next_eval = self.start, self.start.next_eval
        epoch = first.epoch
        with np.errstate(all="ignore"):  # divergence is detected and reported, not warned
            while True:
                self.now = time.perf_counter()
                for i in self.active_members():
                    m = self.members[i]
                    if epoch - m.start_epoch >= m.spec.epochs:
                        self.finish(i, None)
                self.refill_rows(epoch)
                if self.release is not None and self.control is None and epoch > first.epoch:
                    self.release_members(Position(epoch, 0, self.images_seen, next_eval))
                self.epoch_began = self.now
                if not self.active_members():
                    break
                self.compact()
                if every:
                    self.epoch_shuffle = {int(i): self.members[i].streams.shuffle.bit_generator.state for i in self.rows}
                self.perms = np.stack([self.members[i].streams.shuffle.permutation(self.n)
                                       for i in self.rows])  # (K, n)
                t0 = time.perf_counter()
                offset = first.offset if epoch == first.epoch else 0
                for s in range(offset, self.n, mb):
                    if self.images_seen >= self.next_change:
                        self.apply_schedules()
                    idx = self.perms[:, s:s + mb]  # (K, batch)
                    self.stepper.step(self.x[idx], self.y[idx], self.masks(idx.shape[1]))
                    self.images_seen += idx.shape[1]
                    if every and self.images_seen >= next_eval:
                        next_eval += every
                        self._add_clock(time.perf_counter() - t0)
                        evaluated = self.active_members()
                        self.evaluate_members(evaluated)
                        kept = self.compact()
                        if kept is not None:
                            self.perms = self.perms[kept]
                        self.controlled()
                        self.checkpoint([i for i in evaluated if self.members[i].active],
                                        Position(epoch, s + mb, self.images_seen, next_eval))
                        if not self.active_members():
                            break
                        t0 = time.perf_counter()
                self._add_clock(time.perf_counter() - t0)
                if every is None:
                    evaluated = self.active_members()
                else:  # the last epoch of a member ends with an evaluation
                    evaluated = [i for i in self.active_members()
                                 if epoch - self.members[i].start_epoch == self.members[i].spec.epochs - 1
                                 and not self._evaluated_now(self.members[i])]
                self.evaluate_members(evaluated)
                self.refill_rows(epoch + 1)
                self.compact()
                if every is None:
                    self.controlled()
                if evaluated or every is None:
                    self.checkpoint([i for i in self.active_members()], Position(epoch + 1, 0, self.images_seen, next_eval))
                epoch += 1
        return [m.history for m in self.members]

    def _add_clock(self, seconds: float) -> None:
        self.now = time.perf_counter()
        for i in self.active_members():
            self.members[i].clock += seconds

    def _evaluated_now(self, m: _Member) -> bool:
        return bool(m.history.records) and m.history.records[-1].images_seen == self.images_seen - m.start_images


class Population:
    """What a population's controller (population-based training) sees and may do, after an
    evaluation of every member still training: their latest scores and hyper-parameters, and two
    actions, both between steps: ``copy`` (exploit: a member becomes a copy of another) and
    ``set_hyper`` (explore: new eta and lambda). Members are named by the ids given to
    ``fit_population`` (default 0..K-1). A controller that decides from the scores alone keeps
    the run deterministic."""

    def __init__(self, loop: _Loop):
        self._loop = loop
        self._index = {m: i for i, m in enumerate(loop.ids)}

    @property
    def images_seen(self) -> int:
        return self._loop.images_seen

    def members(self) -> list[int]:
        """The members still training."""
        return [self._loop.ids[i] for i in self._loop.active_members()]

    def score(self, m: int) -> float | None:
        """Member ``m``'s latest validation accuracy."""
        records = self._loop.members[self._index[m]].history.records
        return records[-1].validation_accuracy if records else None

    def hyper(self, m: int) -> tuple[float, float]:
        member = self._loop.members[self._index[m]]
        return member.eta, member.lmbda

    def copy(self, src: int, dst: int) -> None:
        self._loop.copy_member(self._index[src], self._index[dst])

    def set_hyper(self, m: int, eta: float, lmbda: float) -> None:
        self._loop.set_hyper(self._index[m], eta, lmbda)

    def end(self, m: int, reason: str) -> None:
        """Member ``m`` ends here, completed (e.g. the search's wall-clock budget is spent)."""
        self._loop.finish(self._index[m], (COMPLETED, reason))


def evaluation_form(split) -> EvaluationSet:
    """The split's inputs prepared for evaluation (``EvaluationSet``: MNIST's transposed pixels
    without its all-zero columns), kept in the split's ``derived`` cache for the process and,
    for a loaded dataset's split, in the array cache for the machine (``Split.kept``): later
    processes map it instead of making it (0.2-0.9 s for 50,000 images here)."""
    nz = split.derived.get("evaluation_set")
    if nz is None or nz.source is not split.x:
        parts = split.kept("evaluation", lambda: EvaluationSet(split.x).parts())
        nz = split.derived["evaluation_set"] = EvaluationSet(split.x, parts=parts)
    return nz


def check_population(nets: Sequence[Network], train, specs: Sequence[TrainSpec], validation) -> None:
    """The members can train together, on this data (ValueError otherwise)."""
    keys = {population_key(n.sizes, n.hidden, n.cost, n.dtype, s) for n, s in zip(nets, specs)}
    if len(keys) != 1:
        raise ValueError("population members must share architecture, cost, dtype, mini-batch size, "
                         "penalty type, dropout on/off and monitoring")
    mb = specs[0].mini_batch_size
    if mb < 1 or mb > len(train.x):
        raise ValueError(f"mini_batch_size must be in [1, {len(train.x)}], got {mb}")
    for spec in specs:
        if spec.needs_validation and (validation is None or "validation_accuracy" not in spec.monitor.metrics):
            raise ValueError("early stopping and halve_on_plateau need validation_accuracy monitored")


def fit_population(nets: Sequence[Network], train, specs: Sequence[TrainSpec], *, validation=None, test=None,
                   streams: Sequence[Streams], observers: Sequence[Sequence[Observer]] | None = None,
                   resume: Sequence[MemberState | None] | None = None,
                   checkpoints: Sequence[Callable[[MemberState], None] | None] | None = None,
                   control: Callable[[Population], None] | None = None,
                   ids: Sequence[int] | None = None,
                   refill: Callable[[], tuple | None] | None = None,
                   ended: Callable[[int, History], None] | None = None,
                   release: Callable[[dict[int, int], float], Sequence[int]] | None = None,
                   released: Callable[[int, MemberState], None] | None = None) -> list[History]:
    """Train K compatible networks (``population_key``) by mini-batch SGD, in place, as one
    batched computation; one History per member, each exactly the one it would have alone.
    Never raises on divergence: that member's outcome is "diverged" instead.

    ``checkpoints``: per member, a function that keeps its state (``train.checkpoint``) after
    each evaluation and at its end. ``resume``: per member, the state to go on from; the
    resumed members of one population stand at the same position (a checkpoint's epoch and
    offset), and the history returned is the whole run's. ``control``: called with the
    ``Population`` after each evaluation of every member still training (population-based
    training's exploit and explore), which names the members by ``ids`` (default 0..K-1); each
    record then reports lambda too. ``refill``: at each epoch's boundary, a finished member's
    row takes the member ``refill()`` gives, (net, spec, streams, observers), as long as it gives
    one (successive halving with refill); the histories of the members that joined follow the
    others', in the order they joined. ``ended``: called with (member, its History) as each
    member ends (its network then holds its final parameters), e.g. to record it at once.
    ``release``: at each epoch's boundary (not the first), given {member: epochs left} for the
    members training and the last epoch's seconds, the members to hand over: each leaves the population with its state,
    given to ``released(member, state)``; resumed alone from that state it trains exactly on
    (its history returned here stops at the hand-over; not with ``control``)."""
    check_population(nets, train, specs, validation)
    if resume is not None:
        if any(s is not None and s.finished for s in resume):
            raise ValueError("a member that finished is not trained again: its final state is its result")
        positions = {(s.position.epoch, s.position.offset) for s in resume if s is not None}
        if len(positions) > 1 or (positions and any(s is None for s in resume)):
            raise ValueError("the members of a resumed population must all resume from the same position")
    observers = observers or [() for _ in nets]
    return _Loop(nets, train, specs, validation, test, streams, observers, resume, checkpoints, control, ids,
                 refill, ended, release, released).run()


def fit(net: Network, train, spec: TrainSpec, *, validation=None, test=None, streams: Streams | None = None,
        seed: int = 0, observers: Sequence[Observer] = ()) -> History:
    """Train ``net`` in place by mini-batch SGD and return its History: a population of one.

    ``streams`` (or ``seed``) supplies the shuffling, dropout and monitoring randomness."""
    streams = streams or Streams.from_seed(seed)
    return fit_population([net], train, [spec], validation=validation, test=test, streams=[streams],
                          observers=[observers])[0]
