"""The static performance report: what each compiled kernel can reach on the GPU, without one.

From the audit's launch records (harness/bench/kernel_audit/audit.py), per kernel, shape and dtype:

  occupancy        resident blocks per SM from registers (256-register warp granularity),
                   shared memory (+1 KB reserved per block) and warps; occupancy = resident
                   warps / 64, with the limiting resource named.
  waves            programs / SMs (how many times the grid covers the GPU with one block per
                   SM: the target for the small per-token kernels is >= 2) and programs /
                   resident slots (tail quantisation).
  widths           the narrowest global access, in bytes, to each stream tensor (a tensor
                   whose size scales with T x C; 16 = one 128-bit access per thread).
  ideal bytes      every distinct tensor argument read or written once (the paper's I/O count).
  bytes in flight  resident threads (all slots, or the whole grid when it is smaller than one
                   wave) x bytes each thread loads before its first store (plus cp.async
                   stages), per SM: an upper bound met when stream loads are issued before
                   the stores (`stream_loads_after_stores` = 0). Little's law (HBM rate x ~800 ns
                   loaded latency / SMs, about 29 KB per SM on an H200) is what streaming at peak needs.
  bandwidth bound  the fraction of HBM peak the design can reach at best: the minimum of the
                   latency bound (bytes in flight / needed), the arithmetic bound (GEMM-like
                   kernels: time at the dot's unit's peak vs time at HBM peak) and the tail
                   bound (the last wave's empty slots), naming which one limits. Launch
                   overhead (a few µs) is not modelled: it dominates the per-token kernels.

Everything is an estimate from the binary and the launch, not a measurement; the device tool
measures (`make gpu-check`). Output: a long table (one row per launch and metric) for Parquet,
and a Markdown page with a wide table and the targets of the kernel issue checked.
"""

from __future__ import annotations

import math

from harness.bench.kernel_audit.gpus import GPUS
from harness.bench.kernel_audit.workloads import NON_DEFAULT, PEERS

STREAM_KERNELS = ("_premix_fwd", "_premix_bwd", "_post_res_fwd", "_post_res_bwd")
TOKEN_KERNELS = ("_heads_fwd", "_heads_bwd", "_sinkhorn_fwd", "_sinkhorn_bwd")
GEMM_KERNELS = ("_project_fwd", "_project_bwd")


