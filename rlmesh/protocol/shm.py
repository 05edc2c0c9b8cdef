"""The same-host fast path: request/reply messages through one shared-memory segment per session.

The server creates the segment (mode 0600, an unguessable name, its own ``/dev/shm``), offers it
in the handshake together with a nonce, and the client maps it by name: through
``/proc/<server pid>/root`` when the server runs in a container of this host. The nonce, sent
over the (possibly encrypted) zmq channel and written into the segment, proves both ends mapped
the same memory; then the name is unlinked, so nothing is left in ``/dev/shm`` whatever happens
to either end later.

Each direction is a mailbox: the writer copies a message's frames into its data area and bumps
a sequence word; the reader spins on that word for a short, adaptive while and then sleeps on
it with a futex (a kernel wait on a word of shared memory, which works across containers
since they share the kernel). A sleeper announces itself with a flag, so a writer only makes
the wake-up system call when someone sleeps. A message bigger than the data area travels in
chunks, each acknowledged. An end that goes away (the server detaching a session, either end
closing) raises its "hung up" word and wakes the peer, which then gets a ``ConnectionError``
once it has read every message sent before: nothing is ever written over a message the peer may
still be reading. Everything read from the segment is bounds-checked: a peer writing garbage
gets a :class:`~rlmesh.errors.ProtocolError`, never an out-of-bounds read.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import platform
import secrets
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from rlmesh.errors import ProtocolError

__all__ = ["Channel", "ChannelClosed", "SegmentOffer", "available", "create_segment", "open_segment", "local_pid", "kernel_id"]

log = logging.getLogger(__name__)

_MAGIC = b"RLMSHM01"
_PAGE = 4096
_NONCE = 16
#: Word indices (uint32) of a mailbox's control words: the writer's sequence, the reader's
#: acknowledgement of a chunk, and a "sleeping on it" flag for each of the two.
_SEQ, _ACK = 0, 1
_SLEEPS = 2  # flag of word i is word i + _SLEEPS
_BOX_WORD = (32, 48)  # request mailbox at byte 128, reply mailbox at byte 192
#: Word set by the client (index 0) or the server (index 1) when it has gone for good.
_HUNG_UP = (16, 17)
_CHUNK_HEAD = struct.Struct("<QQ")  # message length, this chunk's length
_FRAME_COUNT = struct.Struct("<I")
#: A one-frame message in one chunk (most requests and replies), written and read in one go:
#: chunk head, frame count (1), frame length.
_SINGLE = struct.Struct("<QQIQ")
_MASK = 0xFFFFFFFF
_MAX_FRAMES = 1 << 16
#: Longest a single futex sleep lasts before the waiter looks at deadlines, stop flags and
#: whether its peer is alive.
SLICE_S = 0.1
#: Upper bound of the adaptive spin before sleeping (nanoseconds). A sleeper's wake-up costs
#: tens of microseconds, more on a virtual machine whose idle CPU the host has parked: a peer
#: answering within a millisecond (a step of a vector env) is cheaper to wait for awake.
MAX_SPIN_NS = 1_000_000
#: A yield that takes longer than this (ns) means another process had to run on this CPU.
_CROWDED_NS = 20_000
#: How many such yields in one wait mean the machine is crowded.
_CROWDED_YIELDS = 3
#: Plain spinning (no yields) at the start of a wait (ns).
_EAGER_NS = 15_000
_SHM_ROOT = "/dev/shm"
_PREFIX = "rlmesh-"

_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
# x86-64 only: its stores become visible in program order, and _fence() (a locked instruction)
# is a full barrier there. Weaker memory models (ARM) would need real fences around the
# sequence words, which Python cannot issue; clients there stay on zmq.
_SYS_FUTEX = {"x86_64": 202, "amd64": 202}.get(platform.machine().lower())


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _libc_syscall() -> Any:
    if _SYS_FUTEX is None or not os.path.isdir(_SHM_ROOT):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # CDLL calls release the GIL while they block
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    return syscall


_syscall = _libc_syscall()


def available() -> bool:
    """Whether this platform can use the shared-memory path (x86-64 Linux with /dev/shm)."""
    return _syscall is not None


def kernel_id() -> str:
    """This kernel's boot id: the same in every container of a host, different on any other host."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return file.read().strip()
    except OSError:
        return ""


