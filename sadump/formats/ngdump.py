"""An NGDump partition image (spec sa-dump-formats 7; s390-tools zdump/ngdump.c,
zipl/dracut/99ngdump/ngdump.sh): an ext4 file system holding `ngdump.meta` and the dump the
NGDump kernel wrote with `makedumpfile -f -E -d 31`, an ELF vmcore read by the ELF reader.

The file system is read with e2fsprogs' `debugfs` (read-only, `-c`, no mount, no root): it
gives each file's size and extents; the bytes are then read in place from the partition
image, so the ELF's memory is the partition's own blocks (no copy). The ext4 library of PyPI
(`ext4` 1.4.1) was not taken: it loops forever on an extent tree whose index points back to
itself, and reads a whole directory into memory at its i_size; debugfs bounds both.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterator

from sadump.errors import ImageError
from sadump.formats.elf import ElfCore
from sadump.formats.memory import DumperFacts, Extent, pread_exact

META = "ngdump.meta"
META_VERSION = 1
#: makedumpfile's dump level in the NGDump dumper (ngdump.sh: makedumpfile -f -E -d 31)
NGDUMP_DUMP_LEVEL = 31
EXT4_MAGIC_OFFSET = 0x438
#: ngdump.meta is three short lines
MAX_META = 4096
#: a dump file may be sparse, but not past this many times the partition: its sha256 reads
#: every byte, holes too
MAX_HOLE_RATIO = 64
#: what one debugfs request may print and take (a file of a million extents prints ~60 MiB)
MAX_DEBUGFS_OUTPUT = 64 << 20
DEBUGFS_TIMEOUT = 120
HASH_PIECE = 1 << 20
_NAME = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_LEAF = re.compile(r"\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+\s+(\d+) -\s*(\d+)\s+(\d+) -\s*(\d+)\s+(\d+)"
                   r"\s*(Uninit)?\s*")
EXT4_EXTENTS_FL = 0x80000
EXT4_INLINE_DATA_FL = 0x10000000


def _probe_superblock(sb: bytes) -> bool:
    """The ext4 superblock (at 1024) says what a file system of sane geometry says."""
    if len(sb) < 0x5a or int.from_bytes(sb[0x38:0x3a], "little") != 0xEF53:
        return False
    log_block = int.from_bytes(sb[0x18:0x1c], "little")
    first_data = int.from_bytes(sb[0x14:0x18], "little")
    per_group = int.from_bytes(sb[0x20:0x24], "little")
    inodes_per_group = int.from_bytes(sb[0x28:0x2c], "little")
    rev = int.from_bytes(sb[0x4c:0x50], "little")
    return log_block <= 6 and first_data <= 1 and per_group > 0 and inodes_per_group > 0 \
        and rev <= 1


def _debugfs_path() -> str:
    import shutil  # here and below: only an NGDump being opened needs them, not the probe

    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    found = shutil.which("debugfs", path=path)
    if found is None:
        raise ImageError("an NGDump partition is an ext4 file system, read with debugfs "
                         "(e2fsprogs): debugfs is not installed")
    return found


class NgDump(ElfCore):
    """The ELF vmcore inside an NGDump partition image, read in place."""

    format = "ngdump"

    @staticmethod
    def probe(head: bytes) -> bool:
        return _probe_superblock(head[0x400:0x800])

    def __init__(self, path: str):
        #: the dump file as pieces (file offset, partition offset or -1 for zeros)
        self._starts: list[int] = []
        self._phys: list[int] = []
        self.partition_size = 0
        self.dump_file = ""
        super().__init__(path)

    # ---- the file system ----------------------------------------------------------------
    def _debugfs(self, request: str) -> tuple[str, str]:
        """stdout and stderr of one read-only debugfs request; stdout capped, time bounded."""
        import subprocess
        import threading

        cmd = [_debugfs_path(), "-c", "-R", request, os.path.abspath(self.path)]
        env = dict(os.environ, LC_ALL="C", LANG="C")
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env)
        except OSError as e:
            raise ImageError(f"cannot run debugfs: {e.strerror or e}") from None
        err: list[bytes] = []

        def drain() -> None:  # stderr: keep its start, never let it block debugfs
            while chunk := proc.stderr.read(1 << 16):
                if sum(map(len, err)) < MAX_META:
                    err.append(chunk)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        timer = threading.Timer(DEBUGFS_TIMEOUT, proc.kill)
        timer.start()
        out, too_much = b"", True
        try:
            out = proc.stdout.read(MAX_DEBUGFS_OUTPUT + 1)
            too_much = len(out) > MAX_DEBUGFS_OUTPUT
        finally:
            if too_much:  # or the read failed: stop it instead of waiting
                proc.kill()
            proc.stdout.close()
            proc.wait()
            timer.cancel()
            reader.join()
            proc.stderr.close()
        if too_much:
            raise ImageError(f"debugfs {request!r} printed more than {MAX_DEBUGFS_OUTPUT:#x} "
                             "bytes: the file system is too fragmented or corrupt")
        if proc.returncode < 0:  # killed by the timer
            raise ImageError(f"debugfs {request!r} did not finish in {DEBUGFS_TIMEOUT} s")
        return out.decode("ascii", "replace"), b"".join(err).decode("ascii", "replace")

    @staticmethod
    def _complaint(err: str) -> str:
        lines = [ln.strip() for ln in err.splitlines()
                 if ln.strip() and not ln.startswith("debugfs 1.")]
        return lines[0] if lines else "no output"  # the first: why it stopped

    def _block_size(self) -> int:
        out, err = self._debugfs("stats -h")
        m = re.search(r"^Block size:\s+(\d+)$", out, re.MULTILINE)
        if m is None:
            raise ImageError(f"not a readable ext4 file system: {self._complaint(err)}")
        size = int(m.group(1))
        if size not in (1024 << n for n in range(7)):
            raise ImageError(f"ext4 block size {size}")
        return size

    def _map(self, name: str, block: int) -> tuple[int, list[tuple[int, int, int]]]:
        """Size and (logical block, physical block, count) extents of one file, checked to
        lie inside the partition image."""
        out, err = self._debugfs(f"stat /{name}")
        m = re.search(r"^Inode: \d+\s+Type: (\S+).*Flags: (0x[0-9a-f]+)", out, re.MULTILINE)
        size_m = re.search(r"\bSize: (\d+)", out)
        if m is None or size_m is None:
            raise ImageError(f"{name}: {self._complaint(err)}")
        if m.group(1) != "regular":
            raise ImageError(f"{name} is a {m.group(1)}, not a regular file")
        flags, size = int(m.group(2), 16), int(size_m.group(1))
        if flags & EXT4_INLINE_DATA_FL or not flags & EXT4_EXTENTS_FL:
            raise ImageError(f"{name} is not mapped by extents (inline data or an ext2/ext3 "
                             "block map): not read")
        out, err = self._debugfs(f"ex -l /{name}")
        if not out.startswith("Level Entries"):
            raise ImageError(f"{name}: extents not readable: {self._complaint(err)}")
        extents = []
        end_block = self.partition_size // block
        for line in out.splitlines()[1:]:
            e = _LEAF.fullmatch(line)
            if e is None:
                raise ImageError(f"{name}: an extent debugfs prints as {line.strip()!r}")
            lstart, lend, pstart, pend, count = (int(e.group(i)) for i in range(3, 8))
            if lend - lstart + 1 != count or pend - pstart + 1 != count or not count:
                raise ImageError(f"{name}: extent {line.strip()!r} is inconsistent")
            if pend >= end_block or pstart == 0:
                raise ImageError(f"{name}: its extent at blocks [{pstart}, {pend}] points "
                                 f"outside the file system image ({end_block} blocks)")
            if e.group(8) is None:  # an unwritten (Uninit) extent reads as zeros
                extents.append((lstart, pstart, count))
        return size, sorted(extents)

    def _map_file(self, size: int, extents: list[tuple[int, int, int]], block: int) -> None:
        """The file as pieces in file order: the extents' blocks, holes between them (and
        unwritten extents) as zeros."""
        starts, phys, pos = [], [], 0
        for lstart, pstart, count in extents:
            lo, hi = lstart * block, min((lstart + count) * block, size)
            if lo >= size:
                continue  # blocks kept past the end of the file
            if lo < pos:
                raise ImageError(f"{self.dump_file}: extents overlap at block {lstart}")
            if lo > pos:
                starts.append(pos)
                phys.append(-1)
            starts.append(lo)
            phys.append(pstart * block)
            pos = hi
        if pos < size:
            starts.append(pos)
            phys.append(-1)
        self._starts, self._phys = starts, phys

    def _spans(self, offset: int, size: int) -> Iterator[tuple[int, int, int]]:
        """(file offset, length, partition offset or -1) covering [offset, +size)."""
        i = bisect.bisect_right(self._starts, offset) - 1
        end = offset + size
        while offset < end:
            nxt = self._starts[i + 1] if i + 1 < len(self._starts) else self.file_size
            n = min(nxt, end) - offset
            base = self._phys[i]
            yield offset, n, -1 if base < 0 else base + offset - self._starts[i]
            offset += n
            i += 1

    def _read_meta(self, block: int) -> dict[str, str]:
        size, extents = self._map(META, block)
        if size > MAX_META:
            raise ImageError(f"{META} is {size} bytes: not NGDump's meta file")
        data = bytearray(size)
        for lstart, pstart, count in extents:
            lo = lstart * block
            if lo < size:
                n = min(count * block, size - lo)
                data[lo:lo + n] = pread_exact(self._fd, n, pstart * block,
                                              self.partition_size)
        meta = {}
        for line in data.decode("ascii", "replace").splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                meta[key.strip()] = value.strip()
        return meta

    def _sha256(self) -> str:
        import hashlib

        digest = hashlib.sha256()
        zeros = bytes(HASH_PIECE)
        for pos in range(0, self.file_size, HASH_PIECE):
            for _, n, where in self._spans(pos, min(HASH_PIECE, self.file_size - pos)):
                digest.update(zeros[:n] if where < 0
                              else pread_exact(self._fd, n, where, self.partition_size))
        return digest.hexdigest()

    # ---- ElfCore over the mapped file ---------------------------------------------------
    def _load(self) -> None:
        self.partition_size = self.file_size
        block = self._block_size()
        meta = self._read_meta(block)
        if meta.get("version") != str(META_VERSION):
            raise ImageError(f"{META} says version {meta.get('version')!r}, NGDump writes "
                             f"{META_VERSION}")
        name = meta.get("file", "")
        if not name:
            raise ImageError(f"an NGDump partition without a dump: {META} names no file "
                             "(no dump was taken since zipl prepared it)")
        if not _NAME.fullmatch(name) or ".." in name.split("/"):
            raise ImageError(f"{META} names {name!r}: not a file name in the partition")
        want = meta.get("sha256sum", "").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", want):
            raise ImageError(f"{META} has no valid sha256sum ({want!r})")
        self.dump_file = name
        size, extents = self._map(name, block)
        if size > MAX_HOLE_RATIO * self.partition_size:
            raise ImageError(f"{name} is {size:#x} bytes in a partition of "
                             f"{self.partition_size:#x}: more than {MAX_HOLE_RATIO} times it")
        self.file_size = size
        self._map_file(size, extents, block)
        got = self._sha256()
        if got != want:
            raise ImageError(f"{name}: sha256 {got}, {META} says {want}: the dump is damaged")
        super()._load()
        self.dump_level = NGDUMP_DUMP_LEVEL
        self.dumper = DumperFacts(format="ngdump", version=META_VERSION)

    def _read_file(self, offset: int, size: int) -> bytes:
        if offset + size > self.file_size:
            raise ImageError(f"{self.dump_file} ends at {self.file_size:#x}, before the data "
                             "it should hold")
        parts = [bytes(n) if where < 0 else pread_exact(self._fd, n, where, self.partition_size)
                 for _, n, where in self._spans(offset, size)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _file_extents(self, paddr: int, size: int, file_offset: int) -> Iterator[Extent]:
        for off, n, where in self._spans(file_offset, size):
            at = paddr + off - file_offset
            yield Extent(at, n, "zero") if where < 0 else Extent(at, n, "file", self._fd, where)

    @property
    def stored_bytes(self) -> int | None:
        return self.file_size