def occupancy(gpu, regs: int, smem: int, warps: int) -> tuple[int, float, str]:
    """(resident blocks per SM, resident warps / max warps, the limiting resource)."""
    per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    limits = {
        "registers": (gpu.regs_per_sm // per_warp) // warps,
        "shared memory": gpu.smem_per_sm // (smem + gpu.smem_reserved_per_block),
        "warps": gpu.max_warps_per_sm // warps,
        "blocks": gpu.max_blocks_per_sm,
    }
    limiter = min(limits, key=limits.get)
    blocks = limits[limiter]
    return blocks, blocks * warps / gpu.max_warps_per_sm, limiter


def stream_tensors(r: dict) -> list[str]:
    """Arguments whose size scales with tokens x channels (the residual stream and its gradients)."""
    return [k for k, t in r["tensors"].items() if t["alias_of"] is None and math.prod(t["shape"]) >= r["T"] * r["C"]]


def ideal_bytes(r: dict) -> int:
    return sum(math.prod(t["shape"]) * t["elem"] for t in r["tensors"].values() if t["alias_of"] is None)


def gemm_flops(r: dict) -> float:
    """2 x the multiply-adds of RMSNorm(x)φ (padded to tl.dot's power-of-2 width >= 16), twice
    for a backward (dx and dφ); 0 for a kernel without both an x (R, K) and a φ (K, W) argument."""
    x, phi = r["tensors"].get("x"), r["tensors"].get("phi")
    if not x or not phi or len(x["shape"]) != 2 or len(phi["shape"]) != 2:
        return 0.0
    (R, K), W = x["shape"], phi["shape"][1]
    w_pad = max(16, 1 << (W - 1).bit_length())
    return 2 * R * K * w_pad * (2 if "bwd" in r["kernel"] else 1)


def analyse(r: dict) -> dict:
    """Derived metrics of one launch record."""
    gpu = GPUS[r["arch"]]
    blocks, occ, limiter = occupancy(gpu, r["regs"], r["smem"], r["num_warps"])
    slots = max(1, blocks * gpu.sms)
    resident = min(r["programs"], slots)  # a grid smaller than one wave leaves slots empty
    per_thread = r["load_bytes_before_first_store"] + r["cp_async_bytes"] * max(1, r["num_stages"] - 1)
    per_thread = min(per_thread, r["regs"] * 4 + r["cp_async_bytes"] * max(1, r["num_stages"] - 1))  # loads land in registers
    in_flight = resident * r["num_warps"] * 32 * per_thread  # whole GPU
    ideal = ideal_bytes(r)
    bounds = {"latency": min(1.0, in_flight / (gpu.hbm_bytes_per_s * gpu.memory_latency_s)),
              "tail": r["programs"] / (math.ceil(r["programs"] / slots) * slots) if r["programs"] > slots else 1.0}
    if (flops := gemm_flops(r)):
        rate = gpu.tf32_flops if r["mma_ops"] else gpu.fp32_fma_flops
        t_mem, t_math = ideal / gpu.hbm_bytes_per_s, flops / rate
        bounds["arithmetic"] = t_mem / max(t_mem, t_math)
    bound = min(bounds, key=bounds.get)
    widths = {t: w for t in stream_tensors(r) if (w := _min_width(r, t))}  # tensors this launch does not touch: none
    return dict(blocks_per_sm=blocks, occupancy=occ, occupancy_limiter=limiter, waves=r["programs"] / gpu.sms,
                resident_waves=r["programs"] / slots, ideal_bytes=ideal, bytes_in_flight_per_sm=in_flight / gpu.sms,
                bytes_in_flight_needed=gpu.bytes_in_flight_per_sm, stream_access_bytes=min(widths.values(), default=0),
                stream_widths=widths, bandwidth_bound=bounds[bound], bandwidth_limiter=bound, bounds=bounds)


def stream_loads_after_stores(r: dict) -> int:
    """Loads of stream tensors that come after a store in program order: each waits behind it."""
    streams, stored, count = set(stream_tensors(r)), False, 0
    for kind, tensor in r["memory_order"]:
        stored |= kind == "st"
        count += stored and kind in ("ld", "cp") and tensor in streams
    return count


def _min_width(r: dict, tensor: str) -> int:
    ops = r["memory"].get(tensor, {})
    widths = [int(w) for kind in ops.values() for w in kind]
    return min(widths, default=0)


# =============================================================================================
# Targets of the kernel issue, checked per launch
# =============================================================================================
def targets(r: dict, a: dict) -> dict[str, tuple[bool, str]]:
    """{target: (met, what was seen)} for the targets that apply to this launch."""
    gpu = GPUS[r["arch"]]
    out = {"no spills": (r["spill_bytes"] == 0 and r["spill_ops"] == 0,
                         f"{r['spill_bytes']} B local, {r['spill_ops']} LDL/STL")}
    k = r["kernel"]
    if k in GEMM_KERNELS:
        out["x·φ on tensor cores"] = (r["mma_ops"] > 0, ", ".join(r["tensor_core"]) or "fp32 FMA")
    if k in STREAM_KERNELS:
        enough = a["occupancy"] >= 0.5 or a["bytes_in_flight_per_sm"] >= gpu.bytes_in_flight_per_sm
        out["occupancy >= 50% or bytes in flight"] = (
            enough, f"occupancy {a['occupancy']:.0%} ({a['occupancy_limiter']}), "
                    f"{a['bytes_in_flight_per_sm'] / 1024:.0f} KB in flight per SM (need {gpu.bytes_in_flight_per_sm / 1024:.0f})")
        late = stream_loads_after_stores(r)
        out["stream loads before stores"] = (late == 0, f"{late} stream-tensor loads after a store")
    if k in TOKEN_KERNELS and r["T"] >= 4096:
        out[">= 2 waves of SMs"] = (r["programs"] >= 2 * gpu.sms, f"{r['programs']} programs / {gpu.sms} SMs")
    if r["n"] in (2, 4, 8) and a["stream_widths"]:
        narrow = {t: w for t, w in a["stream_widths"].items() if w < 16}
        out["16-byte stream accesses"] = (not narrow, ", ".join(f"{t} {w} B" for t, w in narrow.items()) or "all 16 B")
    return out


# =============================================================================================
# Tables
# =============================================================================================
METRICS = (  # (name, unit, getter)
    ("programs", "count", lambda r, a: r["programs"]),
    ("num_warps", "count", lambda r, a: r["num_warps"]),
    ("num_stages", "count", lambda r, a: r["num_stages"]),
    ("registers", "per thread", lambda r, a: r["regs"]),
    ("spill_bytes", "bytes", lambda r, a: r["spill_bytes"]),
    ("spill_ops", "count", lambda r, a: r["spill_ops"]),
    ("shared_memory", "bytes", lambda r, a: r["smem"]),
    ("occupancy", "fraction", lambda r, a: a["occupancy"]),
    ("blocks_per_sm", "count", lambda r, a: a["blocks_per_sm"]),
    ("waves", "programs/SMs", lambda r, a: a["waves"]),
    ("stream_access_bytes", "bytes", lambda r, a: a["stream_access_bytes"]),
    ("stream_loads_after_stores", "count", lambda r, a: stream_loads_after_stores(r)),
    ("bytes_in_flight_per_sm", "bytes", lambda r, a: a["bytes_in_flight_per_sm"]),
    ("ideal_bytes", "bytes", lambda r, a: a["ideal_bytes"]),
    ("tensor_core_ops", "count", lambda r, a: r["mma_ops"]),
    ("bandwidth_bound", "fraction of HBM peak", lambda r, a: a["bandwidth_bound"]),
)


def long_table(records: list[dict], versions: dict | None = None):
    """One row per (launch, metric), plus one per (launch, target) with value 1/0."""
    import pandas as pd

    rows = []
    for r in records:
        a = analyse(r)
        base = dict(arch=r["arch"], gpu=GPUS[r["arch"]].name, workload=r["workload"], T=r["T"], n=r["n"], C=r["C"],
                    dtype=r["dtype"], kernel=r["kernel"], hash=r["hash"], **(versions or {}))
        for name, unit, get in METRICS:
            note = a["occupancy_limiter"] if name == "occupancy" else a["bandwidth_limiter"] if name == "bandwidth_bound" else ""
            rows.append(dict(base, metric=name, value=float(get(r, a)), unit=unit, note=note))
        for target, (met, seen) in targets(r, a).items():
            rows.append(dict(base, metric=f"target: {target}", value=float(met), unit="met", note=seen))
    return pd.DataFrame(rows)


KERNEL_ORDER = ("_project_fwd", "_heads_fwd", "_premix_fwd", "_post_res_fwd",
                "_post_res_bwd", "_premix_bwd", "_heads_bwd", "_project_bwd", "_sinkhorn_fwd", "_sinkhorn_bwd")


def distinct_launches(records: list[dict]) -> list[dict]:
    """One record per (arch, kernel, shape, dtype, binary, grid), with `used_by`: the workloads
    launching it (most variant kinds share their stream kernels). Ours in pipeline order, then peers."""
    groups: dict = {}
    for r in records:
        key = (r["arch"], r["kernel"], r["T"], r["n"], r["C"], r["dtype"], r["hash"], tuple(r["grid"]))
        if key not in groups:
            groups[key] = dict(r, used_by=[])
        if r["workload"] not in groups[key]["used_by"]:
            groups[key]["used_by"].append(r["workload"])
    rank = {k: i for i, k in enumerate(KERNEL_ORDER)}
    return sorted(groups.values(), key=lambda r: (r["arch"], -r["T"] * r["C"], r["n"], r["dtype"],
                                                  r["kernel"] not in rank, rank.get(r["kernel"], 0), r["kernel"]))


def markdown(records: list[dict], failures: list[dict], not_covered: list[dict], command: str, versions: dict) -> str:
    lines = ["# Static performance report of the Triton kernels", "",
             f"Command: `{command}`", "",
             "Built with Triton's real compiler and the ptxas/cuobjdump of the triton wheel on a machine without a "
             "GPU (harness/kernel_audit); every number is read from the binaries and launch configurations, not "
             "measured. Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]
    for arch in sorted({r["arch"] for r in records}):
        gpu = GPUS[arch]
        rs = [r for r in distinct_launches(records) if r["arch"] == arch]
        lines += [f"## {arch}: {gpu.name}", "",
                  f"Bytes in flight needed per SM (Little's law, {gpu.hbm_bytes_per_s / 1e12:.1f} TB/s x "
                  f"{gpu.memory_latency_s * 1e9:.0f} ns / {gpu.sms} SMs): {gpu.bytes_in_flight_per_sm / 1024:.0f} KB.", "",
                  "| kernel | used by | T×n×C | dtype | grid | warps | regs | spill B | smem KB | occ | waves | "
                  "stream B/access | stream ld after st | KB in flight/SM | ideal MB | bound (limiter) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            a = analyse(r)
            grid = "×".join(str(g) for g in r["grid"] if g != 1) or "1"
            lines.append(f"| {r['kernel']} | {', '.join(r['used_by'])} | {r['T']}×{r['n']}×{r['C']} | {r['dtype']} | {grid} | {r['num_warps']} | "
                         f"{r['regs']} | {r['spill_bytes']} | {r['smem'] / 1024:.1f} | {a['occupancy']:.0%} | "
                         f"{a['waves']:.1f} | {a['stream_access_bytes'] or '-'} | {stream_loads_after_stores(r)} | "
                         f"{a['bytes_in_flight_per_sm'] / 1024:.0f} | {a['ideal_bytes'] / 1e6:.1f} | "
                         f"{a['bandwidth_bound']:.0%} ({a['bandwidth_limiter']}) |")
        lines.append("")
    lines += targets_section(records), ""
    if failures:
        lines += ["## Failed builds", ""] + [f"- {f['arch']} {f['workload']} {f['T']}x{f['C']}x{f['n']} {f['dtype']}: "
                                            f"{f['error']}" for f in failures] + [""]
    if not_covered:
        lines += ["## Cases the kernels do not take", ""]
        lines += sorted({f"- {c['workload']} at n = {c['n']}: {c['reason']}" for c in not_covered}) + [""]
    return "\n".join(lines)


def targets_section(records: list[dict]) -> str:
    """Per target: met everywhere it applies on sm_90a at 16384 x 4 x 4096 bf16, else where and why not."""
    focus = [r for r in distinct_launches(records) if r["arch"] == "sm_90a" and r["workload"] not in PEERS + NON_DEFAULT
             and (r["T"], r["n"], r["C"], r["dtype"]) == (16384, 4, 4096, "bf16")]
    if not focus:
        return "(the target shape 16384 x 4 x 4096 bf16 on sm_90a was not in this run)"
    seen: dict[str, list] = {}
    for r in focus:
        for target, (met, detail) in targets(r, analyse(r)).items():
            seen.setdefault(target, []).append((r["kernel"], met, detail))
    lines = ["## Targets (sm_90a, 16384 × 4 × 4096, bf16 streams)", "",
             f"Every variant kind at its default settings (the projection in tf32); {', '.join(NON_DEFAULT)} (the "
             "other precisions) are in the table above, built and free of spills, but not held to these.", "",
             "| target | met | kernels not meeting it |", "|---|---|---|"]
    for target, items in seen.items():
        missed = sorted({f"{k}: {d}" for k, met, d in items if not met})
        lines.append(f"| {target} | {'yes' if not missed else 'no'} | {'; '.join(missed) or '-'} |")
    return "\n".join(lines)
