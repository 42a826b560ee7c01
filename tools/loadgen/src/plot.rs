//! `run --out`'s latency files: the HdrHistogram percentile text and an SVG plot of it.

use hdrhistogram::Histogram;

/// HdrHistogram's percentile-distribution text (`.hgrm`), values in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            format!("{:.2}", 1.0 / (1.0 - q))
        } else {
            "inf".into()
        };
        out.push_str(&format!(
            "{:12.3} {:14.12} {:10} {:>14}\n",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            v.count_since_last_iteration(),
            inv
        ));
    }
    out.push_str(&format!(
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]\n",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    ));
    out
}

/// Latency by percentile on a log scale (the usual HDR plot), as a small standalone SVG.
pub fn svg(h: &Histogram<u64>, title: &str) -> String {
    let (w, ht, pad) = (720.0, 360.0, 50.0);
    let max_ms = (h.max() as f64 / 1000.0).max(0.001);
    let x_of = |q: f64| pad + ((1.0 / (1.0 - q.min(0.99999))).log10() / 5.0) * (w - 2.0 * pad);
    let y_of = |ms: f64| ht - pad - (ms / max_ms) * (ht - 2.0 * pad);
    let points: Vec<String> = h
        .iter_quantiles(5)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            format!(
                "{:.1},{:.1}",
                x_of(v.quantile_iterated_to()),
                y_of(v.value_iterated_to() as f64 / 1000.0)
            )
        })
        .collect();
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{ht}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="{pad}" y="20" font-size="13">{title}: latency by percentile (max {max_ms:.2} ms)</text><line x1="{pad}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{y0}" stroke="black"/>"#,
        y0 = ht - pad,
        x1 = w - pad
    );
    for (q, label) in [
        (0.0, "0%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
    ] {
        let x = x_of(q);
        s.push_str(&format!(
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            ht - pad + 15.0
        ));
    }
    for frac in [0.0, 0.5, 1.0] {
        let ms = max_ms * frac;
        s.push_str(&format!(
            r#"<text x="{}" y="{:.1}" text-anchor="end">{ms:.2} ms</text>"#,
            pad - 4.0,
            y_of(ms) + 4.0
        ));
    }
    s.push_str(&format!(
        r#"<polyline fill="none" stroke="steelblue" stroke-width="2" points="{}"/></svg>"#,
        points.join(" ")
    ));
    s
}
