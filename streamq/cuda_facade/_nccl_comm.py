"""NCCL communicators over MPI: unique ids, set-up, ordering, failure and departure notices.

Set-up follows NCCL's bootstrap. ``ncclGetUniqueId`` makes an id naming the
calling process (its rank in MPI's world) as the *root*; the user hands the id
to every rank (an MPI broadcast, as with NCCL); each rank's
``ncclCommInitRank`` sends the root a *join* message (on COMM_WORLD, with a
reserved tag), the root's progress thread answers every member with the
*roster* (the world rank of each NCCL rank) once all ``nranks`` have joined,
and the members build their private MPI communicator with
``MPI_Comm_create_group`` — collective over the members only.

Failure: a communicator fails when one of its operations times out, when this
rank's device failed before an operation it had promised, or on
``ncclCommAbort``; the rank then tells its peers with a *notice* (on the
communicator's own MPI communicator). A rank that exits, destroys the
communicator or dies of an unhandled exception sends one too. A notice says
how many operations the sender finished; a peer's operations beyond that
number fail at once with ncclRemoteError naming the sender and its reason,
while earlier ones (which the sender did take part in) complete normally.
"""

from __future__ import annotations

import atexit
import itertools
import secrets
import struct
import sys
import threading
import time
import weakref

from . import _context
from ._nccl_engine import Job, engine, stop_engine, timeout_s
from ._nccl_mpi import BOOT_TAG, MPI, NOTICE_TAG, world
from ._nccl_types import NCCL_UNIQUE_ID_BYTES, NcclError, ncclResult_t

__all__ = ["InitJob", "ncclComm", "ncclUniqueId", "new_unique_id"]

_MAGIC = b"SQNCCL01"
_ID_LAYOUT = struct.Struct("<8sqqq")   # magic, root world rank, counter, nonce
_counter = itertools.count(1)
_comm_ids = itertools.count(1)


class ncclUniqueId:
    """NCCL's unique id: ``internal`` holds 128 opaque bytes.

    Made by ``ncclGetUniqueId`` on one rank and passed by the user to every
    rank of the new communicator (pickle it, or send ``internal`` as bytes);
    ``ncclUniqueId(internal=b)`` rebuilds it from the bytes.
    """

    __slots__ = ("internal",)

    def __init__(self, internal: bytes = bytes(NCCL_UNIQUE_ID_BYTES)):
        data = bytes(internal)
        if len(data) != NCCL_UNIQUE_ID_BYTES:
            raise ValueError(f"internal must be {NCCL_UNIQUE_ID_BYTES} bytes, got {len(data)}")
        self.internal = data

    def __eq__(self, other) -> bool:
        return isinstance(other, ncclUniqueId) and other.internal == self.internal

    def __hash__(self) -> int:
        return hash(self.internal)

    def __reduce__(self):
        return (ncclUniqueId, (self.internal,))

    def __repr__(self) -> str:
        key = _parse(self, strict=False)
        return f"<ncclUniqueId root={key[0]} n={key[1]}>" if key else "<ncclUniqueId (not made here)>"


def _parse(uid, strict: bool = True):
    """(root world rank, counter, nonce) of an id made by ncclGetUniqueId."""
    raw = uid.internal if isinstance(uid, ncclUniqueId) else None
    if raw is None:
        if strict:
            raise NcclError(ncclResult_t.ncclInvalidArgument,
                            f"commId must be an ncclUniqueId, got {type(uid).__name__}")
        return None
    magic, root, counter, nonce = _ID_LAYOUT.unpack_from(raw)
    if magic != _MAGIC or any(raw[_ID_LAYOUT.size:]) or not 0 <= root < world().Get_size():
        if strict:
            raise NcclError(ncclResult_t.ncclInvalidArgument,
                            "commId was not made by ncclGetUniqueId (of this MPI job)")
        return None
    return (root, counter, nonce)


