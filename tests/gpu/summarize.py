#!/usr/bin/env python3
"""Summary of a tests/gpu/run.sh run: reads the logs in WORKDIR, prints the figures.

  summarize.py WORKDIR

WORKDIR holds moka_<engine>_b<batch>.log (moka time on the GPU; engine moka or cudnn),
torch.log (torch_bench.py result lines), test.log, sanitizer.log, gpu.txt. Prints img/s,
peak memory and the ratios; then, per convolution layer of ResNet-50, the time of moka's
kernels against the cuDNN engine (target: moka >= 0.8x cuDNN's speed, i.e.
t_cudnn / t_moka >= 0.8).
"""
import glob
import os
import re
import sys

LAYER = re.compile(r"\]\s*(\S+)\t(forward|backward): ([0-9.eE+-]+) ms\.")
UNSYNC = re.compile(r"Average throughput \(unsynchronised passes\): ([0-9.]+) img/s \(([0-9.eE+-]+) ms")
SYNCED = re.compile(r"Average throughput: ([0-9.]+) img/s")
FB = re.compile(r"Average Forward-Backward: ([0-9.eE+-]+) ms")
MEM = re.compile(r"GPU memory of net .*: ([0-9.]+) MiB now, ([0-9.]+) MiB peak")
CONV = re.compile(r"^(conv1|res\d+[a-z]_branch(1|2[abc]))$")


# The A/B runs of run.sh (one switch off each, the first batch): log name -> row label.
AB_RUNS = {
    "unfused": "moka fp32, no BN fusion, no memory plan",
    "novec": "moka fp32, MOKA_BNF_VEC=0 (scalar chains)",
    "nosplit": "moka fp32, MOKA_CONV_WGRAD_SPLIT=0",
    "split": "moka fp32, MOKA_CONV_WGRAD_SPLIT=1",
    "nowino": "moka fp32, MOKA_CONV_WINOGRAD=0",
    "noshare": "moka fp32, MOKA_CUDA_SPLIT_SHARE=0",
    "nosplitbw": "moka fp32, MOKA_FUSE_SPLIT=0",
    "winowgrad": "moka fp32, MOKA_CONV_WINOGRAD_WGRAD=1",
    "wino4": "moka fp32, MOKA_CONV_WINOGRAD=4 (F(4x4))",
    "cudnnnofind": "moka fp32, cuDNN engine, MOKA_CUDNN_FIND=0",
    "nhwcbf16": "moka bf16, moka's NHWC kernel (MOKA_CONV_NHWC=1)",
    "autonhwcbf16": "moka bf16, auto with the NHWC kernel",
    "bf16actbf16": "moka bf16, bf16 channels-last activations",
}


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def moka_runs(work):
    runs = {}
    for path in sorted(glob.glob(os.path.join(work, "moka_*_b*.log"))):
        m = re.match(r"moka_(\w+?)_b(\d+)\.log$", os.path.basename(path))
        if not m:
            continue
        text = read(path)
        r = {"engine": m.group(1), "batch": int(m.group(2)), "layers": {}}
        for name, kind, ms in LAYER.findall(text):
            r["layers"].setdefault(name, {})[kind] = float(ms)
        u = UNSYNC.search(text)
        s = SYNCED.search(text)
        fb = FB.search(text)
        mem = MEM.search(text)
        r["img_s"] = float(u.group(1)) if u else None
        r["pass_ms"] = float(u.group(2)) if u else None
        r["img_s_synced"] = float(s.group(1)) if s else None
        r["fb_ms_synced"] = float(fb.group(1)) if fb else None
        r["peak_mib"] = float(mem.group(2)) if mem else None
        r["error"] = next((ln for ln in text.splitlines() if "error" in ln.lower()), None)
        runs[(r["engine"], r["batch"])] = r
    return runs


def torch_runs(work):
    out = {}
    for line in read(os.path.join(work, "torch.log")).splitlines():
        if not line.startswith("result "):
            continue
        kv = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
        out[(kv["precision"], kv["layout"], int(kv["batch"]))] = kv
    return out


