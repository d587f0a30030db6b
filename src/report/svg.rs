//! Plots as SVG text: line charts and horizontal bar charts, drawn from plain numbers.
//!
//! The HTML report opens offline and shows its plots with no script, so each plot is inline SVG
//! written here as text — a plotting crate would bring far more than these few hundred lines of
//! arithmetic. Hover text is SVG `<title>`, which browsers show without JavaScript. Every string
//! placed in the markup goes through `escape`, and every coordinate is printed with one decimal,
//! so one result always renders to the same bytes (the golden files depend on it).

use std::fmt::Write as _;

/// Okabe–Ito colours (told apart with the common colour-vision deficiencies); grey last.
const PALETTE: [&str; 8] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999"];

const WIDTH: f64 = 640.0;
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
const LEGEND_ROW: f64 = 16.0;
/// Longest legend or group label, in characters (the whole text stays in the hover title).
const LABEL_CHARS: usize = 72;
const CAPTION_CHARS: usize = 100;

fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Text for markup: `& < > " '` escaped, so no string from a result can open a tag or leave an
/// attribute.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// Words into lines of at most `max` characters.
fn wrap(text: &str, max: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > max {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// A value for a tooltip or a bar: about four significant digits.
pub(crate) fn number(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".to_string()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.001 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

/// How values are written on an axis and beside bars.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Format {
    Plain,
    /// A share 0..1 written as a percentage.
    Percent,
}

impl Format {
    fn value(self, v: f64) -> String {
        match self {
            Format::Plain => number(v),
            Format::Percent => format!("{:.1} %", v * 100.0),
        }
    }
}

/// An axis: its range and the ticks on it.
struct Scale {
    lo: f64,
    hi: f64,
    ticks: Vec<(f64, String)>,
}

impl Scale {
    /// About five ticks at 1, 2, 2.5 or 5 times a power of ten, covering `lo..hi`.
    fn nice(lo: f64, hi: f64, format: Format) -> Scale {
        let (mut lo, mut hi) = (lo, hi);
        if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
            // One value: a range around it.
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo, hi) = if lo == 0.0 { (0.0, pad) } else { (lo - pad, hi + pad) };
        }
        let raw = (hi - lo) / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = mag
            * match raw / mag {
                f if f <= 1.0 => 1.0,
                f if f <= 2.0 => 2.0,
                f if f <= 2.5 => 2.5,
                f if f <= 5.0 => 5.0,
                _ => 10.0,
            };
        let lo = (lo / step).floor() * step;
        let hi = (hi / step).ceil() * step;
        let scaled = if format == Format::Percent { step * 100.0 } else { step };
        let decimals = (0..8).find(|d| ((scaled * 10f64.powi(*d)).round() - scaled * 10f64.powi(*d)).abs() < 1e-6);
        let decimals = decimals.unwrap_or(8) as usize;
        let n = ((hi - lo) / step).round() as usize;
        let ticks = (0..=n)
            .map(|i| {
                let v = lo + i as f64 * step;
                let text = match format {
                    Format::Plain => format!("{v:.decimals$}"),
                    Format::Percent => format!("{:.decimals$} %", v * 100.0),
                };
                (v, if text == "-0" { "0".to_string() } else { text })
            })
            .collect();
        Scale { lo, hi, ticks }
    }

    /// Position of `v` between `a` (at `lo`) and `b` (at `hi`).
    fn at(&self, v: f64, a: f64, b: f64) -> f64 {
        a + (v - self.lo) / (self.hi - self.lo) * (b - a)
    }
}

/// The opening of a plot: the root element, its accessible title, the title and caption lines.
/// Returns the y below the caption.
fn open(out: &mut String, height: f64, title: &str, caption: &str) -> f64 {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" viewBox=\"0 0 {WIDTH:.0} {height:.0}\" \
         width=\"{WIDTH:.0}\" height=\"{height:.0}\" role=\"img\" font-family=\"{FONT}\" font-size=\"11\">"
    );
    let _ = write!(out, "<title>{}</title>", escape(title));
    let _ = write!(out, "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>");
    let _ = write!(
        out,
        "<text x=\"12\" y=\"18\" font-size=\"13\" font-weight=\"600\" fill=\"#111111\">{}</text>",
        escape(&truncate(title, 90))
    );
    let mut y = 18.0;
    for line in wrap(caption, CAPTION_CHARS) {
        y += 14.0;
        let _ = write!(out, "<text x=\"12\" y=\"{y:.1}\" fill=\"#555555\">{}</text>", escape(&line));
    }
    y + 14.0
}

