"""Render an Analysis: a JSON object for runbooks, a rich report for people."""

from __future__ import annotations

from typing import Any

from sadump.analysis import Analysis
from sadump.trigger.decision import DUMPED, FULL, KDUMP


def _hex(v: int | None) -> str:
    return "-" if v is None else f"{v:#x}"


def image_json(a: Analysis) -> dict[str, Any]:
    img = a.image
    return {
        "path": img.path,
        "format": img.format,
        "size": img.size,
        "ranges": [[s, e] for s, e in img.ranges()],
        "warnings": a.warnings,
        "incomplete": img.incomplete,
        "taken_after_handoff": a.handoff is not None,
        "handoff": None if a.handoff is None else {
            "oldmem_base": a.handoff.oldmem_base, "oldmem_size": a.handoff.oldmem_size},
    }


def _utc(tod: int | None) -> str | None:
    if tod is None:
        return None
    import datetime

    from sadump.formats.s390 import tod_to_unix

    try:
        return datetime.datetime.fromtimestamp(tod_to_unix(tod), datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return None


def dumper_json(img) -> dict[str, Any] | None:
    """The dump's own facts as the dumper recorded them (None: the format records none)."""
    d = img.dumper
    if d is None:
        return None
    return {"format": d.format, "version": d.version,
            "start_tod": d.start_tod, "start_utc": _utc(d.start_tod),
            "end_tod": d.end_tod, "end_utc": _utc(d.end_tod),
            "cpu_id": d.cpu_id, "cpus": d.cpu_count, "real_cpus": d.real_cpu_count,
            "mem_size": d.mem_size, "mem_size_real": d.mem_size_real,
            "compression": d.compression, "volumes": d.volumes, "block_size": d.block_size,
            "complete": img.incomplete is None, "incomplete": img.incomplete}


def _size_pair(part: int, whole: int) -> str:
    """"512 of 2048 GiB": the unit both are whole numbers of."""
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB")):
        if part % unit == 0 and whole % unit == 0:
            return f"{part // unit} of {whole // unit} {name}"
    return f"{part / (1 << 20):.1f} of {whole / (1 << 20):.1f} MiB"


def dumper_lines(img) -> list[str]:
    """The dumper's facts as report lines (empty when the format records none)."""
    d = img.dumper
    if d is None:
        return []
    what = [f"{d.format}" + (f" version {d.version}" if d.version is not None else ""),
            d.compression or "not compressed"]
    if d.volumes is not None:
        what.append(f"{d.volumes} volume{'s' if d.volumes != 1 else ''}")
    if d.block_size:
        what.append(f"{d.block_size}-byte blocks")
    out = ["dumper       " + ", ".join(what)]
    if d.start_tod is not None:
        line = f"  started    {_utc(d.start_tod) or '-'} (TOD {d.start_tod:#018x})"
        if d.end_tod is not None:
            secs = ((d.end_tod - d.start_tod) >> 12) / 1e6
            line += f", ended {_utc(d.end_tod) or '-'} ({secs:.1f} s later)"
        out.append(line)
    cpus = []
    if d.cpu_id is not None:
        cpus.append(f"dumping CPU id {d.cpu_id:#x}")
    if d.cpu_count is not None:
        cpus.append(f"{d.cpu_count} CPUs" + (f" ({d.real_cpu_count} answered SIGP)"
                                              if d.real_cpu_count is not None else ""))
    if cpus:
        out.append("  CPUs       " + "; ".join(cpus))
    if d.mem_size is not None:
        real = d.mem_size_real or d.mem_size
        out.append(f"  memory     the dump holds {_size_pair(d.mem_size, real)} of the "
                   "machine's memory")
    markers = {"s390_ext": " (stop marker and end marker present)",
               "s390mv_ext": " (stop marker and end marker present)",
               "s390": " (end marker present)", "s390tape": " (end marker present)"}
    out.append("  complete   " + (f"yes{markers.get(d.format, '')}" if img.incomplete is None
                                  else f"NO: {img.incomplete}"))
    return out


def meminfo_json(a: Analysis) -> dict[str, Any]:
    m = a.os_info
    return {
        "pointer": m.pointer,
        "found": m.found,
        "valid": m.valid,
        "magic_ok": m.magic_ok,
        "version": list(m.version),
        "checksum": {"stored": m.csum_stored, "computed": m.csum_computed, "ok": m.checksum_ok},
        "crashkernel": {"addr": m.crashkernel_addr, "size": m.crashkernel_size},
        "entries": [
            {"index": e.index, "name": e.name, "kind": e.kind, "addr": e.addr, "size": e.size,
             "csum": e.csum, "checksum_ok": e.checksum_ok, "status": e.status}
            for e in m.entries
        ],
        "error_code": m.error_code,
        "error": m.error or None,
        "expected": m.expected or None,
        "actual": m.actual or None,
    }


def vmcoreinfo_json(a: Analysis) -> dict[str, Any]:
    v = a.vmcoreinfo
    info = v.info
    return {
        "address": v.address,
        "size": v.size,
        "source": v.source or None,
        "found": info is not None,
        "error": v.error or None,
        "osrelease": info.osrelease if info else None,
        "pagesize": info.pagesize if info else None,
        "crashtime": info.crashtime if info else None,
        "kerneloffset": info.kerneloffset if info else None,
        "build_id": info.get("BUILD-ID") if info else None,
    }


def decision_json(a: Analysis) -> dict[str, Any]:
    return a.decision.json()


def digest_json(a: Analysis) -> dict[str, Any] | None:
    """The kexec segment digest check; None when it was not made (no kdump path)."""
    d = a.digest
    if d is None:
        return None
    return {"found_at": d.found_at, "digest_at": d.digest_at,
            "stored": d.stored.hex() if d.stored else None,
            "computed": d.computed.hex() if d.computed else None,
            "ok": d.ok, "verdict": d.verdict, "reason": d.reason or None}


def analysis_json(a: Analysis) -> dict[str, Any]:
    lc = a.lowcore
    return {
        "image": image_json(a),
        "dumper": dumper_json(a.image),
        "lowcore": {"ipib": lc.ipib, "ipib_checksum": lc.ipib_checksum,
                    "vmcore_info": lc.vmcore_info, "os_info": lc.os_info,
                    "error": lc.error or None},
        "meminfo": meminfo_json(a),
        "vmcoreinfo": vmcoreinfo_json(a),
        "ipib": None if a.ipib is None else {
            "address": a.ipib.address, "length": a.ipib.length, "type": a.ipib.type,
            "checksum": {"stored": a.ipib.stored_checksum, "computed": a.ipib.computed_checksum,
                         "ok": a.ipib.checksum_ok},
            "error": a.ipib.error or None},
        "kdump_kernel": None if a.kdump_kernel is None else {
            "base": a.kdump_kernel.base, "present": a.kdump_kernel.present, "s390ep": a.kdump_kernel.has_marker,
            "entry_point": a.kdump_kernel.kdump_entry if a.kdump_kernel.has_kdump_entry else None,
            "oldmem": [a.kdump_kernel.oldmem_base, a.kdump_kernel.oldmem_size],
            "command_line": a.kdump_kernel.command_line,
            "segments": [[s, n] for s, n in a.digest.segments] if a.digest else [],
            "digest": digest_json(a)},
        "decision": decision_json(a),
    }


def trigger_sentence(a: Analysis) -> str:
    d, m = a.decision, a.os_info
    if d.path == DUMPED:
        return f"{d.reason}: nothing for a trigger to do; `sadump dump` converts it as it is"
    if d.path == KDUMP:
        size = m.crashkernel_size
        return (f"a trigger would swap [0, {size:#x}) with [{m.crashkernel_addr:#x}, "
                f"{m.crashkernel_addr + size:#x}) and start the kdump kernel at {d.entry_point:#x}")
    return f"a trigger would fall back to a full dump: {d.reason} ({d.reason_code:#x})"


def render_digest(a: Analysis, console) -> None:
    """The kexec segment list, both digests and the verdict."""
    d = a.digest
    colour = {"verified": "green", "damaged": "red"}.get(d.verdict, "yellow")
    where = f" (list at {d.found_at:#x}, digest at {_hex(d.digest_at)})" \
        if d.found_at is not None else ""
    console.print(f"kexec segment digest: [{colour}]{d.verdict}[/]{where}"
                  + (f" - {d.reason}" if d.reason else ""))
    for s, n in d.segments:
        console.print(f"  segment [{s:#x}, {s + n:#x}) {n:#x} bytes")
    if d.computed:
        console.print(f"  stored   {d.stored.hex() if d.stored else '-'}\n"
                      f"  computed {d.computed.hex()}")


def render_inspect(a: Analysis, console) -> None:
    """The human report: structure, every check, entries, VMCOREINFO, decision."""
    from rich.table import Table

    ok = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "-"}
    img, m, v = a.image, a.os_info, a.vmcoreinfo
    console.print(f"[bold]{img.path}[/]: {img.format}, {img.size / (1 << 20):.1f} MiB present in "
                  f"{len(img.ranges())} range(s): "
                  + ", ".join(f"[{s:#x}, {e:#x})" for s, e in img.ranges()[:4])
                  + (" ..." if len(img.ranges()) > 4 else ""))
    for line in dumper_lines(img):
        console.print(line, markup=False)
    if a.handoff:
        console.print(f"[yellow]image taken after the hand-off to kdump[/]: the crashed system's "
                      f"[0, {a.handoff.oldmem_size:#x}) is read from {a.handoff.oldmem_base:#x}")
    checks = Table(title="os_info checks (lowcore 0xE18)", show_header=True)
    for col in ("check", "result", "expected", "actual"):
        checks.add_column(col)
    checks.add_row("pointer non-zero, aligned, present",
                   ok[m.page_read if m.pointer is not None else None], "page in memory",
                   _hex(m.pointer))
    checks.add_row("magic OSINFOSZ", ok[m.magic_ok if m.page_read else None],
                   "OSINFOSZ", m.magic.decode("ascii", "replace") if m.page_read else "-")
    checks.add_row("header checksum [0xC, 0x1000)", ok[m.checksum_ok if m.found else None],
                   _hex(m.csum_stored), _hex(m.csum_computed))
    checks.add_row("version_major <= 1", ok[m.version[0] <= 1 if m.found else None], "<= 1",
                   f"{m.version[0]}.{m.version[1]}" if m.found else "-")
    checks.add_row("crashkernel set", ok[m.crashkernel_addr != 0 if m.valid else None],
                   "addr != 0", f"{m.crashkernel_addr:#x} / {m.crashkernel_size:#x}")
    console.print(checks)
    if m.entries:
        entries = Table(title="os_info entries")
        for col in ("#", "name", "kind", "addr/value", "size", "csum", "status"):
            entries.add_column(col)
        for e in m.entries:
            entries.add_row(str(e.index), e.name, e.kind, _hex(e.addr), _hex(e.size),
                            _hex(e.csum), e.status or "-")
        console.print(entries)
    if v.info:
        info = v.info
        console.print(f"VMCOREINFO ({v.source} at {_hex(v.address)}, {v.size} bytes): "
                      f"OSRELEASE={info.osrelease} PAGESIZE={info.pagesize} "
                      f"CRASHTIME={info.crashtime if info.crashtime is not None else '-'} "
                      f"KERNELOFFSET={_hex(info.kerneloffset)}")
    else:
        console.print(f"VMCOREINFO: [yellow]not found[/] ({v.error})")
    if a.ipib:
        ib = a.ipib
        console.print(f"IPL parameter block at {ib.address:#x}: type {ib.type or '?'}, "
                      f"{ib.length} bytes, checksum {ok[ib.checksum_ok]} {ib.error}")
    if a.kdump_kernel:
        k = a.kdump_kernel
        state = "S390EP entry table, kdump entry" if k.has_kdump_entry else "no kdump kernel"
        console.print(f"crashkernel base {k.base:#x}: {state}"
                      + (f", cmdline {k.command_line!r}" if k.command_line else ""))
    if a.digest:
        render_digest(a, console)
    colour = "yellow" if a.decision.path == FULL else "green"
    console.print(f"[bold {colour}]decision: {a.decision.path}[/] - {trigger_sentence(a)}")