def fmt(v, f="%.1f"):
    return f % v if isinstance(v, (int, float)) else "n/a"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    work = sys.argv[1]
    print(read(os.path.join(work, "gpu.txt")).strip())
    print()
    t = read(os.path.join(work, "test.log"))
    # one section per step ("== NAME: command" headers written by run.sh's step)
    sections = re.split(r"^== ", t, flags=re.M)[1:] or ["?: ?\n" + t]
    for sec in sections:
        cmd = sec.split("\n", 1)[0]
        words = cmd.rsplit(": ", 1)[-1].split()
        # "env A=1 prog args": the program, then the environment it ran with
        k = 1 if words[:1] == ["env"] else 0
        envs = []
        while k < len(words) and "=" in words[k]:
            envs.append(words[k])
            k += 1
        name = os.path.basename(words[k]) if k < len(words) else "?"
        if envs:
            name += " (" + " ".join(envs) + ")"
        if "train_cli.sh" in cmd:
            ok = re.search(r"^ok moka train on the GPU", sec, re.M)
            print("moka train on the GPU (tests/gpu/train_cli.sh): %s" %
                  ("ok" if ok else "FAILED (see test.log)"))
            for ln in sec.splitlines():
                if ln.startswith("FAIL"):
                    print("  " + ln)
            continue
        m = re.findall(r"^(\d+) passed, (\d+) failed$", sec, re.M)
        print("GPU tests (tests/gpu/%s): %s" %
              (name, "%s passed, %s failed" % m[-1] if m else "did not finish (see test.log)"))
        for ln in sec.splitlines():
            if ln.startswith("[FAIL]") or ln.startswith("SKIP"):
                print("  " + ln)
    s = read(os.path.join(work, "sanitizer.log"))
    sm = re.findall(r"ERROR SUMMARY: (\d+) error", s)
    print("compute-sanitizer (memcheck, mini_train moka time): %s" %
          (("%s errors" % sm[0]) if sm else "no summary (see sanitizer.log)"))
    if "test_cuda_igemm" in s:
        print("compute-sanitizer (memcheck, test_cuda_igemm quick): %s" %
              (("%s errors" % sm[1]) if len(sm) > 1 else "no summary (see sanitizer.log)"))
    if "racecheck" in s:
        rc = re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", s)
        print("compute-sanitizer (racecheck, test_cuda_igemm nhwc): %s" %
              (("%s hazards (%s errors, %s warnings)" % rc[-1]) if rc else
               "no summary (see sanitizer.log)"))
    print()

    runs, tr = moka_runs(work), torch_runs(work)
    batches = sorted({b for (_, b) in runs} | {k[2] for k in tr})
    print("ResNet-50 v1 training (forward+backward, 224x224), img/s:")
    print("  %-44s %8s %10s %10s" % ("", "batch", "img/s", "peak MiB"))
    for b in batches:
        for eng in ("moka", "cudnn", "auto", "mokabf16", "cudnnbf16", "autobf16") + tuple(
                k for k in AB_RUNS if k != "unfused") + ("unfused",):
            r = runs.get((eng, b))
            if r:
                print("  %-44s %8d %10s %10s%s" % (
                    AB_RUNS[eng] if eng in AB_RUNS else
                    "moka %s, %s convolutions" % ("bf16" if eng.endswith("bf16") else "fp32",
                                                  "moka's own" if eng.startswith("moka")
                                                  else "faster-per-layer" if eng.startswith("auto")
                                                  else "cuDNN"),
                    b, fmt(r["img_s"]), fmt(r["peak_mib"], "%.0f"),
                    "  (per-layer synced: %s img/s)" % fmt(r["img_s_synced"])
                    + ("  ERROR: %s" % r["error"] if r["error"] and not r["img_s"] else "")))
        for prec in ("fp32", "bf16"):
            for lay in ("nchw", "channels_last"):
                k = tr.get((prec, lay, b))
                if k:
                    print("  %-44s %8d %10s %10s" % (
                        "PyTorch %s %s%s" % (prec, lay, " (TF32 off)" if prec == "fp32" else " AMP"),
                        b, k["img_s"], k["peak_mib"]))
    print()
    print("Ratios (same GPU, same run):")
    for b in batches:
        mk, cd = runs.get(("moka", b)), runs.get(("cudnn", b))
        tf = tr.get(("fp32", "nchw", b))
        tb = tr.get(("bf16", "channels_last", b))

        def ratio(a, c):
            return "%.2f" % (a / c) if a and c else "n/a"
        mi = mk["img_s"] if mk else None
        ci = cd["img_s"] if cd else None
        ti = float(tf["img_s"]) if tf else None
        bi = float(tb["img_s"]) if tb else None
        mb, cb = runs.get(("mokabf16", b)), runs.get(("cudnnbf16", b))
        mbi = mb["img_s"] if mb else None
        cbi = cb["img_s"] if cb else None
        print("  batch %d: moka/PyTorch fp32 = %s (target >= 1.0); cuDNN engine/PyTorch fp32 = %s; "
              "moka/cuDNN engine = %s; moka fp32/PyTorch bf16 AMP channels_last = %s; "
              "moka bf16/PyTorch bf16 AMP channels_last = %s (bf16 target >= 1.5); "
              "moka bf16/cuDNN engine bf16 = %s"
              % (b, ratio(mi, ti), ratio(ci, ti), ratio(mi, ci), ratio(mi, bi), ratio(mbi, bi),
                 ratio(mbi, cbi)))
        nb = runs.get(("nhwcbf16", b))
        if nb:
            print("  batch %d: moka bf16 NHWC kernel (MOKA_CONV_NHWC=1)/PyTorch bf16 AMP "
                  "channels_last = %s (bf16 target >= 1.5); /moka bf16 WMMA = %s; "
                  "/cuDNN engine bf16 = %s" % (b, ratio(nb["img_s"], bi), ratio(nb["img_s"], mbi),
                                               ratio(nb["img_s"], cbi)))
        ba = runs.get(("bf16actbf16", b))
        if ba:
            print("  batch %d: bf16 channels-last activations (MOKA_BF16_ACT=1)/PyTorch bf16 AMP "
                  "channels_last = %s (bf16 target >= 1.5); /moka bf16 NHWC kernel alone = %s"
                  % (b, ratio(ba["img_s"], bi), ratio(ba["img_s"], nb["img_s"] if nb else None)))
        an = runs.get(("autonhwcbf16", b))
        if an:
            print("  batch %d: auto with the NHWC kernel bf16/PyTorch bf16 AMP channels_last = %s"
                  % (b, ratio(an["img_s"], bi)))
        au, aub = runs.get(("auto", b)), runs.get(("autobf16", b))
        if au or aub:
            print("  batch %d: faster-per-layer engine (MOKA_CONV_ENGINE=auto)/PyTorch fp32 = %s; "
                  "auto bf16/PyTorch bf16 AMP channels_last = %s"
                  % (b, ratio(au["img_s"] if au else None, ti),
                     ratio(aub["img_s"] if aub else None, bi)))
    print()
    for b, (em, ec, prec) in [(b, p) for b in batches for p in (
            ("moka", "cudnn", "fp32"), ("mokabf16", "cudnnbf16", "bf16"),
            ("nhwcbf16", "cudnnbf16", "bf16, moka with MOKA_CONV_NHWC=1"),
            ("bf16actbf16", "cudnnbf16", "bf16, moka with MOKA_BF16_ACT=1"))]:
        mk, cd = runs.get((em, b)), runs.get((ec, b))
        if not (mk and cd and mk["layers"] and cd["layers"]):
            continue
        print("Convolutions, batch %d, %s: t_cuDNN / t_moka per layer (>= 0.8 meets the target):"
              % (b, prec))
        print("  %-18s %9s %9s %6s %9s %9s %6s" % ("layer", "fwd moka", "fwd cuDNN", "ratio",
                                                   "bwd moka", "bwd cuDNN", "ratio"))
        tot = [0.0, 0.0, 0.0, 0.0]
        met = n = 0
        for name, t in mk["layers"].items():
            if not CONV.match(name) or name not in cd["layers"]:
                continue
            c = cd["layers"][name]
            fm, fc = t.get("forward", 0), c.get("forward", 0)
            bm, bc = t.get("backward", 0), c.get("backward", 0)
            tot = [tot[0] + fm, tot[1] + fc, tot[2] + bm, tot[3] + bc]
            r = (fc + bc) / (fm + bm) if fm + bm > 0 else 0
            n += 1
            met += r >= 0.8
            print("  %-18s %9.3f %9.3f %6.2f %9.3f %9.3f %6.2f" % (
                name, fm, fc, fc / fm if fm else 0, bm, bc, bc / bm if bm else 0))
        if n:
            print("  %-18s %9.3f %9.3f %6.2f %9.3f %9.3f %6.2f" % (
                "all convolutions", tot[0], tot[1], tot[1] / tot[0] if tot[0] else 0, tot[2],
                tot[3], tot[3] / tot[2] if tot[2] else 0))
            print("  %d of %d convolution layers at >= 0.8x cuDNN (forward+backward)" % (met, n))
        print()

    auto_choices(work)
    igemm_bench(work)
    chain_bench(work)