fn caption_lines(caption: &str) -> f64 {
    wrap(caption, CAPTION_CHARS).len() as f64
}

/// A legend row: a swatch (a line, dashed or not, or a block) and the label.
fn legend_row(out: &mut String, x: f64, y: f64, label: &str, colour: usize, dashed: bool, block: bool) {
    let c = color(colour);
    if block {
        let _ = write!(out, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"14\" height=\"10\" fill=\"{c}\"/>", y - 9.0);
    } else {
        let dash = if dashed { " stroke-dasharray=\"5 3\"" } else { "" };
        let _ = write!(
            out,
            "<path d=\"M{x:.1},{:.1} L{:.1},{:.1}\" stroke=\"{c}\" stroke-width=\"2\" fill=\"none\"{dash}/>",
            y - 4.0,
            x + 22.0,
            y - 4.0
        );
    }
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{y:.1}\" fill=\"#222222\"><title>{}</title>{}</text>",
        x + 28.0,
        escape(label),
        escape(&truncate(label, LABEL_CHARS))
    );
}

/// One line of a line chart.
pub(crate) struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Index into the palette.
    pub color: usize,
    pub dashed: bool,
}

pub(crate) enum XAxis {
    /// Ticks chosen from the data.
    Linear,
    /// Fixed ticks at these positions (a percentile axis).
    Labeled(Vec<(f64, String)>),
}

pub(crate) struct LineChart {
    pub title: String,
    /// What the plot is drawn from, shown under the title.
    pub caption: String,
    pub x_label: String,
    pub y_label: String,
    pub x_axis: XAxis,
    pub series: Vec<Series>,
}

impl LineChart {
    /// The chart, or nothing when no series has a finite point.
    pub(crate) fn render(&self) -> String {
        let series: Vec<(&Series, Vec<(f64, f64)>)> = self
            .series
            .iter()
            .map(|s| (s, s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect::<Vec<_>>()))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        if series.is_empty() {
            return String::new();
        }
        let all = || series.iter().flat_map(|(_, p)| p.iter());
        let (x_min, x_max) = all().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
        let (y_min, y_max) = all().fold((f64::MAX, f64::MIN), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
        let xs = match &self.x_axis {
            XAxis::Linear => Scale::nice(x_min, x_max, Format::Plain),
            XAxis::Labeled(ticks) => {
                let lo = ticks.iter().map(|t| t.0).fold(x_min, f64::min);
                let hi = ticks.iter().map(|t| t.0).fold(x_max, f64::max);
                Scale { lo, hi: if hi > lo { hi } else { lo + 1.0 }, ticks: ticks.clone() }
            }
        };
        let ys = Scale::nice(if y_min >= 0.0 { 0.0 } else { y_min }, y_max, Format::Plain);

        let top = 30.0 + 14.0 * caption_lines(&self.caption);
        let (left, right) = (64.0, WIDTH - 20.0);
        let bottom = top + 220.0;
        let height = bottom + 44.0 + LEGEND_ROW * series.len() as f64;
        let mut out = String::new();
        open(&mut out, height, &self.title, &self.caption);

        // Grid and y ticks.
        for (v, text) in &ys.ticks {
            let y = ys.at(*v, bottom, top);
            let _ = write!(
                out,
                "<path d=\"M{left:.1},{y:.1} L{right:.1},{y:.1}\" stroke=\"#e5e5e5\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444444\">{}</text>",
                left - 6.0,
                y + 4.0,
                escape(text)
            );
        }
        for (v, text) in &xs.ticks {
            let x = xs.at(*v, left, right);
            let _ = write!(
                out,
                "<path d=\"M{x:.1},{bottom:.1} L{x:.1},{:.1}\" stroke=\"#888888\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444444\">{}</text>",
                bottom + 4.0,
                bottom + 16.0,
                escape(text)
            );
        }
        let _ = write!(
            out,
            "<path d=\"M{left:.1},{top:.1} L{left:.1},{bottom:.1} L{right:.1},{bottom:.1}\" stroke=\"#888888\" fill=\"none\"/>"
        );
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#222222\">{}</text>",
            (left + right) / 2.0,
            bottom + 32.0,
            escape(&self.x_label)
        );
        let _ = write!(
            out,
            "<text transform=\"translate(14,{:.1}) rotate(-90)\" text-anchor=\"middle\" fill=\"#222222\">{}</text>",
            (top + bottom) / 2.0,
            escape(&self.y_label)
        );

        for (s, points) in &series {
            let c = color(s.color);
            let d: Vec<String> = points
                .iter()
                .enumerate()
                .map(|(i, (x, y))| {
                    format!(
                        "{}{:.1},{:.1}",
                        if i == 0 { "M" } else { "L" },
                        xs.at(*x, left, right),
                        ys.at(*y, bottom, top)
                    )
                })
                .collect();
            let dash = if s.dashed { " stroke-dasharray=\"5 3\"" } else { "" };
            let _ = write!(
                out,
                "<g class=\"series\"><path d=\"{}\" stroke=\"{c}\" stroke-width=\"2\" fill=\"none\"{dash}/>",
                d.join(" ")
            );
            for (x, y) in points {
                let _ = write!(
                    out,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"><title>{}: {} at {}</title></circle>",
                    xs.at(*x, left, right),
                    ys.at(*y, bottom, top),
                    escape(&s.label),
                    number(*y),
                    match &self.x_axis {
                        XAxis::Labeled(ticks) =>
                            ticks.iter().find(|t| t.0 == *x).map_or_else(|| number(*x), |t| t.1.clone()),
                        XAxis::Linear => format!("{} = {}", self.x_label, number(*x)),
                    }
                );
            }
            out.push_str("</g>");
        }
        let mut y = bottom + 52.0;
        for (s, _) in &series {
            legend_row(&mut out, left, y, &s.label, s.color, s.dashed, false);
            y += LEGEND_ROW;
        }
        out.push_str("</svg>");
        out
    }
}

