//! The bench's table, CSV files and SVG charts (written by hand: two polylines per mode
//! need no plotting crate).

use std::fmt::Write as _;

use anyhow::{Context, Result};

use crate::{Args, Figures, Results};

/// The row of the same Service count that `f` is compared against as "iptables": the
/// iptables NodePort row for NodePort modes, the ClusterIP row otherwise.
fn iptables_of<'a>(r: &'a Results, f: &Figures) -> Option<&'a Figures> {
    let kind = if f.mode.contains("NodePort") {
        "5 iptables, NodePort"
    } else {
        "5 iptables, ClusterIP"
    };
    r.figures
        .iter()
        .find(|o| o.mode == kind && o.services == f.services)
}

fn direct_of<'a>(r: &'a Results, f: &Figures) -> Option<&'a Figures> {
    r.figures
        .iter()
        .find(|o| o.mode == "1 direct pod IP" && o.services == f.services)
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 && a.is_finite() => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    }
}

fn quantile(values: &[f64], p: f64) -> f64 {
    skiff_tests::bench::percentile(values, p)
}

/// Prints the tables.
#[expect(clippy::too_many_lines, reason = "one table after another, as printed")]
pub fn print(args: &Args, r: &Results, load: (&str, &str)) {
    println!(
        "\n## Service data path: {} s per test, {} connections in flight, {}-byte messages\n",
        args.seconds, args.parallel, args.message
    );
    println!(
        "{:<31} {:>6} | {:>8} {:>7} {:>7} {:>7} {:>6} | {:>6} {:>6} {:>6} | {:>6} {:>6} | {:>6} | {:>6} {:>6} {:>4}",
        "mode",
        "Svcs",
        "CRR/s",
        "p50us",
        "p99us",
        "/direct",
        "/ipt",
        "RRp50",
        "RRp99",
        "/ipt",
        "UDPp50",
        "UDPp99",
        "Gbit/s",
        "sirq",
        "node",
        "err"
    );
    for f in &r.figures {
        let d = direct_of(r, f).map(|d| d.crr_p99);
        let i = iptables_of(r, f);
        println!(
            "{:<31} {:>6} | {:>8.0} {:>7.1} {:>7.1} {:>7} {:>6} | {:>6.1} {:>6.1} {:>6} | {:>6.1} {:>6.1} | {:>6.2} | {:>6.1} {:>6.1} {:>4}",
            f.mode,
            f.services,
            f.crr_rate,
            f.crr_p50,
            f.crr_p99,
            ratio(f.crr_p99, d),
            ratio(f.crr_p99, i.map(|i| i.crr_p99)),
            f.rr_p50,
            f.rr_p99,
            ratio(f.rr_p99, i.map(|i| i.rr_p99)),
            f.udp_p50,
            f.udp_p99,
            f.gbits,
            f.softirq_ms_per_k,
            f.node_ms_per_k,
            f.errors
        );
    }
    println!(
        "\nCRR: connect + one request/answer + close (netperf TCP_CRR), per second and its latency \
         in us; /direct and /ipt: CRR p99 against mode 1 and against iptables (NodePort rows against \
         iptables NodePort) at the same Service count; RR: request/answer on kept-alive connections; \
         UDP: request/answer datagrams (NodePort rows: not measured); Gbit/s: one TCP stream; sirq and \
         node: machine-wide softirq and node daemon CPU ms per 1,000 connections during CRR (other \
         work on the machine counts too); err: failed operations. Each connection goes to a Service \
         chosen at random among all of them."
    );
    println!(
        "\n{:<31} {:>6} | {:>9} {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>5}",
        "EndpointSlice change",
        "Svcs",
        "live p50",
        "live p99",
        "live max",
        "apply p50",
        "apply p99",
        "after p50",
        "after p99",
        "n"
    );
    for c in &r.changes {
        let after = c.after_ms();
        println!(
            "{:<31} {:>6} | {:>7.2}ms {:>7.2}ms {:>7.2}ms | {:>7.2}ms {:>7.2}ms | {:>7.2}ms {:>7.2}ms | {:>5}",
            c.mode,
            c.services,
            quantile(&c.live_ms, 0.5),
            quantile(&c.live_ms, 0.99),
            quantile(&c.live_ms, 1.0),
            quantile(&c.apply_ms, 0.5),
            quantile(&c.apply_ms, 0.99),
            quantile(&after, 0.5),
            quantile(&after, 0.99),
            c.live_ms.len()
        );
    }
    println!(
        "\nlive: from sending the API request that changes one Service's EndpointSlice (iptables: \
         from starting iptables-restore) to the first new connection of a client that redials \
         without pause landing on the new backend; apply: the API request alone (iptables: the \
         partial-sync iptables-restore run); after: live minus apply, change by change (from the API's \
         answer, when the change is committed and its watch event sent, or from the end of \
         iptables-restore). A client redials about once per connection time (~1 ms at 10,000 \
         Services), which bounds the resolution."
    );
    println!();
    for n in &r.notes {
        println!("{:<12} {}: {}", n.mode, n.what, n.value);
    }
    println!(
        "load average before: {}, after: {}",
        load.0.trim(),
        load.1.trim()
    );
}