AUTO = re.compile(r"Convolution '(\S+)' (forward|backward) \(.*\): moka ([\d.]+) ms, "
                  r"cuDNN ([\d.]+) ms: (moka|cuDNN)")


def auto_choices(work):
    """What MOKA_CONV_ENGINE=auto chose per layer and direction (its log lines)."""
    for path in sorted(glob.glob(os.path.join(work, "moka_auto*_b*.log"))):
        found = AUTO.findall(read(path))
        if not found:
            continue
        name = os.path.basename(path)[len("moka_"):-len(".log")]
        print("MOKA_CONV_ENGINE=auto choices (%s), from the first pass's timings:" % name)
        for d in ("forward", "backward"):
            rows = [f for f in found if f[1] == d]
            cu = [f for f in rows if f[4] == "cuDNN"]
            print("  %s: moka %d, cuDNN %d%s" % (
                d, len(rows) - len(cu), len(cu),
                (" (cuDNN: " + ", ".join("%s %.2f" % (f[0], float(f[2]) / float(f[3]))
                                         for f in cu) + ", as t_moka/t_cuDNN)") if cu else ""))
        print()


def igemm_bench(work):
    """Per-layer convolution benchmark (test_cuda_igemm bench): t_cuDNN / t_moka per shape."""
    text = read(os.path.join(work, "igemm_bench.log"))
    rows = []
    for line in text.splitlines():
        if line.startswith("igemm_bench_error"):
            print("  " + line)
        if not line.startswith("igemm_bench "):
            continue
        kv = dict(re.findall(r"(\w+)=(\S+)", line))
        rows.append(kv)
    if not rows:
        if text:
            print("Per-layer convolution benchmark: no results (see igemm_bench.log)")
        return
    print("Per-layer convolutions, batch 64 (test_cuda_igemm bench), forward+backward ms; "
          "ratio = t_cuDNN / t_moka (>= 0.8 meets the target):")
    print("  %-16s %-26s %9s %9s %9s %6s %6s %9s %9s %6s  %s" % (
        "layer", "shape", "moka bf16", "moka NHWC", "cuDNN bf16", "ratio", "NHWC", "moka fp32",
        "cuDNN fp32", "ratio", "best tile (ms)"))

    def fb(kv, e):
        f, b = float(kv.get("fwd_" + e, -1)), float(kv.get("bwd_" + e, -1))
        return f + b if f >= 0 and b >= 0 else None
    met = [0, 0, 0]
    n = [0, 0, 0]
    for kv in rows:
        t = [fb(kv, e) for e in ("moka_bf16", "cudnn_bf16", "moka_fp32", "cudnn_fp32")]
        tn = fb(kv, "moka_nhwc") if kv.get("nhwc_takes", "000") != "000" else None
        r = []
        for j, (a, c) in enumerate(((t[0], t[1]), (t[2], t[3]), (tn, t[1]))):
            if a and c:
                r.append(c / a)
                n[j] += 1
                met[j] += r[-1] >= 0.8 - 1e-9
            else:
                r.append(None)
        best = []
        for k, kname in (("t", "WMMA"), ("n", "NHWC")):
            tiles = [(fb(kv, k + tl), tl) for tl in ("128x128", "128x64", "64x128", "64x64")]
            tiles = [tt for tt in tiles if tt[0]]
            if tiles:
                best.append("%s %s (%.3f)" % (kname, min(tiles)[1], min(tiles)[0]))
        best = ", ".join(best) or "n/a"
        print("  %-16s %-26s %9s %9s %9s %6s %6s %9s %9s %6s  %s" % (
            kv.get("layer", "?"), kv.get("shape", "?"), fmt(t[0], "%.3f"), fmt(tn, "%.3f"),
            fmt(t[1], "%.3f"), fmt(r[0], "%.2f"), fmt(r[2], "%.2f"), fmt(t[2], "%.3f"),
            fmt(t[3], "%.3f"), fmt(r[1], "%.2f"), best))
    print("  bf16: %d of %d shapes at >= 0.8x cuDNN (NHWC kernel: %d of %d); fp32: %d of %d"
          % (met[0], n[0], met[2], n[2], met[1], n[1]))
    # cuDNN's bf16 times include fp32<->bf16 conversions (moka's kernels convert as they load);
    # without them (t_cuDNN bf16 - t_conversions) the comparison with a bf16-native cuDNN:
    core = []
    for kv in rows:
        tm, tc, cv = fb(kv, "moka_bf16"), fb(kv, "cudnn_bf16"), fb(kv, "cvt")
        tn = fb(kv, "moka_nhwc")
        if tn and tm:
            tm = min(tm, tn)
        if tm and tc and cv is not None and tc - cv > 0:
            core.append((kv.get("layer", "?"), (tc - cv) / tm))
    if core:
        print("  bf16 without cuDNN's conversions (t_cuDNN_bf16 - t_cvt) / t_moka (the faster of "
              "moka's two bf16 kernels): " +
              ", ".join("%s %.2f" % c for c in core))
        print("  %d of %d shapes at >= 0.8x that" % (sum(r >= 0.8 - 1e-9 for _, r in core),
                                                    len(core)))
    print()