def new_unique_id() -> ncclUniqueId:
    """ncclGetUniqueId: a fresh id whose root is this process; its progress thread
    answers the joins."""
    me = world().Get_rank()
    key = (me, next(_counter), secrets.randbits(62))
    _bootstrap().add_root(key)
    raw = _ID_LAYOUT.pack(_MAGIC, *key)
    return ncclUniqueId(raw + bytes(NCCL_UNIQUE_ID_BYTES - len(raw)))


class _Bootstrap:
    """The set-up messages on COMM_WORLD: joins (to a root) and rosters (to members)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.roots: dict[tuple, dict] = {}     # ids made here -> {"joins": {rank: world}, "nranks", "error"}
        self.mail: dict[tuple, dict] = {}      # rosters received, by id
        self.expecting = 0                     # member set-ups in flight in this process
        engine().add_listener(self)

    def add_root(self, key) -> None:
        with self.lock:
            self.roots[key] = {"joins": {}, "nranks": None, "error": None}
        engine().wake()

    def active(self) -> bool:
        return bool(self.roots) or self.expecting > 0

    def poll(self) -> None:
        comm = world()
        while True:
            msg = comm.improbe(MPI.ANY_SOURCE, BOOT_TAG)
            if msg is None:
                return
            data = msg.recv()
            if data.get("kind") == "join":
                self._join(data)
            elif data.get("kind") == "roster":
                self.mail[data["key"]] = data

    def _reply(self, key, world_rank: int, **fields) -> None:
        engine().send(world().isend({"kind": "roster", "key": key, **fields}, dest=world_rank, tag=BOOT_TAG))

    def _join(self, data: dict) -> None:
        key, nranks, rank, who = tuple(data["key"]), data["nranks"], data["rank"], data["world"]
        with self.lock:
            entry = self.roots.get(key)
        if entry is None:
            self._reply(key, who, error="the unique id is unknown to its root or was already used "
                                        "for a communicator")
            return
        if entry["error"] is None:
            if entry["nranks"] is None:
                entry["nranks"] = nranks
            if nranks != entry["nranks"]:
                entry["error"] = (f"ranks disagree on nranks: world rank {who} passed {nranks}, "
                                  f"another rank {entry['nranks']}")
            elif rank in entry["joins"]:
                entry["error"] = (f"rank {rank} was claimed twice (world ranks {entry['joins'][rank]} "
                                  f"and {who})")
            elif who in entry["joins"].values():
                entry["error"] = (f"world rank {who} joined twice: over MPI each rank of a communicator "
                                  "must be a separate process")
        entry["joins"].setdefault(rank, who)
        members = sorted(set(entry["joins"].values()) | {who})
        if entry["error"] is not None:
            for member in members:
                self._reply(key, member, error=entry["error"])
            return
        if len(entry["joins"]) == entry["nranks"]:
            roster = [entry["joins"][r] for r in range(entry["nranks"])]
            for member in roster:
                self._reply(key, member, world=roster)
            with self.lock:
                del self.roots[key]


_boot: _Bootstrap | None = None
_boot_lock = threading.Lock()


def _bootstrap() -> _Bootstrap:
    global _boot
    if _boot is None:
        with _boot_lock:
            if _boot is None:
                _boot = _Bootstrap()
    return _boot


class _Mail:
    """Waitable: the roster for ``key`` has arrived."""

    def __init__(self, key):
        self.key = key
        self.value = None

    def test(self) -> bool:
        self.value = _bootstrap().mail.pop(self.key, None) if self.value is None else self.value
        return self.value is not None


class InitJob(Job):
    """ncclCommInitRank on the progress thread: join, wait for the roster, build the MPI communicator."""

    def __init__(self, comm: ncclComm, key):
        super().__init__("ncclCommInitRank")
        self.comm_obj = comm
        self.key = key
        self.stage = "joining"

    def describe(self) -> str:
        c = self.comm_obj
        return (f"ncclCommInitRank(rank {c.rank} of {c.nranks}, root world rank {self.key[0]}): "
                f"{self.stage}")

    def body(self):
        boot = _bootstrap()
        with boot.lock:
            boot.expecting += 1
        try:
            c = self.comm_obj
            wc = world()
            yield [wc.isend({"kind": "join", "key": self.key, "nranks": c.nranks, "rank": c.rank,
                             "world": wc.Get_rank()}, dest=self.key[0], tag=BOOT_TAG)]
            self.stage = "waiting for every rank to join"
            mail = _Mail(self.key)
            yield [mail]
            if "error" in mail.value:
                raise NcclError(ncclResult_t.ncclInvalidUsage, f"ncclCommInitRank: {mail.value['error']}")
            self.stage = "creating the MPI communicator"
            group = wc.Get_group().Incl(mail.value["world"])
            try:
                tag = (self.key[1] * 1031 + self.key[0]) % 30000
                c.attach(wc.Create_group(group, tag), mail.value["world"])
            finally:
                group.Free()
        finally:
            with boot.lock:
                boot.expecting -= 1


class _Departed:
    """What a peer's notice said: why it left and how many operations it finished."""

    __slots__ = ("coll_done", "p2p_done", "rank", "reason")

    def __init__(self, rank: int, reason: str, coll_done: int, p2p_done: int):
        self.rank = rank
        self.reason = reason
        self.coll_done = coll_done
        self.p2p_done = p2p_done