/// Writes `figures.csv`, `changes.csv`, `notes.csv` and the charts.
///
/// # Errors
/// If the files cannot be written.
pub fn write_files(args: &Args, r: &Results) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut csv = String::from(
        "mode,services,crr_per_s,crr_p50_us,crr_p99_us,rr_p50_us,rr_p99_us,udp_p50_us,udp_p99_us,gbit_s,softirq_ms_per_1k,node_ms_per_1k,errors\n",
    );
    for f in &r.figures {
        let _ = writeln!(
            csv,
            "\"{}\",{},{:.0},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.3},{:.2},{:.2},{}",
            f.mode,
            f.services,
            f.crr_rate,
            f.crr_p50,
            f.crr_p99,
            f.rr_p50,
            f.rr_p99,
            f.udp_p50,
            f.udp_p99,
            f.gbits,
            f.softirq_ms_per_k,
            f.node_ms_per_k,
            f.errors
        );
    }
    std::fs::write(args.out.join("figures.csv"), csv)?;
    let mut csv = String::from(
        "mode,services,live_p50_ms,live_p99_ms,apply_p50_ms,apply_p99_ms,after_p50_ms,after_p99_ms,changes\n",
    );
    for c in &r.changes {
        let after = c.after_ms();
        let _ = writeln!(
            csv,
            "\"{}\",{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{}",
            c.mode,
            c.services,
            quantile(&c.live_ms, 0.5),
            quantile(&c.live_ms, 0.99),
            quantile(&c.apply_ms, 0.5),
            quantile(&c.apply_ms, 0.99),
            quantile(&after, 0.5),
            quantile(&after, 0.99),
            c.live_ms.len()
        );
    }
    std::fs::write(args.out.join("changes.csv"), csv)?;
    let mut csv = String::from("mode,what,value\n");
    for n in &r.notes {
        let _ = writeln!(csv, "\"{}\",\"{}\",\"{}\"", n.mode, n.what, n.value);
    }
    std::fs::write(args.out.join("notes.csv"), csv)?;
    for (file, title, pick) in [
        (
            "crr_latency.svg",
            "TCP connect + request + close latency (p50 solid, p99 dashed)",
            (|f: &Figures| (f.crr_p50, f.crr_p99)) as fn(&Figures) -> (f64, f64),
        ),
        (
            "rr_latency.svg",
            "TCP request/response latency, kept-alive (p50 solid, p99 dashed)",
            |f: &Figures| (f.rr_p50, f.rr_p99),
        ),
    ] {
        std::fs::write(args.out.join(file), chart(args, r, title, pick))?;
    }
    eprintln!("datapath bench: CSV and charts in {}", args.out.display());
    Ok(())
}

const COLOURS: &[&str] = &[
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
];

#[expect(
    clippy::many_single_char_names,
    reason = "chart geometry: x, y, w, h as in every plotting text"
)]
/// A line chart: x the Service count (log scale), y microseconds, a line pair per mode.
fn chart(args: &Args, r: &Results, title: &str, pick: fn(&Figures) -> (f64, f64)) -> String {
    let (w, h, left, right, top, bottom) = (900.0, 480.0, 70.0, 300.0, 40.0, 50.0);
    let mut modes: Vec<&str> = Vec::new();
    for f in &r.figures {
        if !modes.contains(&f.mode.as_str()) {
            modes.push(&f.mode);
        }
    }
    let ymax = r
        .figures
        .iter()
        .map(|f| pick(f).1)
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.1;
    #[expect(clippy::cast_precision_loss, reason = "Service counts")]
    let (xmin, xmax) = (
        (*args.services.first().unwrap_or(&1) as f64)
            .max(1.0)
            .log10(),
        (*args.services.last().unwrap_or(&1) as f64)
            .max(10.0)
            .log10(),
    );
    let span = (xmax - xmin).max(1.0);
    #[expect(clippy::cast_precision_loss, reason = "Service counts")]
    let x = |n: usize| left + ((n.max(1) as f64).log10() - xmin) / span * (w - left - right);
    let y = |v: f64| top + (1.0 - v / ymax) * (h - top - bottom);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\">{title}</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\">Services (log scale)</text>\n\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\">microseconds</text>\n",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        f64::midpoint(w - right, left) - 50.0,
        h - 12.0,
        h / 2.0,
        h / 2.0
    );
    for n in &args.services {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{n}</text>",
            x(*n),
            h - bottom + 16.0
        );
    }
    for k in 0..=4 {
        let v = ymax * f64::from(k) / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n<line x1=\"{left}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            left - 6.0,
            y(v) + 4.0,
            y(v),
            w - right,
            y(v)
        );
    }
    for (i, mode) in modes.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<&Figures> = r.figures.iter().filter(|f| f.mode == *mode).collect();
        for (dash, which) in [("", 0), (" stroke-dasharray=\"5 4\"", 1)] {
            let path: Vec<String> = points
                .iter()
                .map(|f| {
                    let (p50, p99) = pick(f);
                    let v = if which == 0 { p50 } else { p99 };
                    format!("{:.1},{:.1}", x(f.services), y(v))
                })
                .collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
                path.join(" ")
            );
        }
        #[expect(clippy::cast_precision_loss, reason = "a legend line")]
        let ly = top + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{mode}</text>",
            w - right + 10.0,
            w - right + 30.0,
            w - right + 36.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