def chain_bench(work):
    """ResNet-50's BatchNorm chains, fp32 NCHW vs bf16 NHWC (test_cuda_bn_nhwc bench)."""
    text = read(os.path.join(work, "chain_bench.log"))
    rows = [dict(re.findall(r'(\w+)=("[^"]*"|\S+)', ln)) for ln in text.splitlines()
            if ln.startswith("bn_nhwc_bench ")]
    tot = [dict(re.findall(r"(\w+)=(\S+)", ln)) for ln in text.splitlines()
           if ln.startswith("bn_nhwc_total ")]
    for ln in text.splitlines():
        if ln.startswith("bn_nhwc_bench_error"):
            print("  " + ln)
    if not rows:
        if text:
            print("BatchNorm chain benchmark: no results (see chain_bench.log)")
        return
    print("BatchNorm chains (forward+backward, batch 64), fp32 NCHW (the nets' chain) vs bf16 "
          "NHWC (bn_nhwc.cu, not wired in yet), ms:")
    print("  %-16s %6s %8s %6s %10s %10s %6s" % ("chains", "C", "HW", "count", "fp32 NCHW",
                                                 "bf16 NHWC", "ratio"))
    for r in rows:
        a, b = float(r.get("nchw_fp32_ms", -1)), float(r.get("nhwc_bf16_ms", -1))
        print("  %-16s %6s %8s %6s %10.4f %10.4f %6s" % (
            r.get("shape", "?").strip('"'), r.get("C", "?"), r.get("HW", "?"), r.get("count", "?"),
            a, b, "%.2f" % (a / b) if a > 0 and b > 0 else "n/a"))
    if tot:
        t = tot[-1]
        print("  all 53 chains: fp32 NCHW %s ms, bf16 NHWC %s ms (%sx)" % (
            t.get("nchw_fp32_ms"), t.get("nhwc_bf16_ms"), t.get("ratio")))
    print()


if __name__ == "__main__":
    main()
