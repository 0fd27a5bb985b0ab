"""What a compiled kernel is: registers, spills and SASS opcodes from the cubin, memory ops from the PTX.

cubin (via the cuobjdump that ships in the triton wheel):
  --dump-resource-usage   REG (registers per thread), STACK and LOCAL (bytes of local memory:
                          spills), SHARED (static shared memory)
  -sass                   opcode counts: LDL/STL (local-memory traffic = spills), LDG/STG by
                          width, tensor-core MMAs (HMMA = mma.sync, HGMMA = Hopper wgmma,
                          UTC*MMA = Blackwell tcgen05)
PTX (Triton's, with line info): every ld/st.global and cp.async attributed to the kernel's
source line, hence to the tensor it touches (the `<name>_ptr` named on that line, or on the
line that called an inlined helper). Per thread, in program order, it gives the access width
per tensor and whether loads are issued before the stores that follow them: a load placed
after a store cannot be hoisted above it by ptxas (the pointers may alias), so the memory
system waits for the stores' addresses before it sees the next loads.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import triton

TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
CUOBJDUMP = os.path.join(TOOLS, "cuobjdump")


@dataclass
class Binary:
    regs: int = 0
    stack: int = 0  # bytes
    local: int = 0  # bytes
    static_shared: int = 0
    sass: dict = field(default_factory=dict)  # opcode (LDG.128, STL, HGMMA, ...) -> count

    @property
    def spill_bytes(self) -> int:
        return self.stack + self.local

    @property
    def spill_ops(self) -> int:
        return self.sass.get("LDL", 0) + self.sass.get("STL", 0)

    @property
    def mma_ops(self) -> int:
        return sum(v for k, v in self.sass.items() if k.endswith("MMA"))


def inspect_cubin(cubin: bytes) -> Binary:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        usage = _run(CUOBJDUMP, "--dump-resource-usage", path)
        sass = _run(CUOBJDUMP, "-sass", path)
    finally:
        os.unlink(path)
    b = Binary(sass=sass_opcodes(sass))
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", usage)
    if m:
        b.regs, b.stack, b.static_shared, b.local = (int(v) for v in m.groups())
    return b


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


_SASS_OP = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)((?:\.[A-Z0-9_]+)*)")


def sass_opcodes(sass: str) -> dict:
    counts: Counter = Counter()
    for line in sass.splitlines():
        m = _SASS_OP.search(line)
        if not m:
            continue
        op, mods = m[1], m[2].split(".")[1:]
        if op in ("LDG", "STG"):
            width = next((w for w in ("128", "64", "U16", "S16", "U8", "S8") if w in mods), "32")
            counts[f"{op}.{width}"] += 1
        elif op in ("LDL", "STL", "LDGSTS", "BAR", "SHFL") or op.endswith("MMA"):
            counts[op] += 1
    return dict(counts)


# =============================================================================================
# PTX memory operations, per tensor and in program order
# =============================================================================================
@dataclass
class PtxMemory:
    per_tensor: dict  # tensor -> {"ld" | "st" | "cp": {bytes per access: count}} (cp = cp.async into shared memory)
    loads_after_stores: int  # loads that follow a store in program order (0: every load issued first)
    load_bytes_before_first_store: int  # per thread
    order: list  # [("ld" | "st" | "cp", tensor)] in program order, runs of the same op merged
    cp_async_bytes: int  # per thread, per pipeline stage (loads into shared memory)
    tensor_core: list  # PTX tensor-core instructions used (wgmma, mma, tcgen05.mma)

    def widths(self, tensor: str) -> set[int]:
        d = self.per_tensor.get(tensor, {})
        return {int(w) for kind in d.values() for w in kind}


_MEM = re.compile(r"\b(ld|st)\.global((?:\.[A-Za-z0-9_:]+)*)")
_CP_ASYNC = re.compile(r"\bcp\.async\.(?:ca|cg)\.shared(?:::cta)?\.global(?:\.[\w:]+)*\s+\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)")
_LOC = re.compile(r"\.loc\s+(\d+)\s+(\d+)\s+\d+(?:.*?inlined_at\s+(\d+)\s+(\d+))?")
_PTR = re.compile(r"\b(\w+_ptr)\b")
_TC = re.compile(r"\b(wgmma\.mma_async|mma\.sync|tcgen05\.mma)\b")


def inspect_ptx(ptx: str) -> PtxMemory:
    files = {m[1]: m[2] for m in re.finditer(r'^\s*\.file\s+(\d+)\s+"([^"]+)"', ptx, re.M)}
    lines: dict = {}
    here = outer = ""
    per_tensor: dict = defaultdict(lambda: {"ld": Counter(), "st": Counter(), "cp": Counter()})
    seen_store, after, before, cp_bytes, tc, order = False, 0, 0, 0, set(), []
    for raw in ptx.splitlines():
        s = raw.strip()
        if s.startswith(".loc"):
            m = _LOC.match(s)
            if m:
                here = _source_line(lines, files.get(m[1], ""), int(m[2]))
                outer = _source_line(lines, files.get(m[3], ""), int(m[4])) if m[3] else ""
            continue
        if (m := _TC.search(s)):
            tc.add(m[1])
        if (m := _CP_ASYNC.search(s)):
            cp_bytes += int(m[1], 0)
            per_tensor[_tensor(here, outer)]["cp"][int(m[1], 0)] += 1
            _append(order, ("cp", _tensor(here, outer)))
            continue
        m = _MEM.search(s)
        if not m:
            continue
        mods = m[2].split(".")[1:]
        vec = next((int(x[1:]) for x in mods if re.fullmatch(r"v\d", x)), 1)
        bits = next((int(x[1:]) for x in reversed(mods) if re.fullmatch(r"[bufs]\d+", x)), 32)
        nbytes = vec * bits // 8
        tensor = _tensor(here, outer)
        per_tensor[tensor][m[1]][nbytes] += 1
        _append(order, (m[1], tensor))
        if m[1] == "st":
            seen_store = True
        elif seen_store:
            after += 1
        else:
            before += nbytes
    return PtxMemory({k: {kind: dict(c) for kind, c in v.items() if c} for k, v in per_tensor.items()},
                     after, before, order, cp_bytes, sorted(tc))


def _append(order: list, op: tuple) -> None:
    if not order or order[-1] != op:
        order.append(op)


def _tensor(here: str, outer: str) -> str:
    """The `<name>_ptr` a memory op's source line names; inside an inlined helper, its caller's."""
    for text in (here, outer):
        m = _PTR.search(text)
        if m and m[1] != "ptr":
            return m[1].removesuffix("_ptr")
    return "?"


def _source_line(cache: dict, path: str, line: int) -> str:
    if path not in cache:
        try:
            with open(path) as f:
                cache[path] = f.read().splitlines()
        except OSError:
            cache[path] = []
    text = cache[path]
    return text[line - 1] if 0 < line <= len(text) else ""
