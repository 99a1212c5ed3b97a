"""``report.md`` of the main job, rendered from ``report.json``'s content (see distill.jobs.pipeline).

Every description comes from the models themselves (``describe()`` of each student), so a new
student kind appears here without a line of this file changing.
"""

from __future__ import annotations

from pathlib import Path


def _pct(x) -> str:
    return "" if x is None else f"{x:.1f} %"


def _acc(accuracy: float | None, ci95=None, sd: float | None = None) -> str:
    """``86.87 % ± 0.50 [84.7, 88.8]`` (the sd over seeds and the interval when known)."""
    if accuracy is None:
        return ""
    return (f"{100 * accuracy:.2f} %" + ("" if sd is None else f" ± {100 * sd:.2f}")
            + ("" if not ci95 else f" [{100 * ci95[0]:.1f}, {100 * ci95[1]:.1f}]"))


def _ks(m: dict) -> str:
    """SUPERB KS: the mean over downstream seeds, their sd, the interval (``86.46 % ± 0.50 [84.3, 88.4]``)."""
    seeds = m.get("ks_seed_runs")
    sd = seeds["sd"] if seeds and len(seeds["values"]) > 1 else None
    return _acc(m["ks_test_accuracy"], m.get("ks_test_ci95"), sd)


def _lr(m: dict) -> str:
    """The downstream lr used, and the grid it was chosen from by validation."""
    if not m.get("ks_lr"):
        return ""
    sel = m.get("ks_lr_selection")
    return f"{m['ks_lr']:g}" + (f" (of {', '.join(sel['valid'])})" if sel else "")


def _selection(ks: dict) -> str:
    """How the downstream lr and seeds were set, for the KS sentence of the report."""
    grid, seeds = ks.get("lr_grid") or [], ks.get("seeds") or 1
    text = f", each model at the lr of {', '.join(f'{lr:g}' for lr in grid)} best on validation" if grid else ""
    return text + (f", mean over {seeds} downstream seeds (± their sd)" if seeds > 1 else "")


def _protocols_table(r: dict) -> list[str]:
    """Per model: SUPERB's protocol and the redundancy paper's, side by side, each with its interval."""
    p = r.get("paper")
    if not p:
        return []
    n_superb = r["models"]["teacher"].get("ks_test_n")
    n_paper = p["models"]["teacher"]["test"]["n"]
    lines = ["## Both protocols, side by side", "",
             f"SUPERB's (frozen model, s3prl's downstream on its hidden states; the pretrained teacher; n = {n_superb}) "
             f"and the redundancy paper's (teacher fine-tuned on KS, mimic stage 1 + stage 2; n = {n_paper}), on the "
             "same KS test clips. Brackets: 95 % Wilson intervals. SUPERB figures: each model at its own best "
             "downstream lr (chosen by validation), the mean over downstream seeds ± their sd when several ran.", "",
             "| model | params total | SUPERB KS acc. | SUPERB retention | paper-protocol acc. | paper retention |",
             "|---|---|---|---|---|---|"]
    for name, m in r["models"].items():
        paper_acc = _acc(m["paper_test_accuracy"], (m.get("paper_test") or {}).get("ci95"))
        lines.append(f"| {name} | {m['params_total']:,} | {_ks(m)} | "
                     f"{_pct(m.get('retention_pct'))} | {paper_acc} | {_pct(m.get('paper_retention_pct'))} |")
    return lines + [""]