pub(crate) struct Bar {
    pub label: String,
    pub value: f64,
    pub color: usize,
    /// Extra hover text (counts, standard error).
    pub note: String,
}

pub(crate) struct BarGroup {
    pub label: String,
    pub bars: Vec<Bar>,
}

/// Horizontal bars in labelled groups.
pub(crate) struct BarChart {
    pub title: String,
    pub caption: String,
    pub x_label: String,
    pub groups: Vec<BarGroup>,
    /// The end of the value axis when it is known (1 for a share); else from the data.
    pub max: Option<f64>,
    pub format: Format,
    /// (label, colour) of each kind of bar; none when each group has one bar.
    pub legend: Vec<(String, usize)>,
}

impl BarChart {
    /// The chart, or nothing when there is no finite bar.
    pub(crate) fn render(&self) -> String {
        let groups: Vec<(&BarGroup, Vec<&Bar>)> = self
            .groups
            .iter()
            .map(|g| (g, g.bars.iter().filter(|b| b.value.is_finite()).collect::<Vec<_>>()))
            .filter(|(_, b)| !b.is_empty())
            .collect();
        if groups.is_empty() {
            return String::new();
        }
        let data_max = groups.iter().flat_map(|(_, b)| b.iter().map(|b| b.value)).fold(0.0, f64::max);
        let xs = Scale::nice(0.0, self.max.unwrap_or(data_max).max(data_max), self.format);
        const BAR: f64 = 12.0;
        const GAP: f64 = 10.0;
        let top = 30.0 + 14.0 * caption_lines(&self.caption);
        let (left, right) = (216.0, WIDTH - 64.0);
        let rows: f64 = groups.iter().map(|(_, b)| b.len() as f64 * (BAR + 2.0) + GAP).sum();
        let bottom = top + rows;
        let height = bottom + 40.0 + LEGEND_ROW * self.legend.len() as f64;
        let mut out = String::new();
        open(&mut out, height, &self.title, &self.caption);
        for (v, text) in &xs.ticks {
            let x = xs.at(*v, left, right);
            let _ = write!(
                out,
                "<path d=\"M{x:.1},{top:.1} L{x:.1},{bottom:.1}\" stroke=\"#e5e5e5\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444444\">{}</text>",
                bottom + 14.0,
                escape(text)
            );
        }
        let mut y = top + GAP / 2.0;
        for (g, bars) in &groups {
            let h = bars.len() as f64 * (BAR + 2.0);
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#222222\"><title>{}</title>{}</text>",
                left - 8.0,
                y + h / 2.0 + 4.0,
                escape(&g.label),
                escape(&truncate(&g.label, 34))
            );
            for b in bars {
                let w = (xs.at(b.value, left, right) - left).max(0.0);
                let value = self.format.value(b.value);
                let label = if b.label.is_empty() { g.label.clone() } else { format!("{} · {}", g.label, b.label) };
                let note = if b.note.is_empty() { String::new() } else { format!(" ({})", b.note) };
                let _ = write!(
                    out,
                    "<rect class=\"bar\" x=\"{left:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{BAR:.1}\" fill=\"{}\"><title>{}: {}{}</title></rect>\
                     <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333333\">{}</text>",
                    color(b.color),
                    escape(&label),
                    escape(&value),
                    escape(&note),
                    left + w + 4.0,
                    y + BAR - 2.0,
                    escape(&value)
                );
                y += BAR + 2.0;
            }
            y += GAP;
        }
        let _ = write!(out, "<path d=\"M{left:.1},{top:.1} L{left:.1},{bottom:.1}\" stroke=\"#888888\"/>");
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#222222\">{}</text>",
            (left + right) / 2.0,
            bottom + 30.0,
            escape(&self.x_label)
        );
        let mut y = bottom + 50.0;
        for (label, c) in &self.legend {
            legend_row(&mut out, left, y, label, *c, false, true);
            y += LEGEND_ROW;
        }
        out.push_str("</svg>");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers_covering_the_data() {
        let s = Scale::nice(0.0, 23.0, Format::Plain);
        let t: Vec<&str> = s.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(t, ["0", "5", "10", "15", "20", "25"]);
        let s = Scale::nice(0.0, 0.9, Format::Percent);
        assert_eq!(s.ticks.last().unwrap().1, "100 %");
        let s = Scale::nice(0.0, 0.12, Format::Plain);
        assert_eq!(s.ticks[1].1, "0.025");
        // One value: a range around it.
        let s = Scale::nice(4.0, 4.0, Format::Plain);
        assert!(s.lo < 4.0 && s.hi > 4.0);
        let s = Scale::nice(0.0, 0.0, Format::Plain);
        assert_eq!((s.lo, s.hi), (0.0, 1.0));
    }

    #[test]
    fn labels_are_escaped_and_an_empty_chart_is_nothing() {
        let chart = LineChart {
            title: "t <b>".into(),
            caption: "from \"p50\"".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_axis: XAxis::Linear,
            series: vec![Series {
                label: "</svg><script>alert(1)</script>".into(),
                points: vec![(1.0, 2.0), (2.0, f64::NAN), (3.0, 4.0)],
                color: 0,
                dashed: false,
            }],
        };
        let svg = chart.render();
        assert!(!svg.contains("<script") && !svg.contains("<b>"), "{svg}");
        assert!(svg.contains("&lt;/svg&gt;&lt;script&gt;") && svg.contains("&quot;p50&quot;"), "{svg}");
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 2, "the NaN point is left out");
        let empty = LineChart { series: vec![], ..chart };
        assert_eq!(empty.render(), "");
    }

    #[test]
    fn bars_scale_to_the_axis_end() {
        let chart = BarChart {
            title: "accuracy".into(),
            caption: String::new(),
            x_label: "accuracy".into(),
            groups: vec![BarGroup {
                label: "overall".into(),
                bars: vec![Bar { label: String::new(), value: 0.5, color: 0, note: "n=10".into() }],
            }],
            max: Some(1.0),
            format: Format::Percent,
            legend: vec![],
        };
        let svg = chart.render();
        // Half of the 360-pixel value axis.
        assert!(svg.contains("width=\"180.0\" height=\"12.0\""), "{svg}");
        assert!(svg.contains("overall: 50.0 % (n=10)"), "{svg}");
    }
}
