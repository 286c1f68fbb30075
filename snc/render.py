"""How the ``snc`` command renders its results: rich tables on stderr, a bar chart (PNG).

Every function takes a typed result of ``snc.api`` and the console to print to; none computes anything
the result does not hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from rich.console import Console
from rich.table import Table


def _number(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:,}"


def passes(console: Console, report) -> None:
    table = Table(title="passes")
    for col in ("pass", "seconds", "verify s", "peak MB"):
        table.add_column(col, justify="left" if col == "pass" else "right")
    for p in report.passes:
        table.add_row(p.name, f"{p.seconds:.3f}", f"{p.verify_seconds:.3f}", f"{p.peak_rss_mb:,.0f}")
    console.print(table)


def compile_report(console: Console, report, output: Path, seconds: float) -> None:
    cores = report.resources
    table = Table(title=f"{report.arch} for {report.target} ({report.mode} is the build's default mode)")
    for col in ("population", "role", "neurons", "depth", "synapses in", "w bits", "w exp", "w err", "delays in",
                "vth", "syn KiB", "cores", "partition"):
        table.add_column(col, justify="left" if col in ("population", "role", "partition") else "right",
                         no_wrap=col == "population")
    placed = {g["group"]: g for g in cores["groups"]}
    for r in report.layers:
        group = placed[r["population"]]
        table.add_row(r["population"], r["role"], str(r["neurons"]), str(r["depth"]), f"{r['synapses_in']:,}",
                      ",".join(map(str, r["weight_bits"])), ",".join(map(str, r["weight_exp"])),
                      f"{r['weight_rel_error']:.2%}", ",".join(map(str, r["delays_in"])), str(r["vth"]),
                      f"{group['memory_kib']:,.0f}" if "memory_kib" in group else "-",
                      str(group.get("cores", "-")), r["partition"])
    console.print(table)
    fits = "does NOT fit the target (--allow-oversize): " + "; ".join(cores["violations"]) if cores["violations"] \
        else "fits the target"
    guidance = (f"threshold guidance x{report.threshold_scale}: x{report.guidance[0]:.5f}..{report.guidance[1]:.5f} "
                "after vth rounding\n") if report.guidance else ""
    console.print(
        f"host: {', '.join(report.host_ops + report.host_parts) or 'nothing'}\n"
        f"synapses: {report.synapses:,} on chip (the NIR graph's ops had {report.synapses_before_reassociation:,}; "
        f"{report.rewritten_edges} edges re-associated, relays included)\n"
        "w bits / w exp: weight magnitude bits and exponents of the synapses in; w err: their largest relative L2 "
        "quantization error; partition chip+host: the population also takes a host current\n"
        f"pipeline depth {report.depth}, {report.call_steps} steps per "
        + ("denoiser call" if report.arch else "call (a graph without per-step values runs any length: snc run)")
        + f" (T={report.timestep})\n"
        f"{guidance}"
        f"resources (one image, readout included): {cores['neurons']:,} neurons, {cores['synapses']:,} synapses, "
        f"{_number(cores.get('cores'))} cores, {_number(cores.get('chips'))} chips: {fits}\n"
        f"wrote {output}: compiled in {report.compile_seconds:.1f} s, {seconds:.1f} s with writing; "
        f"peak memory {report.peak_rss_mb:.0f} MB",
        highlight=False,
    )

def verify_report(console: Console, report, seconds: float) -> None:
    keys = list(report.output_rel_error)
    table = Table(title=f"spike agreement over {report.n} images x diffusion steps {report.timesteps}")
    for col in ["population", "neurons", "torch rate"] + [k.replace("_", " ") for k in keys]:
        table.add_column(col, justify="left" if col == "population" else "right")
    for r in report.layers:
        table.add_row(r["population"], str(r["neurons"]), f"{r['torch_rate']:.3f}",
                      *["off" if r[k] is None else f"{r[k]:.2%}" for k in keys])
    console.print(table)
    a, e = report.agreement, report.output_rel_error
    lines = ["all layers: " + ", ".join(f"{k.replace('_', ' ')} {a[k]:.4%}" for k in keys),
             "output relative error: " + ", ".join(f"{k.replace('_', ' ')} {e[k]:.2e}" for k in keys)
             + f"  ({seconds} s)"]
    smaller = {k: b for k, b in report.batches.items() if b < report.n}
    if smaller:
        lines.append("images per call, to fit this machine's memory: "
                     + ", ".join(f"{k} {b}" for k, b in smaller.items()))
    if report.switched_off:
        lines.append(f"{report.switched_off:,} neuron-steps of experts switched off by the compiled selection "
                     "were left out of the comparisons with torch (off: never compared)")
    for key, same in report.readout_identical.items():
        lines.append(f"{key.replace('_', ' ')} (the same arithmetic): {a[key]:.4%} of spikes equal (relays "
                     f"included), readout {'identical' if same else 'DIFFERENT'} in every call")
    console.print("\n".join(lines), highlight=False)

def energy_plot(report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    rows = [r for r in report.layers if r["energy_exact_pj"] or r["energy_papers_pj"]]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(rows) + 1.5))
    ax.barh(y - 0.2, [r["energy_exact_pj"] / 1e3 for r in rows], 0.4, label="exact (netlist)")
    ax.barh(y + 0.2, [r["energy_papers_pj"] / 1e3 for r in rows], 0.4, label="papers (fr x T x FLOPs)")
    ax.set_yticks(y, [r["layer"] for r in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("nJ per image per denoiser call")
    estimate = " (estimate)" if report.estimate else ""
    ax.set_title(f"energy per layer on {report.profile}{estimate}, spikes from {report.backends[0]}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)

def energy_report(console: Console, report, backends: list[str], ann: bool) -> None:
    main = backends[0]
    table = Table(title=f"energy per layer, per image and denoiser call, on {report.profile}"
                        + (" (ESTIMATE)" if report.estimate else ""))
    graded = any(r.get("graded_ops_exact") for r in report.layers)
    cols = ["layer", "role", "neurons", f"rate {main}", "synapses out", "SOPs exact"] + (["graded ops"] if graded else [])
    cols += ["SOPs papers", "MACs exact", "MACs papers", "nJ exact", "nJ papers"]
    cols += [f"spikes {b} vs {main}" for b in backends[1:]]
    for col in cols:
        table.add_column(col, justify="left" if col in ("layer", "role") else "right")

    def num(v: float) -> str:
        return f"{v:,.0f}" if v else "-"

    for r in report.layers:
        row = [r["layer"], r["role"].split(" (")[0], num(r["neurons"]),
               f"{r[f'rate[{main}]']:.3f}" if f"rate[{main}]" in r else "-", num(r["synapses_out"]),
               num(r["sops_exact"]), *([num(r["graded_ops_exact"])] if graded else []), num(r["sops_papers"]),
               num(r["macs_exact"]), num(r["macs_papers"]),
               f"{r['energy_exact_pj'] / 1e3:,.1f}", f"{r['energy_papers_pj'] / 1e3:,.1f}"]
        for b in backends[1:]:
            ref, other = r.get(f"spikes[{main}]"), r.get(f"spikes[{b}]")
            row.append(f"{(other - ref) / ref:+.2%}" if ref else "-")
        table.add_row(*row)
    console.print(table)
    if ann:
        kinds = Table(title="ANN twin vs SNN (papers' method) by layer kind, per image and denoiser call")
        for col in ("layer kind", "layers", "ANN MACs", "SNN SOPs", "SNN MACs", "ANN nJ", "SNN nJ"):
            kinds.add_column(col, justify="left" if col == "layer kind" else "right")
        for k in report.kinds:
            kinds.add_row(k["kind"], str(k["layers"]), num(k["ann_macs"]), num(k["snn_sops"]), num(k["snn_macs"]),
                          f"{k['ann_energy_pj'] / 1e3:,.1f}", f"{k['snn_energy_pj'] / 1e3:,.1f}")
        console.print(kinds)
    call, sample, res = report.totals["per_call"], report.totals["per_sample"], report.resources
    estimates = " (ESTIMATES)" if report.estimate else ""
    if report.level == "nir":
        lines = [
            f"per call (NIR level, papers' method): SOPs {call['sops_papers']:,.0f}; real-valued and host MACs "
            f"{call['macs_papers']:,.0f}; neuron updates {call['neuron_updates']:,.0f}; ANN twin MACs "
            f"{call['ann_macs']:,.0f}",
            f"per sample ({report.steps_per_sample} steps): SNN {sample['energy_papers_mj']:.4g} mJ | ANN twin "
            f"{sample['ann_energy_mj']:.4g} mJ{estimates}",
            *report.formulas,
            f"profile basis: {report.basis}",
            f"NIR graph: {res['neurons']:,} neurons, {res['synapses']:,} synapses in its ops (not lowered: no "
            "cores, chips or limits checked)",
        ]
    else:
        lines = [
            f"per call: SOPs exact {call['sops_exact']:,.0f} | papers {call['sops_papers']:,.0f}; "
            + (f"graded ops (payload x weight) {call['graded_ops_exact']:,.0f}; " if call["graded_ops_exact"] else "")
            + f"MACs exact "
            f"{call['macs_exact']:,.0f} (host, TSM gains) | papers {call['macs_papers']:,.0f}; neuron updates "
            f"{call['neuron_updates']:,.0f}; ANN twin MACs {call['ann_macs']:,.0f}",
            f"per sample ({report.steps_per_sample} steps): exact {sample['energy_exact_mj']:.4g} mJ | papers "
            f"{sample['energy_papers_mj']:.4g} mJ | ANN twin {sample['ann_energy_mj']:.4g} mJ{estimates}",
            *report.formulas,
            f"profile basis: {report.basis}",
            f"resources (one image): {res['neurons']:,} neurons, {res['synapses']:,} synapses"
            + (f", {res['memory_kib']:,.0f} KiB synaptic memory, {res['cores']:,} cores" if "cores" in res else "")
            + (f", {res['chips']:,} chips" if "chips" in res else "")
            + (f"; does NOT fit {report.profile}: " + "; ".join(res["violations"]) if res["violations"] else ""),
        ]
    if report.random_init:
        lines.append("random init: firing rates and SOPs mean nothing; MAC counts and resources hold")
    for line in lines:
        console.print(line, highlight=False)


def pipeline_energy_report(console: Console, report, backends: list[str], ann: bool) -> None:
    """Every core's report (its per-sample line counts its calls per sample), then the sample's total."""
    for name, stage in report.stages.items():
        console.rule(f"{name}: {stage.steps_per_sample} call(s) per sample")
        energy_report(console, stage, backends, ann)
    total = report.per_sample
    first = next(iter(report.stages.values()))
    calls = " + ".join(f"{r.steps_per_sample} {name}" for name, r in report.stages.items())
    console.print(f"per sample of {report.arch} ({calls} calls): exact {total['energy_exact_mj']:.4g} mJ | papers "
                  f"{total['energy_papers_mj']:.4g} mJ | ANN twin {total['ann_energy_mj']:.4g} mJ"
                  + (" (ESTIMATES)" if first.estimate else ""), highlight=False)


def graph_energy_report(console: Console, report) -> None:
    table = Table(title=f"energy per layer, per input sequence of {report.steps} steps, on {report.profile}"
                        + (" (ESTIMATE)" if report.estimate else ""))
    cols = ["layer", "role", "neurons", "spikes", "rate", "synapses out", "SOPs", "neuron updates", "host MACs",
            "nJ"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("layer", "role") else "right")

    def num(v: float) -> str:
        return f"{v:,.0f}" if v else "-"

    for r in report.layers:
        table.add_row(r["layer"], r["role"], num(r["neurons"]), num(r["spikes"]), f"{r['rate']:.3f}" if r["neurons"]
                      else "-", num(r["synapses_out"]), num(r["sops"]), num(r["updates_active"] + r["updates_idle"]),
                      num(r["host_macs"]), f"{r['energy_pj'] / 1e3:,.2f}")
    console.print(table)
    t, res = report.totals, report.resources
    lines = [
        f"per input sequence: SOPs {t['sops']:,.0f}; spikes {t['spikes']:,.0f}; neuron updates "
        f"{t['neuron_updates']:,.0f}; host MACs {t['host_macs']:,.0f}; energy {t['energy_pj'] / 1e3:,.2f} nJ (chip "
        f"{t['chip_energy_pj'] / 1e3:,.2f}, host {t['host_energy_pj'] / 1e3:,.2f})"
        + (" (ESTIMATES)" if report.estimate else ""),
        *report.formulas,
        f"profile basis: {report.basis}",
        f"resources: {res['neurons']:,} neurons, {res['synapses']:,} synapses"
        + (f", {res['cores']:,} cores" if "cores" in res else "")
        + (f"; does NOT fit {report.profile}: " + "; ".join(res["violations"]) if res.get("violations") else ""),
    ]
    for line in lines:
        console.print(line, highlight=False)
