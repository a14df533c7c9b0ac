//! Charts as SVG text: line charts (learning curves), bar charts and a
//! confusion-matrix heat map. No script and no external reference: the HTML
//! report inlines them, the Markdown report writes them beside itself.

use std::fmt::Write;

/// Escapes text for XML/HTML content and attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Not allowed in XML 1.0 at all (not even as a reference): shown escaped.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {
                out.push_str(&crate::text::printable(c.encode_utf8(&mut [0; 4])));
            }
            '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(ch));
            }
            c => out.push(c),
        }
    }
    out
}

/// Matplotlib's tab10 palette.
pub const PALETTE: [&str; 10] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

/// Dash patterns, one per round of the palette: runs 1-10 solid, 11-20
/// dashed, 21-30 dotted, 31-40 dash-dot, so that more than ten runs stay
/// apart.
const DASHES: [&str; 4] = ["", "7 3", "2 2", "8 3 2 3"];

/// The colour and dash pattern of the run at `index` (its place in the
/// report): the same in every chart and in the legend.
pub fn run_style(index: usize) -> (&'static str, &'static str) {
    (PALETTE[index % PALETTE.len()], DASHES[(index / PALETTE.len()) % DASHES.len()])
}

fn dash_attr(dash: &str) -> String {
    if dash.is_empty() {
        String::new()
    } else {
        format!(r#" stroke-dasharray="{dash}""#)
    }
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) points in x order.
    pub points: Vec<(f64, f64)>,
    /// Drawn thicker (the best run).
    pub highlight: bool,
    /// The run's place in the report ([`run_style`]).
    pub style: usize,
    /// Why the run stopped early across runs (ASHA): its last point is marked ×.
    pub stopped: Option<String>,
}

const W: f64 = 460.0;
const H: f64 = 280.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