_FENCE_LOCK = threading.Lock()


def _fence() -> None:
    """A full memory barrier on x86-64: an uncontended lock's atomic instruction orders a store
    before a later load, which the announce-then-check handshake of sleeper and waker relies on.
    (``with``, not ``acquire()`` then ``release()``: Ctrl-C lands after a call returns, and one
    landing after ``acquire()`` would leave the lock held, and every channel in the process stuck.)"""
    with _FENCE_LOCK:
        pass


def _pid_namespace() -> str:
    """This process's pid namespace, as ``pid:[inode]`` ("" where /proc cannot tell)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _namespace_prefix() -> str:
    """Names of segments made in this pid namespace: a pid alone names different processes in
    different containers that may share a ``/dev/shm``, so names carry the namespace's inode."""
    namespace = _pid_namespace()
    return f"{_PREFIX}{namespace[namespace.find('[') + 1:-1] or 0}-"


def _segment_prefix() -> str:
    """Names of this process's segments."""
    return f"{_namespace_prefix()}{os.getpid()}-"


def local_pid() -> dict[str, Any]:
    """How a client finds this process: its pid and its pid namespace."""
    return {"pid": os.getpid(), "pidns": _pid_namespace()}


def _host_pid(pid: int, namespace: str) -> int | None:
    """This host's pid of the process that is ``pid`` in pid namespace ``namespace`` (a container)."""
    try:
        if os.readlink("/proc/self/ns/pid") == namespace:
            return pid
    except OSError:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as file:
                nspid = next((line.split()[1:] for line in file if line.startswith("NSpid:")), [])
            if len(nspid) > 1 and nspid[-1] == str(pid) and os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                return int(entry)
        except (OSError, ValueError):  # gone, or not ours to look at
            continue
    return None


class SegmentOffer:
    """What the server tells a client about a segment it made for it (the ``shm`` hello field)."""

    def __init__(self, name: str, nonce: bytes, size: int, pid: int, pidns: str) -> None:
        self.name, self.nonce, self.size, self.pid, self.pidns = name, nonce, size, pid, pidns

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "nonce": self.nonce, "size": self.size, "pid": self.pid, "pidns": self.pidns}

    @classmethod
    def from_wire(cls, data: Any) -> SegmentOffer:
        try:
            name, nonce, size, pid, pidns = (data[key] for key in ("name", "nonce", "size", "pid", "pidns"))
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed shared-memory offer: {exc!r} missing") from exc
        # Exact types: converting what a peer sent (bytes(2**62), int(inf)) can itself blow up.
        if not (type(name) is str and type(nonce) is bytes and type(size) is int and type(pid) is int
                and type(pidns) is str):
            raise ProtocolError("malformed shared-memory offer: a field of the wrong type")
        if (not name.startswith(_PREFIX) or "/" in name or len(nonce) != _NONCE
                or size < 3 * _PAGE or pid <= 0):  # a page of words, and at least a page each way
            raise ProtocolError("malformed shared-memory offer")
        return cls(name, nonce, size, pid, pidns)


