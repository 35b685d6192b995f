//! SVG pictures of a run: latency over time (per-second p50 and p99, log scale) with the run's
//! stretches marked (the steps of `one-to-one`, the move of `rebalance`), and for stepped runs
//! the delivered rate against the offered one. Written with `plotters`' SVG backend.

use std::path::Path;

use plotters::prelude::*;

/// Latency samples: (seconds since the run's start, milliseconds).
pub type Samples = Vec<(f64, f64)>;

/// A stretch of the run, shaded and labelled above the chart.
pub struct Span {
    pub label: String,
    pub from: f64,
    pub to: f64,
}

/// One latency measure to draw: its per-second p50 (thin) and p99 (thick).
struct Measure<'a> {
    name: &'a str,
    samples: &'a Samples,
    color: RGBColor,
}

/// (second, quantile `q` of the samples in that second) for every second with samples.
pub fn per_second(samples: &Samples, q: f64) -> Vec<(f64, f64)> {
    let mut by_sec: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for &(t, v) in samples {
        by_sec.entry(t.max(0.0) as u64).or_default().push(v);
    }
    by_sec
        .into_iter()
        .map(|(s, mut v)| {
            v.sort_by(f64::total_cmp);
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            (s as f64 + 0.5, v[i])
        })
        .collect()
}

/// Steps of a stepped run: (offered/s, delivered/s).
pub struct Steps<'a> {
    pub rates: &'a [(f64, f64)],
}

/// Writes the picture: ✓ (`sent`, blue) and e2e (red) latency over time, and below it the
/// steps' rates if given.
pub fn write(
    path: &Path,
    title: &str,
    sent: &Samples,
    e2e: &Samples,
    spans: &[Span],
    steps: Option<Steps<'_>>,
) -> anyhow::Result<()> {
    let measures = [
        Measure {
            name: "✓",
            samples: sent,
            color: BLUE,
        },
        Measure {
            name: "e2e",
            samples: e2e,
            color: RED,
        },
    ];
    let height = if steps.is_some() { 760 } else { 440 };
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let (top, bottom) = match steps {
        Some(_) => {
            let (a, b) = root.split_vertically(height * 55 / 100);
            (a, Some(b))
        }
        None => (root.clone(), None),
    };
    latency_chart(&top, &measures, spans)?;
    if let (Some(area), Some(steps)) = (bottom, steps) {
        steps_chart(&area, &steps)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e:?}")
}

/// A part of the picture.
type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Both charts' frame: margins and room for the axis labels.
fn frame<'a, 'b, 'c>(area: &'a Area<'c>) -> ChartBuilder<'a, 'b, SVGBackend<'c>> {
    let mut b = ChartBuilder::on(area);
    b.margin(12).x_label_area_size(36).y_label_area_size(60);
    b
}

/// The series' legend at `pos`, on a light box.
fn legend<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    pos: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(pos)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

fn latency_chart(area: &Area<'_>, measures: &[Measure<'_>], spans: &[Span]) -> anyhow::Result<()> {
    let all = measures.iter().flat_map(|m| m.samples.iter());
    let t_end = all
        .clone()
        .map(|s| s.0)
        .chain(spans.iter().map(|s| s.to))
        .fold(1.0, f64::max);
    let v_max = all.map(|s| s.1).fold(1.0, f64::max);
    // Decades from 0.1 ms to above the largest sample.
    let top = 10f64.powf(v_max.log10().ceil().max(1.0));
    let mut chart = frame(area)
        .build_cartesian_2d(0f64..t_end, (0.1f64..top).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("latency (ms), per second")
        .y_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(err)?;
    for (i, s) in spans.iter().enumerate() {
        let shade = if i % 2 == 0 { 0.08 } else { 0.16 };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(s.from, 0.1), (s.to, top)],
                BLUE.mix(shade).filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                s.label.clone(),
                (s.from + (s.to - s.from) * 0.05, top / 1.6),
                ("sans-serif", 13),
            )))
            .map_err(err)?;
    }
    for m in measures {
        for (q, width, name) in [(0.5, 1, "p50"), (0.99, 2, "p99")] {
            let color = m.color;
            chart
                .draw_series(LineSeries::new(
                    per_second(m.samples, q)
                        .into_iter()
                        .map(|(t, v)| (t, v.max(0.1))),
                    color.stroke_width(width),
                ))
                .map_err(err)?
                .label(format!("{} {name}", m.name))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                });
        }
    }
    // Low latencies are the rarest part of a busy run: the legend goes there.
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn steps_chart(area: &Area<'_>, steps: &Steps<'_>) -> anyhow::Result<()> {
    let max = steps
        .rates
        .iter()
        .flat_map(|&(o, d)| [o, d])
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = frame(area)
        .build_cartesian_2d(0f64..max, 0f64..max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered msgs/s")
        .y_desc("delivered msgs/s")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (max, max)], BLACK.mix(0.3)))
        .map_err(err)?
        .label("delivered = offered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.3)));
    chart
        .draw_series(LineSeries::new(
            steps.rates.iter().copied(),
            RED.stroke_width(2),
        ))
        .map_err(err)?
        .label("delivered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .draw_series(steps.rates.iter().map(|&p| Circle::new(p, 4, RED.filled())))
        .map_err(err)?;
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_taken_per_second() {
        let s: Samples = vec![(0.1, 5.0), (0.9, 1.0), (0.5, 3.0), (1.2, 7.0), (3.0, 2.0)];
        assert_eq!(
            per_second(&s, 0.5),
            vec![(0.5, 3.0), (1.5, 7.0), (3.5, 2.0)]
        );
        assert_eq!(
            per_second(&s, 0.99),
            vec![(0.5, 5.0), (1.5, 7.0), (3.5, 2.0)]
        );
        assert!(per_second(&vec![], 0.5).is_empty());
    }

    #[test]
    fn a_picture_is_written_with_its_parts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        let e2e: Samples = (0..300)
            .map(|i| (i as f64 / 10.0, 1.0 + i as f64))
            .collect();
        write(
            &path,
            "a run",
            &Vec::new(),
            &e2e,
            &[Span {
                label: "1000/s".into(),
                from: 0.0,
                to: 30.0,
            }],
            Some(Steps {
                rates: &[(1000.0, 990.0), (2000.0, 1500.0)],
            }),
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for part in [
            "<svg",
            "a run",
            "1000/s",
            "e2e p99",
            "delivered = offered",
            "<polyline",
        ] {
            assert!(svg.contains(part), "{part} missing");
        }
    }
}