pub(super) fn open(out: &mut String, standalone: bool, w: f64, h: f64, title: &str) {
    let ns = if standalone { r#" xmlns="http://www.w3.org/2000/svg""# } else { "" };
    let _ = write!(
        out,
        r#"<svg{ns} viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}" font-family="sans-serif" font-size="11"><title>{t}</title><rect width="{w}" height="{h}" fill="white"/><text x="{x}" y="17" text-anchor="middle" font-size="13" font-weight="bold">{t}</text>"#,
        t = esc(title),
        x = w / 2.0
    );
}

/// About `n` round tick values covering [lo, hi].
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi <= lo || !lo.is_finite() || !hi.is_finite() {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    // At most a few dozen ticks: the step is chosen for about five.
    (0..1000)
        .map(|i| first + f64::from(i) * step)
        .take_while(|v| *v <= hi + step * 1e-9)
        .map(|v| if v.abs() < step * 1e-9 { 0.0 } else { v })
        .collect()
}

/// Ticks of a log axis spanning `lo..hi` (log10 units): every decade, and
/// 2x and 5x within them when fewer than three decades are in range.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades: Vec<f64> = (lo.ceil() as i64..=hi.floor() as i64).map(|e| e as f64).collect();
    if decades.len() >= 3 {
        return decades;
    }
    let mut out = Vec::new();
    for e in (lo.floor() as i64)..=(hi.ceil() as i64) {
        for m in [1.0f64, 2.0, 5.0] {
            let t = e as f64 + m.log10();
            if (lo..=hi).contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

pub(super) fn fmt_tick(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.0e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// A line chart of `series` against x (epochs); `log_y` for the learning rate.
pub fn line_chart(title: &str, x_label: &str, series: &[Series], log_y: bool, standalone: bool) -> String {
    let mut out = String::new();
    open(&mut out, standalone, W, H, title);
    let tf = |v: f64| if log_y { v.max(1e-300).log10() } else { v };
    let pts: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().map(|&(x, y)| (x, tf(y)))).filter(|p| p.1.is_finite()).collect();
    if pts.is_empty() {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">no data</text></svg>"##,
            W / 2.0,
            H / 2.0
        );
        return out;
    }
    let (mut x0, mut x1) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (mut y0, mut y1) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    if x1 <= x0 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    if y1 <= y0 {
        let d = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.05 };
        y0 -= d;
        y1 += d;
    } else {
        let pad = (y1 - y0) * 0.05;
        y0 -= pad;
        y1 += pad;
    }
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;
    // Axes and grid.
    let _ = write!(out, r##"<g stroke="#ddd" stroke-width="1">"##);
    let yt: Vec<f64> = if log_y { log_ticks(y0, y1) } else { ticks(y0, y1, 5) };
    for &t in &yt {
        let _ = write!(out, r#"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/>"#, W - RIGHT, y = sy(t));
    }
    let _ = write!(out, "</g>");
    for &t in &yt {
        let label = if log_y { fmt_tick(10f64.powf(t)) } else { fmt_tick(t) };
        let _ =
            write!(out, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, LEFT - 4.0, sy(t) + 4.0, esc(&label));
    }
    let xt: Vec<f64> = ticks(x0, x1, 6).into_iter().filter(|v| v.fract() == 0.0).collect();
    for &t in &xt {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            sx(t),
            H - BOTTOM + 14.0,
            fmt_tick(t)
        );
    }
    let _ = write!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/><text x="{}" y="{}" text-anchor="middle">{}</text>"##,
        LEFT + pw / 2.0,
        H - 8.0,
        esc(x_label)
    );
    for s in series {
        let (color, dash) = run_style(s.style);
        let dash = dash_attr(dash);
        let width = if s.highlight { 2.8 } else { 1.5 };
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|p| tf(p.1).is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(tf(y))))
            .collect();
        if path.len() == 1 {
            let _ = write!(
                out,
                r#"<circle cx="{}" r="3" fill="{color}"><title>{}</title></circle>"#,
                path[0].replace(',', "\" cy=\""),
                esc(&s.name)
            );
        } else if !path.is_empty() {
            let _ = write!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="{width}"{dash} points="{}"><title>{}</title></polyline>"#,
                path.join(" "),
                esc(&s.name)
            );
        }
        if let (Some(why), Some(last)) = (&s.stopped, path.last()) {
            let (x, y) = last.split_once(',').unwrap_or(("0", "0"));
            let (x, y): (f64, f64) = (x.parse().unwrap_or(0.0), y.parse().unwrap_or(0.0));
            let _ = write!(
                out,
                r#"<path d="M{:.1},{:.1}l8,8m0,-8l-8,8" stroke="{color}" stroke-width="2.2"><title>{}: {}</title></path>"#,
                x - 4.0,
                y - 4.0,
                esc(&s.name),
                esc(why)
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// The legend of `names` (name, best, style: colours and dashes as in the
/// charts), as a separate SVG.
pub fn legend(names: &[(String, bool, usize)], standalone: bool) -> String {
    let cols = 2usize;
    let rows = names.len().div_ceil(cols).max(1);
    let h = 10.0 + rows as f64 * 18.0;
    let w = 2.0 * W;
    let mut out = String::new();
    let ns = if standalone { r#" xmlns="http://www.w3.org/2000/svg""# } else { "" };
    let _ = write!(
        out,
        r#"<svg{ns} viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><title>legend</title>"#
    );
    for (i, (name, best, style)) in names.iter().enumerate() {
        let (c, r) = (i % cols, i / cols);
        let (x, y) = (10.0 + c as f64 * W, 14.0 + r as f64 * 18.0);
        let (color, dash) = run_style(*style);
        let dash = dash_attr(dash);
        let mark = if *best { " ★" } else { "" };
        let _ = write!(
            out,
            r#"<line x1="{x}" x2="{}" y1="{}" y2="{}" stroke="{color}" stroke-width="3"{dash}/><text x="{}" y="{}">{}{mark}</text>"#,
            x + 22.0,
            y - 4.0,
            y - 4.0,
            x + 28.0,
            y,
            esc(name)
        );
    }
    out.push_str("</svg>");
    out
}

/// A bar chart. With `styles` (one run per bar) each bar has its run's
/// colour; `highlight` (the best run) is outlined and starred, not recoloured.
pub fn bar_chart(
    title: &str,
    labels: &[String],
    values: &[Option<f64>],
    highlight: Option<usize>,
    styles: Option<&[usize]>,
    standalone: bool,
) -> String {
    let n = labels.len().max(1);
    let bar_h = 18.0;
    let label_w = 170.0;
    let h = TOP + 10.0 + n as f64 * (bar_h + 6.0) + 20.0;
    let w = 2.0 * W;
    let mut out = String::new();
    open(&mut out, standalone, w, h, title);
    let max = values.iter().flatten().fold(0f64, |a, &b| a.max(b));
    let min = values.iter().flatten().fold(0f64, |a, &b| a.min(b));
    let span = if max > min { max - min } else { 1.0 };
    let pw = w - label_w - 80.0;
    for (i, (label, v)) in labels.iter().zip(values).enumerate() {
        let y = TOP + 10.0 + i as f64 * (bar_h + 6.0);
        let short: String =
            if label.chars().count() > 26 { label.chars().take(25).chain(['…']).collect() } else { label.clone() };
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{}<title>{}</title></text>"#,
            label_w - 6.0,
            y + 13.0,
            esc(&short),
            esc(label)
        );
        if let Some(v) = v {
            let x0 = label_w + (0f64.max(min) - min) / span * pw;
            let len = (v - 0f64.max(min)).abs() / span * pw;
            let color = styles.and_then(|st| st.get(i)).map_or(PALETTE[0], |&k| run_style(k).0);
            let (outline, star) =
                if Some(i) == highlight { (r#" stroke="black" stroke-width="2""#, " ★") } else { ("", "") };
            let _ = write!(
                out,
                r#"<rect x="{:.1}" y="{y}" width="{:.1}" height="{bar_h}" fill="{color}"{outline}/><text x="{:.1}" y="{}">{}{star}</text>"#,
                x0,
                len.max(0.5),
                x0 + len + 4.0,
                y + 13.0,
                esc(&fmt_tick((v * 100.0).round() / 100.0))
            );
        } else {
            let _ = write!(out, r##"<text x="{}" y="{}" fill="#888">no value</text>"##, label_w + 4.0, y + 13.0);
        }
    }
    out.push_str("</svg>");
    out
}

/// Matplotlib's viridis at `t` in 0..=1 (linear between nine of its stops).
pub fn viridis(t: f64) -> String {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 45, 123),
        (59, 82, 139),
        (44, 114, 142),
        (33, 145, 140),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let at = t * (STOPS.len() - 1) as f64;
    let i = (at.floor() as usize).min(STOPS.len() - 2);
    let f = at - i as f64;
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    format!("#{:02x}{:02x}{:02x}", mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The confusion matrix as a heat map (rows: true class, columns: predicted),
/// each cell shaded by its share of the row.
pub fn heatmap(title: &str, labels: &[String], m: &[Vec<u64>], standalone: bool) -> String {
    let n = m.len().max(1);
    let cell = (360.0 / n as f64).clamp(4.0, 32.0);
    let label_w = if n <= 20 { 90.0 } else { 10.0 };
    let (w, h) = (label_w + n as f64 * cell + 20.0, TOP + label_w + n as f64 * cell + 28.0);
    let mut out = String::new();
    open(&mut out, standalone, w.max(300.0), h, title);
    let top = TOP + label_w;
    for (i, row) in m.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (j, &v) in row.iter().enumerate() {
            let share = if total > 0 { v as f64 / total as f64 } else { 0.0 };
            // Zeros faint, the rest on viridis (perceptually even, readable in grey).
            let fill = if v == 0 { "#f4f4f4".to_owned() } else { viridis(share) };
            let _ = write!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="{cell:.1}" height="{cell:.1}" fill="{fill}"><title>{} → {}: {v}</title></rect>"#,
                label_w + j as f64 * cell,
                top + i as f64 * cell,
                esc(labels.get(i).map_or("?", String::as_str)),
                esc(labels.get(j).map_or("?", String::as_str)),
            );
            if n <= 12 {
                // Dark viridis (low shares) takes white text; zeros are grey.
                let color = if v == 0 {
                    "#aaa"
                } else if share < 0.6 {
                    "white"
                } else {
                    "black"
                };
                let _ = write!(
                    out,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9" fill="{color}">{v}</text>"#,
                    label_w + (j as f64 + 0.5) * cell,
                    top + (i as f64 + 0.5) * cell + 3.0
                );
            }
        }
        if n <= 20 {
            let name = labels.get(i).map_or("?", String::as_str);
            let _ = write!(
                out,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                label_w - 4.0,
                top + (i as f64 + 0.5) * cell + 4.0,
                esc(name)
            );
            let _ = write!(
                out,
                r#"<text transform="translate({:.1},{}) rotate(-60)" text-anchor="start">{}</text>"#,
                label_w + (i as f64 + 0.5) * cell + 3.0,
                top - 4.0,
                esc(name)
            );
        }
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">rows: true class, columns: predicted</text>"#,
        label_w + n as f64 * cell / 2.0,
        h - 8.0
    );
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = ticks(0.0, 1.0, 5);
        assert_eq!(t.len(), 6);
        assert!(t.iter().zip([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]).all(|(a, b)| (a - b).abs() < 1e-12), "{t:?}");
        assert_eq!(ticks(1.0, 20.0, 6), vec![5.0, 10.0, 15.0, 20.0]);
        assert_eq!(fmt_tick(0.0001), "1e-4");
    }

    #[test]
    fn runs_keep_one_style_and_more_than_ten_stay_apart() {
        let styles: Vec<_> = (0..40).map(run_style).collect();
        for (i, a) in styles.iter().enumerate() {
            assert!(styles[i + 1..].iter().all(|b| b != a), "run {i} shares its style");
        }
        assert_eq!(run_style(0).1, "");
        assert_eq!(run_style(10).0, run_style(0).0);
        assert_ne!(run_style(10).1, run_style(0).1);
        let s = Series {
            name: "r".into(),
            points: vec![(1.0, 1.0), (2.0, 2.0)],
            highlight: false,
            style: 12,
            stopped: None,
        };
        let svg = line_chart("t", "epoch", &[s], false, true);
        assert!(
            svg.contains(&format!("stroke=\"{}\"", PALETTE[2])) && svg.contains("stroke-dasharray=\"7 3\""),
            "{svg}"
        );
        let bars = bar_chart("b", &["a".into(), "b".into()], &[Some(1.0), Some(2.0)], Some(1), Some(&[3, 4]), true);
        assert!(bars.contains(PALETTE[3]) && bars.contains(PALETTE[4]) && bars.contains("2 ★"), "{bars}");
    }

    #[test]
    fn log_axes_are_labelled_at_each_decade() {
        assert_eq!(log_ticks(-4.2, -0.9), vec![-4.0, -3.0, -2.0, -1.0]);
        let few: Vec<String> = log_ticks(-2.5, -1.2).iter().map(|t| fmt_tick(10f64.powf(*t))).collect();
        assert_eq!(few, ["0.005", "0.01", "0.02", "0.05"]);
    }

    #[test]
    fn viridis_runs_from_purple_to_yellow() {
        assert_eq!(viridis(0.0), "#440154");
        assert_eq!(viridis(1.0), "#fde725");
        assert_eq!(viridis(f64::NAN), "#440154");
    }

    #[test]
    fn hostile_names_are_escaped() {
        let s = Series {
            name: "<script>alert(1)</script>".into(),
            points: vec![(1.0, 0.5), (2.0, 0.7)],
            highlight: true,
            style: 0,
            stopped: Some("stopped <by> ASHA".into()),
        };
        let svg = line_chart("a & b", "epoch", &[s], false, false);
        assert!(svg.contains("stopped &lt;by&gt; ASHA</title></path>"), "the stop is marked: {svg}");
        assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;") && svg.contains("a &amp; b"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