def _departure_error(job, gone: _Departed) -> NcclError:
    return NcclError(ncclResult_t.ncclRemoteError,
                     f"{job.describe()}: rank {gone.rank} {gone.reason} (it had finished {gone.coll_done} "
                     "collective operation(s) on this communicator); this operation can never complete")


class ncclComm:
    """An NCCL communicator (``ncclComm_t``): this process's rank in a private MPI communicator.

    Host threads issue operations (:meth:`issue` numbers them); the progress
    thread runs them in that order and owns the fields marked (engine).
    """

    def __init__(self, nranks: int, rank: int, device: int):
        self.id = next(_comm_ids)
        self.nranks = nranks
        self.rank = rank
        self.device = device
        self.timeout = timeout_s()
        self.mpi = None                     # the private MPI communicator, once set up
        self.world_ranks: list[int] = []
        self.state = "init"                 # init -> ready -> destroyed; failed set-up: "invalid"
        self.init_job: InitJob | None = None
        self.error: NcclError | None = None  # the asynchronous error (ncclCommGetAsyncError)
        self.last_failure: BaseException | None = None   # the latest failed operation (ncclGetLastError)
        self.lock = threading.Condition(threading.Lock())
        self.next_seq = 0                   # host: next operation number
        self.next_coll = 0                  # host: next collective-batch number
        self.next_p2p: dict[int, int] = {}  # host: next p2p-batch number with each peer
        self.outstanding = 0                # issued, not finished
        self.next_run = 0                   # (engine) seq allowed to start
        self.coll_done = 0                  # (engine) collective batches finished
        self.p2p_done: dict[int, int] = {}  # (engine) p2p batches finished, by peer
        self.departed: dict[int, _Departed] = {}   # (engine)
        self.in_engine = 0                  # (engine) jobs running or parked
        self.notified = False               # (engine) our own notice went out
        _live.add(self)

    def __repr__(self) -> str:
        return f"<ncclComm {self.id} rank {self.rank}/{self.nranks} device {self.device} {self.state}>"

    # -- set-up (progress thread) --------------------------------------------------------------
    def attach(self, mpi_comm, world_ranks: list[int]) -> None:
        """Adopt the MPI communicator built for this communicator."""
        if mpi_comm.Get_rank() != self.rank or mpi_comm.Get_size() != self.nranks:
            raise NcclError(ncclResult_t.ncclInternalError,
                            f"MPI communicator has rank {mpi_comm.Get_rank()} of {mpi_comm.Get_size()}, "
                            f"expected {self.rank} of {self.nranks}")
        self.mpi = mpi_comm
        self.world_ranks = list(world_ranks)
        self.state = "ready"
        engine().add_listener(self)

    # -- host side ----------------------------------------------------------------------------
    def usable(self) -> None:
        """Raise ncclInvalidArgument if the communicator cannot take operations."""
        if self.state == "destroyed":
            raise NcclError(ncclResult_t.ncclInvalidArgument, f"communicator {self.id} was destroyed")
        if self.state == "invalid":
            raise NcclError(ncclResult_t.ncclInvalidArgument,
                            f"communicator {self.id} failed to initialize: {self.error}")

    def issue(self, job, peers: list[int], collective: bool) -> None:
        """Number ``job`` (host call order) and count it as outstanding."""
        with self.lock:
            self.usable()
            job.comm = self
            job.seq = self.next_seq
            self.next_seq += 1
            job.coll_index = self.next_coll if collective else None
            if collective:
                self.next_coll += 1
            job.p2p_index = {}
            for peer in sorted(set(peers)):
                job.p2p_index[peer] = self.next_p2p.get(peer, 0)
                self.next_p2p[peer] = job.p2p_index[peer] + 1
            self.outstanding += 1

    def drain(self, timeout: float) -> bool:
        """Wait until every issued operation finished; False on timeout."""
        end = time.monotonic() + timeout
        with self.lock:
            while self.outstanding:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 0.5))
        return True

    # -- progress thread ----------------------------------------------------------------------
    def may_start(self, job) -> bool:
        """True if ``job`` is next in this communicator's order."""
        return job.seq == self.next_run

    def refusal(self, job) -> NcclError | None:
        """Why ``job`` must fail without running (communicator failed, a peer left), or None."""
        if getattr(job, "abort", None) is not None:
            self.fail(job.abort)
        if self.error is not None:
            return NcclError(self.error.code, f"{job.describe()}: communicator {self.id} failed earlier: "
                                              f"{self.error.detail}")
        self.poll()
        for gone in self.departed.values():
            late = ((job.coll_index is not None and job.coll_index >= gone.coll_done)
                    or job.p2p_index.get(gone.rank, -1) >= gone.p2p_done)
            if late:
                return _departure_error(job, gone)
        return None

    def admitted(self) -> None:
        """A job of this communicator entered the progress thread."""
        self.in_engine += 1

    def job_done(self, job, error) -> None:
        """``job`` finished (``error`` None, or why it failed)."""
        self.in_engine = max(self.in_engine - 1, 0)
        self.next_run = max(self.next_run, job.seq + 1)
        if error is not None:
            self.last_failure = error
        finished = error is None or getattr(error, "consistent", False)
        if finished:
            if job.coll_index is not None:
                self.coll_done = max(self.coll_done, job.coll_index + 1)
            for peer, index in job.p2p_index.items():
                self.p2p_done[peer] = max(self.p2p_done.get(peer, 0), index + 1)
        elif self.error is None and isinstance(error, NcclError):
            self.fail(error)
        with self.lock:
            self.outstanding -= 1
            self.lock.notify_all()

    def fail(self, error: NcclError, culprit=None, reason: str | None = None) -> None:
        """Mark the communicator failed, tell the peers, fail its other operations."""
        if self.error is None:
            self.error = error
        self.notify_peers(reason or f"failed ({error.code.name}: {error.detail})")
        eng = engine()
        for job in eng.jobs_of(self):
            if job is not culprit:
                eng.fail(job, NcclError(error.code, f"{job.describe()}: communicator {self.id} failed: "
                                                    f"{error.detail}"))

    def notify_peers(self, reason: str) -> None:
        """Send every peer a notice: this rank leaves, with how much it finished."""
        if self.notified or self.mpi is None:
            return
        self.notified = True
        eng = engine()
        for peer in range(self.nranks):
            if peer != self.rank:
                notice = {"rank": self.rank, "world": self.world_ranks[self.rank], "reason": reason,
                          "coll_done": self.coll_done, "p2p_done": self.p2p_done.get(peer, 0)}
                eng.send(self.mpi.isend(notice, dest=peer, tag=NOTICE_TAG))

    def active(self) -> bool:
        """Listener protocol: poll for notices while operations are pending."""
        return self.in_engine > 0 and self.mpi is not None

    def poll(self) -> None:
        """Receive peers' notices; fail the operations they make impossible."""
        if self.mpi is None:
            return
        while True:
            msg = self.mpi.improbe(MPI.ANY_SOURCE, NOTICE_TAG)
            if msg is None:
                break
            data = msg.recv()
            self.departed[data["rank"]] = _Departed(
                data["rank"], f"(world rank {data['world']}) {data['reason']}", data["coll_done"],
                data["p2p_done"])
        if not self.departed:
            return
        eng = engine()
        for job in eng.jobs_of(self):
            refusal = None
            for gone in self.departed.values():
                if ((job.coll_index is not None and job.coll_index >= gone.coll_done)
                        or job.p2p_index.get(gone.rank, -1) >= gone.p2p_done):
                    refusal = _departure_error(job, gone)
                    break
            if refusal is not None:
                if self.error is None:
                    self.error = refusal
                eng.fail(job, refusal)

    def close(self, free: bool) -> None:
        """(progress thread) Stop listening; free the MPI communicator if nothing is posted on it."""
        engine().remove_listener(self)
        if free and self.mpi is not None and self.error is None:
            self.mpi.Free()
        self.mpi = None if free else self.mpi