def _models_table(r: dict) -> list[str]:
    lines = ["| model | kind | params total | params stack | stack compression | CPU s / s audio | speed-up | "
             "KS test acc. | KS lr (chosen by validation) | retention | distillation (steps, best valid loss) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in r["models"].items():
        d = m.get("distill")
        speedup = "" if name == "teacher" else f"{m['speedup']:.1f}x"
        distilled = "" if not d else f"{d['steps']}, {d['best_valid_loss']:.4f}"
        lines.append(
            f"| {name} | {m.get('kind', '')} | {m['params_total']:,} | {m['params_stack']:,} | "
            f"{_pct(m.get('stack_compression_pct'))} | {m['cpu_seconds_per_audio_second']:.4f} | "
            f"{speedup} | {_ks(m)} | {_lr(m)} | {_pct(m.get('retention_pct'))} | "
            f"{distilled} |")
    return lines


def _baseline(base: dict | None) -> list[str]:
    """Before / after an earlier run (``baseline_report``): what longer training did to each model."""
    if not base:
        return []

    def pair(row, key, fmt):
        a, b = row["before"][key], row["after"][key]
        return " -> ".join("" if v is None else fmt(v) for v in (a, b))

    lines = [f"### Against the earlier run `{base['report']}` ({base['date']})", "",
             "| model | distillation steps | best valid loss | KS test acc. | retention |", "|---|---|---|---|---|"]
    for name, row in base["models"].items():
        lines.append(f"| {name} | {pair(row, 'steps', str)} | {pair(row, 'best_valid_loss', lambda v: f'{v:.4f}')} | "
                     f"{pair(row, 'ks_test_accuracy', lambda v: f'{100 * v:.2f} %')} | "
                     f"{pair(row, 'retention_pct', lambda v: f'{v:.1f} %')} |")
    t = base["seconds_total"]
    return lines + ["", f"Wall time {t['before'] / 60:.1f} -> {t['after'] / 60:.1f} min.", ""]


def _layer_consistency(name: str, lc: dict) -> list[str]:
    c = lc["claims"]
    lines = [f"### Layer consistency: `{name}` at every depth", "",
             f"One trained model ({lc['groups']} shared layer group(s), {lc['max_depth']} applications), exported "
             "as a plain model at each depth:", "",
             "| depth | KS test acc. (s3prl) | KS retention | probe acc. | CPU s / s audio |", "|---|---|---|---|---|"]
    for p in lc["curve"]:
        ks = "" if p["ks_test_accuracy"] is None else f"{100 * p['ks_test_accuracy']:.2f} %"
        lines.append(f"| {p['depth']} | {ks} | {_pct(p['ks_retention_pct'])} | {100 * p['probe_accuracy']:.1f} % | "
                     f"{p['cpu_seconds_per_audio_second']:.4f} |")
    t = lc["teacher"]
    lines += [f"| teacher | {100 * t['ks_test_accuracy']:.2f} % | | | {t['cpu_seconds_per_audio_second']:.4f} |", "",
              "Against the Layer Consistency paper (Tian et al., arXiv 2105.00812), measured in this run:", "",
              "| claim | paper | here |", "|---|---|---|",
              f"| fewer stack parameters than the teacher | {c['param_ratio']['paper']}x | "
              f"{c['param_ratio']['ratio']:.1f}x ({c['param_ratio']['shared_stack']:,} vs "
              f"{c['param_ratio']['teacher_stack']:,}) |",
              f"| faster training step than a non-shared model of the same depth trained at full depth | "
              f"{c['train_step']['paper_pct']} % | {c['train_step']['faster_pct']:.1f} % "
              f"({c['train_step']['shared_sampled_seconds']:.3f} s vs {c['train_step']['unshared_full_depth_seconds']:.3f} s"
              f"; against the same non-shared model at the same sampled depths: "
              f"{c['train_step']['faster_than_unshared_sampled_pct']:.1f} %, the part due to sharing) |",
              f"| faster inference at half depth ({c['half_depth']['depth']} of {c['half_depth']['full_depth']}) | "
              f"{c['half_depth']['paper_pct']} % | {c['half_depth']['inference_faster_pct']:.1f} % |",
              f"| KS accuracy kept at half depth | comparable | {_pct(c['half_depth']['ks_kept_pct'])} "
              f"(probe {_pct(c['half_depth']['probe_kept_pct'])}) |", "",
              f"![depth curve](layer_consistency/{name}/depth_curve.png)", ""]
    return lines


def _distill_audio(r: dict) -> str:
    minutes = r.get("distill_minutes")
    if not minutes:
        return f"Distillation audio: {', '.join(f'`{d}`' for d in r['distill_data'])}."
    parts = ", ".join(f"`{d}` {m:.1f} min" for d, m in minutes.items())
    return f"Distillation audio ({sum(minutes.values()):.1f} min): {parts}."


def _real_speech(rs: dict | None) -> list[str]:
    """(a) the teacher's WER on held-out real prompts, (b) blocks real vs synthetic, (c) students' reconstruction."""
    if not rs:
        return []
    lines = ["## Real recorded speech", ""]
    w = rs["teacher_wer"]
    if w["measured"]:
        lines += [f"(a) The teacher on real speech: {100 * w['wer']:.2f} % WER ({w['errors']} errors in {w['words']} "
                  f"words) on {w['utterances']} held-out English prompts ({w['audio_seconds'] / 60:.1f} min, never "
                  "distilled on), its own decoder, greedy, input padded to 30 s as Whisper was trained.", ""]
    else:
        lines += [f"(a) The teacher's WER was not measured: {w['reason']}.", ""]
    b = rs["blocks"]
    lines += [f"(b) Layer similarity ({b['measure']}) on held-out real prompts ({b['real']['counts']['utterances']} "
              f"utterances) and held-out synthetic sentences ({b['synthetic']['counts']['utterances']}): blocks "
              f"{b['real']['blocks']['blocks']} (real) and {b['synthetic']['blocks']['blocks']} (synthetic): "
              f"{'the same' if b['same_blocks'] else 'they differ'}; mimic targets {b['real']['mimic_targets']} and "
              f"{b['synthetic']['mimic_targets']}. Matrices: mean |difference| {b['mean_abs_difference']:.3f} "
              f"(largest {b['max_abs_difference']:.3f}), Pearson r of the off-diagonal entries "
              f"{b['pearson_off_diagonal']:.3f}.", "",
              "![real](real_speech/heatmap_real.png) ![synthetic](real_speech/heatmap_synthetic.png)", ""]
    rec = rs.get("reconstruction") or {}
    if rec:
        lines += ["(c) Each student's reconstruction of the teacher's states it regresses (mean over its pairs; "
                  "cosine, higher is better; L1, lower is better) on held-out real prompts against held-out synthetic "
                  "sentences:", "",
                  "| student | cosine real | cosine synthetic | drop | L1 real | L1 synthetic | L1 real / synthetic |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in rec.items():
            re_, sy = row["real"]["all"], row["synthetic"]["all"]
            lines.append(f"| {name} | {re_['cosine']:.3f} | {sy['cosine']:.3f} | {row['cosine_drop']:+.3f} | "
                         f"{re_['l1']:.3f} | {sy['l1']:.3f} | {row['l1_ratio']:.2f} |")
        lines += ["", "![reconstruction](real_speech/reconstruction.png)", ""]
    return lines


def _lowrank_curve(c: dict | None) -> list[str]:
    if not c:
        return []
    t = c["teacher"]
    ks = "ks_test_accuracy" in (c["points"][0] if c["points"] else {})
    lines = ["", "## Low-rank factorisation without retraining", "",
             "Each linear map of the stack factorised from the principal components of its inputs on the "
             f"distillation audio (LiteASR-style), no training step. Teacher: probe {t['probe']:.3f}"
             + (f", SUPERB KS {100 * t['ks']:.1f} %" if ks else "") + f", {t['cpu']:.4f} CPU s per audio s.", "",
             "| parameters kept | variance threshold | maps factorised | probe | " + ("SUPERB KS | " if ks else "")
             + "CPU s / audio s |", "|---|---|---|---|" + ("---|" if ks else "") + "---|"]
    for p in c["points"]:
        lines.append(f"| {100 * p['fraction']:.1f} % | {p['threshold']:.4f} | {p['maps_factorised']} | "
                     f"{p['probe_accuracy']:.3f} | " + (f"{100 * p['ks_test_accuracy']:.1f} % | " if ks else "")
                     + f"{p['cpu_seconds_per_audio_second']:.4f} |")
    return lines + ["", "![low-rank curve](lowrank_curve/curve.png) ![low-rank time](lowrank_curve/time.png)"]


def render_report(r: dict) -> str:
    models = r["models"]
    lines = [f"# stackdistill report ({r['date']})", "", f"Teacher `{r['teacher']}`.", ""]
    lines += [f"- `{n}`: {m['describe']}" for n, m in models.items() if "describe" in m]
    lines += [""] + _models_table(r) + [
        "",
        f"KS: s3prl `SuperbKS` (SUPERB protocol: frozen model, learnt weighted sum of its hidden states and a "
        f"small downstream), {r['ks']['steps']} downstream steps a run{_selection(r['ks'])}, 12 classes (chance "
        f"{100 * r['ks']['chance_accuracy']:.1f} %), {r['models']['teacher'].get('ks_test_n')} test clips (brackets: "
        f"95 % Wilson interval), data `{r['ks']['data']}`.",
        _distill_audio(r),
        f"Timing: {r['timing_batch']['utterances']} utterances, {r['timing_batch']['audio_seconds']:.1f} s of audio, "
        f"{r['timing_batch']['threads']} threads, median of {r['timing_batch']['rounds']} interleaved rounds.", ""]
    env = r.get("environment")
    if env:
        packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
        lines += [f"Environment (what bit-identical figures also depend on): Python {env['python']}, {packages}; "
                  f"{env['torch_threads']} torch threads, CPU capability {env['torch_cpu_capability']}.", ""]
    c = r.get("cache")
    if c:
        lines += [f"Teacher targets: computed once for every student into `{c['folder']}` ({c['segments']:,} segments, "
                  f"{c['audio_seconds'] / 60:.1f} min of audio, slots {c['slots']}, {c['bytes'] / 1e6:.0f} MB float16; "
                  + ("found complete, reused" if c["reused"] else f"built in {c['build_seconds']:.0f} s") + ").", ""]
    lines += _baseline(r.get("baseline"))
    b = r.get("best_under_a_third")
    if b:
        lines += [f"Best student with at most a third of the teacher's parameters: `{b['name']}` "
                  f"({100 * b['params_fraction_of_teacher']:.1f} % of them) keeps {_pct(b['retention_pct']) or 'an undefined share'} of the "
                  f"teacher's KS accuracy (goal {b['goal_retention_pct']:.0f} %: "
                  f"{'met' if b['met'] else 'not met'}).", ""]
    else:
        lines += ["No student has at most a third of the teacher's parameters.", ""]
    if r.get("pareto_frontier"):
        lines += ["Non-dominated (no other model is smaller and more accurate on KS), smallest first: "
                  + ", ".join(f"`{n}`" for n in r["pareto_frontier"]) + ".", ""]
    lines += ["![KS accuracy against parameters, 95 % intervals, the frontier](pareto.png)", ""]
    lines += _protocols_table(r)
    if r.get("paper"):
        from distill.jobs.paper import render_paper

        lines += [render_paper(r["paper"]).replace("](pruning.png)", "](paper/pruning.png)"), ""]
    for name, lc in (r.get("layer_consistency") or {}).items():
        lines += _layer_consistency(name, lc)
    lines += _real_speech(r.get("real_speech"))
    a = r["analysis"]
    lines += ["## Layer similarity", "",
              f"{a['counts']['utterances']} utterances ({a['counts']['frames']} frames). Blocks of mutually similar "
              f"hidden states by {a['block_measure']}: {a['blocks'][a['block_measure']]['blocks']}; mimic students "
              f"regress layers {a['mimic_targets']}.", ""]
    lines += [f"![{Path(h).stem}](analysis/{Path(h).name})" for h in a["heatmaps"]]
    p = r.get("pruning")
    if p:
        k = len(next(iter(p["curve"].values())))
        lines += ["", "## Pruning without retraining", "",
                  f"{p['metric']} (full model {p['full_model_metric']:.3f}) after removing n layers:", "",
                  "| ordering | " + " | ".join(f"n={i}" for i in range(k)) + " |", "|---" * (k + 1) + "|"]
        lines += [f"| {o} | " + " | ".join(f"{v:.3f}" for v in vals) + " |" for o, vals in p["curve"].items()]
        c = p["comflp"]
        lines += ["", f"CoMFLP, {c['n_remove']} layers removed: coarse search {c['seconds']['coarse']:.3f} s, "
                  f"fine search over {len(c['candidates'])} candidates {c['seconds']['fine']:.1f} s; best removes "
                  f"{c['best']['removed']} ({p['metric']} {c['best']['metric']:.3f}).", "",
                  "![pruning curve](prune/curve.png)"]
    lines += _lowrank_curve(r.get("lowrank_curve"))
    lines += ["", f"Wall time: {r['seconds']['total'] / 60:.1f} min in all.", ""]
    return "\n".join(lines)