def _sweep_orphans() -> None:
    """Remove segments of this user whose server died before a client mapped them.

    Only names of this pid namespace: a pid of another one means another process."""
    namespace = _namespace_prefix()
    try:
        names = [n for n in os.listdir(_SHM_ROOT) if n.startswith(namespace)]
    except OSError:
        return
    for name in names:
        try:
            pid = int(name[len(namespace):].split("-", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(_SHM_ROOT, name))
            except OSError:
                pass
        except (ValueError, OSError):  # not ours, or a live process of another user
            continue


def create_segment(capacity: int, *, spin: bool = True) -> tuple[Channel, SegmentOffer]:
    """A new segment with ``capacity`` bytes per direction, as the server's channel and its offer.

    ``spin=False`` makes the server's end sleep at once while it waits (see :class:`Channel`).
    """
    if not available():
        raise OSError("shared memory is not available on this platform")
    _sweep_orphans()
    capacity = max(_PAGE, -(-capacity // _PAGE) * _PAGE)
    name = _segment_prefix() + secrets.token_hex(16)
    path = os.path.join(_SHM_ROOT, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        size = _PAGE + 2 * capacity
        # Reserve the pages now: a full tmpfs must fail here, not as a SIGBUS mid-step.
        os.posix_fallocate(fd, 0, size)
        memory = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    nonce = secrets.token_bytes(_NONCE)
    memory[:8] = _MAGIC
    memory[8:8 + _NONCE] = nonce
    struct.pack_into("<Q", memory, 24, capacity)
    channel = Channel(memory, capacity, server=True, path=path, spin=spin)
    offer = SegmentOffer(name, nonce, size, **local_pid())
    return channel, offer


def open_segment(offer: SegmentOffer) -> Channel | None:
    """The client's channel for ``offer``, or ``None`` if this process cannot reach that segment
    (another host, or a container whose memory this user may not open)."""
    if not available():
        return None
    pid = _host_pid(offer.pid, offer.pidns)
    if pid is None:
        log.debug("shared memory: the server's process is not visible from here")
        return None
    path = f"/proc/{pid}/root{_SHM_ROOT}/{offer.name}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        log.debug("shared memory: cannot open the server's segment: %s", exc)
        return None
    try:
        if os.fstat(fd).st_size != offer.size:
            return None
        memory = mmap.mmap(fd, offer.size)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    capacity = struct.unpack_from("<Q", memory, 24)[0]
    if (memory[:8] != _MAGIC or not secrets.compare_digest(memory[8:8 + _NONCE], offer.nonce)
            or _PAGE + 2 * capacity != offer.size):
        memory.close()  # the same name, but not the memory that server offered
        return None
    if capacity < _PAGE or capacity % _PAGE:  # never what create_segment makes
        memory.close()
        raise ProtocolError(f"the server's shared-memory segment declares {capacity} bytes per direction; "
                            f"an rlmesh server makes whole pages of {_PAGE} bytes")
    # A server in this very process (a thread of it) needs the GIL to answer: spinning for its
    # reply would only keep it from running.
    return Channel(memory, capacity, server=False, spin=offer.pid != os.getpid())


class ChannelClosed(ConnectionError):
    """This end's channel was closed, by another thread, while a call used it."""


class Channel:
    """One end of a segment: :meth:`send` a message, :meth:`receive` the peer's.

    Messages strictly alternate (request, reply, request, ...), as the protocol does. With
    ``spin=False`` a wait goes to sleep at once: for an end that shares its process (and its
    GIL) with the peer it waits for.
    """

    def __init__(self, memory: mmap.mmap, capacity: int, *, server: bool, path: str | None = None,
                 spin: bool = True) -> None:
        self._memory = memory
        self.capacity = capacity
        self.path = path
        self._view = memoryview(memory)
        self._words = self._view[:_PAGE].cast("I")
        self._anchor = ctypes.c_char.from_buffer(memory)  # for the futex addresses
        self._base = ctypes.addressof(self._anchor)
        mine, theirs = (1, 0) if server else (0, 1)  # a server writes replies, reads requests
        self._out_word, self._in_word = _BOX_WORD[mine], _BOX_WORD[theirs]
        self._my_hang_up, self._peer_hang_up = _HUNG_UP[mine], _HUNG_UP[theirs]
        self._gone_message = ("the client closed its shared-memory channel" if server else
                              "this client is not attached any more (it was silent for too long, or "
                              "the server stopped); reconnect with a new client")
        self._out_data = _PAGE + mine * capacity
        self._in_data = _PAGE + theirs * capacity
        #: The largest frame that travels alone in one chunk (most requests and replies), and where.
        self._single_room = capacity - _SINGLE.size
        self._single_at = self._out_data + _SINGLE.size
        self._sent = self._words[self._out_word + _SEQ]
        self._seen = self._words[self._in_word + _SEQ]
        self._spins = spin
        self._spin_ns = MAX_SPIN_NS // 2 if spin else 0
        #: Whether a wait starts with plain spinning: not after one whose yields gave the CPU away.
        self._eager = True
        #: This end's last message is sent whole and no message of the peer was taken since: the
        #: peer owes an answer. Set and cleared next to the store of the sequence word it follows,
        #: with no call between, so that a KeyboardInterrupt cannot fall between the two.
        self.awaiting = False
        #: A message in pieces was cut off (an exception while it travelled): the peer holds or
        #: sent half a message, and this channel cannot carry another one.
        self.torn = False
        self.closed = False
        self._closing = threading.Lock()  # two threads may close it at once (a watchdog, say)
        self._closed_reason = "the shared-memory channel is closed"

    # --- waiting ------------------------------------------------------------------------------

    def _futex(self, word: int, operation: int, value: int, timeout: float | None = None) -> None:
        address = ctypes.c_void_p(self._base + 4 * word)
        spec = None
        if timeout is not None:
            spec = ctypes.byref(_Timespec(int(timeout), int((timeout % 1) * 1e9)))
        _syscall(_SYS_FUTEX, address, operation, ctypes.c_uint32(value), spec, None, 0)

    def _post(self, box: int, index: int, value: int) -> None:
        self._words[box + index] = value
        self._wake(box + index)

    def _wake(self, word: int) -> None:
        """Wake the peer if it sleeps on ``word``, which was just stored."""
        _fence()
        if self._words[word + _SLEEPS]:
            self._futex(word, _FUTEX_WAKE, 1 << 30)

    def _wait(self, box: int, index: int, seen: int, timeout: float, sleep: bool = True) -> bool:
        """Wait up to ``timeout`` s for word ``index`` of mailbox ``box`` to move from ``seen``."""
        words, word = self._words, box + index
        if words[word] != seen:
            return True
        self._check_peer(word, seen)
        clock, yield_ = time.perf_counter_ns, os.sched_yield
        started = now = clock()
        spin_until = started + min(self._spin_ns, int(timeout * 1e9))
        # First a few microseconds of plain spinning: a quick peer answers within them, and a
        # yield on a busy machine can cost a whole time slice of another process. Not when the
        # last wait's yields gave this CPU away: then the peer may be queued on it, waiting for
        # this spin to end (with more waiters than CPUs, that costs half the steps).
        eager_until = min(spin_until, started + _EAGER_NS) if self._eager else started
        while now < eager_until:
            if words[word] != seen:
                self._adapt(clock() - started, False)
                return True
            now = clock()
        slow = 0
        while now < spin_until:
            yield_()  # a peer sharing this CPU gets to run; a no-op on an idle machine
            before, now = now, clock()
            if now - before > _CROWDED_NS:
                # The yield gave the CPU away. Once may be the host or a kernel thread; again and
                # again means more runnable processes than CPUs. Then spinning would take turns
                # from the peer we wait for: sleep, and spin less next time.
                slow += 1
            if words[word] != seen:
                self._eager = not slow
                self._adapt(now - started, False)
                return True
            if words[self._peer_hang_up]:
                self._check_peer(word, seen)
            if slow == _CROWDED_YIELDS:
                self._spin_ns //= 2
                break
        self._eager = not slow
        if not sleep:
            return False
        deadline = time.monotonic() + timeout
        flag = word + _SLEEPS
        words[flag] = 1
        try:
            _fence()
            while words[word] == seen:
                self._check_peer(word, seen)
                left = deadline - time.monotonic()
                if left <= 0:
                    # A peer silent for the whole wait (an idle client): spin less before the
                    # next one, or an idle server would spin a millisecond in every slice.
                    self._adapt(time.perf_counter_ns() - started, True)
                    return False
                self._futex(word, _FUTEX_WAIT, seen, min(left, SLICE_S))
        finally:
            words[flag] = 0
        self._adapt(time.perf_counter_ns() - started, True)
        return True

    def _check_peer(self, word: int, seen: int) -> None:
        """Raise ``ConnectionError`` if the peer hung up and word ``word`` is still ``seen``.

        The peer hangs up after its last message, so the word is looked at again after the
        flag: a message sent before hanging up is still read first."""
        words = self._words
        if words[self._peer_hang_up]:
            _fence()
            if words[word] == seen:
                raise ConnectionError(self._gone_message)

    def hang_up(self) -> None:
        """Tell the peer this end is gone for good, waking it wherever it waits on this end."""
        if self.closed:
            return
        words = self._words
        words[self._my_hang_up] = 1
        _fence()
        # The peer sleeps on our messages, or on our acknowledgement of its chunk.
        self._futex(self._out_word + _SEQ, _FUTEX_WAKE, 1 << 30)
        self._futex(self._in_word + _ACK, _FUTEX_WAKE, 1 << 30)

    def _adapt(self, waited_ns: int, slept: bool) -> None:
        """Spin about twice as long as the peer usually takes, while that is short enough to pay.

        A wait that spun in time keeps the window at least twice its length; one that just
        missed it widens the window; a peer that takes much longer than any window (a slow
        env, a client thinking between steps) narrows it, so waiting for it costs no CPU.
        """
        if not self._spins:
            return
        if not slept:
            self._spin_ns = max(self._spin_ns, min(2 * waited_ns, MAX_SPIN_NS))
        elif waited_ns <= MAX_SPIN_NS:
            self._spin_ns = min(2 * self._spin_ns + 1000, MAX_SPIN_NS)
        else:
            self._spin_ns //= 2

    # --- messages -----------------------------------------------------------------------------

    def send(self, frames: Sequence[Any], *, alive: Callable[[], None] | None = None) -> None:
        """Write one message (a list of byte buffers) for the peer."""
        if self.closed:
            raise ChannelClosed(self._closed_reason)
        try:  # costs nothing until it catches
            if len(frames) == 1 and type(frames[0]) is bytes:  # the common case, in as few steps as can be
                frame: bytes = frames[0]
                size = len(frame)
                if size <= self._single_room:
                    memory, at = self._memory, self._single_at
                    _SINGLE.pack_into(memory, self._out_data, size + 12, size + 12, 1, size)
                    memory[at:at + size] = frame
                    self._sent = sent = (self._sent + 1) & _MASK
                    words, word = self._words, self._out_word
                    words[word] = sent  # what _post does, without its call on every step
                    self.awaiting = True
                    with _FENCE_LOCK:  # _fence(), inline
                        pass
                    if words[word + _SLEEPS]:
                        self._futex(word, _FUTEX_WAKE, 1 << 30)
                    return
            views = [memoryview(frame).cast("B") for frame in frames]
            if len(views) > _MAX_FRAMES:
                raise ValueError(f"a message of more than {_MAX_FRAMES} frames")
            head = _FRAME_COUNT.pack(len(views)) + struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views))
            total = len(head) + sum(v.nbytes for v in views)
            room = self.capacity - _CHUNK_HEAD.size
            view, box = self._view, self._out_word
            start = self._out_data + _CHUNK_HEAD.size
            if total <= room:  # the usual case: frames go straight into place
                _CHUNK_HEAD.pack_into(view, self._out_data, total, total)
                at = start + len(head)
                view[start:at] = head
                for part in views:
                    view[at:at + part.nbytes] = part
                    at += part.nbytes
                self._sent = sent = (self._sent + 1) & _MASK
                self._words[box + _SEQ] = sent
                self.awaiting = True
                self._wake(box + _SEQ)
                return
            message = b"".join([head, *views])
            self.awaiting = False
            for offset in range(0, total, room):
                chunk = message[offset:offset + room]
                while offset and self._words[box + _ACK] != self._sent:  # the reader took the last chunk?
                    if not self._wait(box, _ACK, self._words[box + _ACK], SLICE_S) and alive is not None:
                        alive()
                _CHUNK_HEAD.pack_into(view, self._out_data, total, len(chunk))
                view[start:start + len(chunk)] = chunk
                self._sent = sent = (self._sent + 1) & _MASK
                self._words[box + _SEQ] = sent
                whole = offset + room >= total  # from the first piece out to the last, the message is torn
                self.awaiting, self.torn = whole, not whole
                self._wake(box + _SEQ)
        except ValueError as error:
            raise self._closed_under(error) from None

    def ready(self) -> bool:
        """Whether a message from the peer is waiting."""
        try:
            return bool(self._words[self._in_word] != self._seen)
        except ValueError as error:
            raise self._closed_under(error) from None

    def wait(self, timeout: float, *, sleep: bool = True) -> bool:
        """Wait up to ``timeout`` s for a message from the peer (``sleep=False``: only spin)."""
        try:
            return self._words[self._in_word] != self._seen or self._wait(self._in_word, _SEQ, self._seen,
                                                                          timeout, sleep)
        except ValueError as error:
            raise self._closed_under(error) from None

    def receive(self, *, alive: Callable[[], None] | None = None, copy: bool = False) -> list[Any]:
        """The peer's waiting message as frames (call after :meth:`wait` said one is in).

        The header is bytes; the other frames are read-only views of the segment, valid until this
        end sends its next message, unless ``copy`` (then bytes).
        """
        try:
            box, view = self._in_word, self._view
            # The head (chunk head, then what a one-frame message has) is read before the message
            # counts as taken, and nothing is called from there until it is taken whole (the
            # common cases): an interrupt at this call leaves it waiting, not torn.
            total, length, count, size = _SINGLE.unpack_from(view, self._in_data)
            self._seen = (self._seen + 1) & _MASK
            if count == 1 and total == length == size + 12 and size <= self._single_room:
                at = self._in_data + _SINGLE.size
                self.awaiting = False
                return [self._memory[at:at + size]]  # one frame: the codec header, as bytes
            start = self._in_data + _CHUNK_HEAD.size
            if 0 < length == total <= self.capacity - _CHUNK_HEAD.size:
                self.awaiting = False
                data: memoryview = view[start:start + total]
            else:
                # Torn until the message is taken whole: cut off before that, its pieces would be
                # left unacknowledged for a peer that waits for them.
                self.awaiting, self.torn = False, True
                self._check_chunk(total, length)
                # Gathered as it comes, never allocated up front: a peer announcing a huge message
                # must actually write it, as it would have to over a socket.
                parts, got = [bytes(view[start:start + length])], length
                while True:
                    self._post(box, _ACK, self._seen)
                    if got == total:
                        break
                    while not self._wait(box, _SEQ, self._seen, SLICE_S):
                        if alive is not None:
                            alive()
                    self._seen = (self._seen + 1) & _MASK
                    more, length = self._chunk()
                    if more != total or length > total - got:
                        raise ProtocolError("the shared-memory peer sent an inconsistent chunk")
                    parts.append(bytes(view[start:start + length]))
                    got += length
                self.torn = False
                data, copy = memoryview(b"".join(parts)), False
            return _split(data, copy)
        except ValueError as error:
            raise self._closed_under(error) from None

    def _closed_under(self, error: ValueError) -> Exception:
        """What a ``ValueError`` from the segment's memory means: if :meth:`close` released that
        memory under a call (from another thread), that the channel was closed."""
        return ChannelClosed(self._closed_reason) if self.closed else error

    def _chunk(self) -> tuple[int, int]:
        total, length = _CHUNK_HEAD.unpack_from(self._view, self._in_data)
        self._check_chunk(total, length)
        return total, length

    def _check_chunk(self, total: int, length: int) -> None:
        if not 0 < length <= min(total, self.capacity - _CHUNK_HEAD.size):
            raise ProtocolError(f"the shared-memory peer sent a chunk of {length} bytes (of {total})")

    def close(self, reason: str | None = None) -> None:
        """Unmap the segment (and remove its name, if this end still has it). A call still using
        the channel in another thread raises :class:`ChannelClosed` with ``reason``. Idempotent,
        from any thread."""
        with self._closing:
            if self.closed:
                return
            if reason is not None:
                self._closed_reason = reason
            self.hang_up()
            self.closed = True
            self.unlink()
            self._words.release()
            del self._anchor
            self._view.release()
            try:
                self._memory.close()
            except BufferError:  # a decoded view still points into it: the mapping goes with it
                log.debug("shared-memory segment still referenced; unmapped when released")

    def unlink(self) -> None:
        """Remove the segment's name: it lives on only while mapped."""
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


def _split(data: memoryview, copy: bool) -> list[Any]:
    """The frames of one message, checked against its length."""
    if data.nbytes < _FRAME_COUNT.size:
        raise ProtocolError("the shared-memory peer sent a message without a frame count")
    (count,) = _FRAME_COUNT.unpack_from(data)
    at = _FRAME_COUNT.size + 8 * count
    if count == 0 or count > _MAX_FRAMES or at > data.nbytes:
        raise ProtocolError(f"the shared-memory peer sent a message of {count} frames")
    lengths = struct.unpack_from(f"<{count}Q", data, _FRAME_COUNT.size)
    if at + sum(lengths) != data.nbytes:
        raise ProtocolError("the shared-memory peer's frame lengths do not add up to its message")
    frames: list[Any] = []
    for length in lengths:
        frame = data[at:at + length]
        # Read-only views: a backend that builds arrays from them copies once, out of the segment.
        frames.append(bytes(frame) if copy or not frames else frame.toreadonly())
        at += length
    return frames