class CloseJob(Job):
    """ncclCommDestroy / ncclCommAbort on the progress thread: notice to the peers, then free."""

    def __init__(self, comm: ncclComm, reason: str, abort: bool):
        super().__init__("ncclCommAbort" if abort else "ncclCommDestroy")
        self.target = comm
        self.reason = reason
        self.abort_comm = abort

    def body(self):
        c = self.target
        if self.abort_comm:
            c.fail(NcclError(ncclResult_t.ncclInvalidUsage, "aborted by ncclCommAbort"), reason=self.reason)
        else:
            c.notify_peers(self.reason)
        yield []
        c.close(free=not self.abort_comm)


# -- every communicator of the process, and what happens at exit -----------------------------
_live: weakref.WeakSet[ncclComm] = weakref.WeakSet()
_exit = {"exception": None, "hooked": False}
_hook_lock = threading.Lock()


def install_exit_hooks() -> None:
    """Once: record an unhandled exception (sys.excepthook) and tell peers at exit."""
    with _hook_lock:
        if _exit["hooked"]:
            return
        _exit["hooked"] = True
        previous = sys.excepthook

        def hook(kind, value, tb):
            _exit["exception"] = value
            previous(kind, value, tb)

        sys.excepthook = hook
        atexit.register(_at_exit)
        _context.reset_hooks.append(_device_reset)


def _at_exit() -> None:
    """Tell the peers of every live communicator that this rank is leaving, then stop the
    progress thread (no MPI call may run while mpi4py finalizes MPI).

    After an unhandled exception the notice goes first (the peers learn at once
    why), then this rank's queued operations fail; after a normal exit this
    rank's issued operations finish first (bounded by the timeout)."""
    live = [c for c in list(_live) if c.state == "ready"]
    exc = _exit["exception"]
    jobs = []
    if live and exc is not None:
        reason = f"exited with an unhandled exception: {type(exc).__name__}: {exc}"
        error = NcclError(ncclResult_t.ncclRemoteError, f"this rank is exiting: {reason}")
        jobs = [engine().submit(_FailJob(c, error, reason)) for c in live]
    elif live:
        for c in live:
            c.drain(c.timeout)
        jobs = [engine().submit(CloseJob(c, "exited without destroying the communicator", False))
                for c in live]
    for job in jobs:
        job.done.wait(5.0)
    for c in live:
        c.state = "destroyed"
    stop_engine()


def _device_reset(device) -> None:
    """cudaDeviceReset invalidates the communicators bound to the device (as in NCCL)."""
    for c in list(_live):
        if c.device == device.index and c.state == "ready":
            error = NcclError(ncclResult_t.ncclUnhandledCudaError, f"device {device.index} was reset")
            engine().wait(engine().submit(_FailJob(c, error, f"reset its device {device.index}")))
            c.state = "destroyed"


class _FailJob(Job):
    """Fail a communicator now (with a notice to its peers)."""

    def __init__(self, comm: ncclComm, error: NcclError, reason: str):
        super().__init__("fail")
        self.target = comm
        self.error = error
        self.reason = reason

    def body(self):
        self.target.fail(self.error, reason=self.reason)
        yield []

