//! Loss and accuracy curves from `metrics.jsonl`, drawn to SVG with plotters.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::config::Task;
use crate::error::{Error, Result};
use crate::metrics::METRICS_FILE;
use crate::metrics::{read, Record};

/// The curves' file name in a run directory.
pub const CURVES_FILE: &str = "curves.svg";

/// Draws `RUN_DIR/curves.svg` (loss and masked-byte accuracy, or a classifier's loss and accuracy
/// per text, training and held-out) and returns its path.
pub fn plot_run(run_dir: &Path) -> Result<PathBuf> {
    let records = read(&run_dir.join(METRICS_FILE))?;
    // A NaN or infinite value (a diverged step) has no place on an axis: left out.
    let series = |f: &dyn Fn(&Record) -> Option<(f64, f64)>| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(f)
            .filter(|(_, y)| y.is_finite())
            .collect()
    };
    let train_loss = series(&|r| match r {
        Record::Train { step, loss, .. } => Some((*step as f64, *loss)),
        _ => None,
    });
    let eval_loss = series(&|r| match r {
        Record::Eval { step, loss, .. } => Some((*step as f64, *loss)),
        _ => None,
    });
    let train_acc = series(&|r| match r {
        Record::Train { step, accuracy, .. } => Some((*step as f64, *accuracy)),
        _ => None,
    });
    let eval_acc = series(&|r| match r {
        Record::Eval { step, accuracy, .. } => Some((*step as f64, *accuracy)),
        _ => None,
    });
    if train_loss.is_empty() && eval_loss.is_empty() {
        return Err(Error::Plot(format!(
            "{} has no records yet",
            run_dir.join(METRICS_FILE).display()
        )));
    }
    let out = run_dir.join(CURVES_FILE);
    // The newest checkpoint says what the run trains; without one, a masked LM.
    let task = crate::checkpoint::resolve(run_dir)
        .ok()
        .and_then(|dir| std::fs::read_to_string(dir.join(crate::checkpoint::TRAINING_FILE)).ok())
        .and_then(|text| serde_json::from_str::<crate::checkpoint::TrainingFile>(&text).ok())
        .map_or(Task::MaskedLm, |t| t.options.task);
    let titles = match task {
        Task::MaskedLm => ["loss (nats per masked byte)", "masked-byte accuracy (top-1)"],
        Task::Classify => ["loss (nats per text)", "accuracy (texts)"],
    };
    draw_both(&out, titles, &train_loss, &eval_loss, &train_acc, &eval_acc)?;
    Ok(out)
}

fn draw_both(
    out: &Path,
    titles: [&str; 2],
    train_loss: &[(f64, f64)],
    eval_loss: &[(f64, f64)],
    train_acc: &[(f64, f64)],
    eval_acc: &[(f64, f64)],
) -> Result<()> {
    // Drawn in memory, then written whole: an existing curves.svg is replaced, never truncated.
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (left, right) = root.split_horizontally(500);
        draw(&left, titles[0], train_loss, eval_loss)?;
        draw(&right, titles[1], train_acc, eval_acc)?;
        root.present().map_err(plot_error)?;
    }
    crate::atomic::write(out, svg.as_bytes())
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::Plot(e.to_string())
}

fn draw(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    train: &[(f64, f64)],
    eval: &[(f64, f64)],
) -> Result<()> {
    let all = train.iter().chain(eval);
    let (mut x_max, mut y_min, mut y_max) = (1f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    // Relative to the values too: 1e300 ± 1e-3 is 1e300, an empty range.
    let pad = ((y_max - y_min) * 0.05)
        .max(y_min.abs().max(y_max.abs()) * 1e-6)
        .max(1e-3);
    // Beyond ±f64::MAX the range is infinite, and plotters would loop over its ticks forever.
    if !(y_max - y_min + 2.0 * pad).is_finite() || x_max > 1e15 {
        return Err(Error::Plot(format!(
            "{title}: values from {y_min:e} to {y_max:e} (steps to {x_max}) are too far apart to draw"
        )));
    }
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..x_max, (y_min - pad)..(y_max + pad))
        .map_err(plot_error)?;
    chart.configure_mesh().x_desc("step").draw().map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
        .map_err(plot_error)?
        .label("training")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2)))
        .map_err(plot_error)?
        .label("held out")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(lines: &[&str]) -> (tempfile::TempDir, Result<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(METRICS_FILE), lines.join("\n")).unwrap();
        let result = plot_run(dir.path());
        (dir, result)
    }

    #[test]
    fn extreme_values_are_refused_not_drawn_forever() {
        let (_dir, result) = run_with(&[
            r#"{"kind":"train","step":1,"loss":1e308,"accuracy":0.1,"lr":0.001,"grad_norm":1,"bytes_per_second":1}"#,
            r#"{"kind":"train","step":2,"loss":-1e308,"accuracy":0.1,"lr":0.001,"grad_norm":1,"bytes_per_second":1}"#,
            "",
        ]);
        let err = result.unwrap_err().to_string();
        assert!(err.contains("too far apart"), "{err}");
    }

    #[test]
    fn huge_equal_values_and_nan_losses_still_draw() {
        let (dir, result) = run_with(&[
            r#"{"kind":"train","step":1,"loss":1e300,"accuracy":0.1,"lr":0.001,"grad_norm":1,"bytes_per_second":1}"#,
            r#"{"kind":"train","step":2,"loss":null,"accuracy":0.1,"lr":0.001,"grad_norm":null,"bytes_per_second":1}"#,
            r#"{"kind":"train","step":3,"loss":1e300,"accuracy":0.2,"lr":0.001,"grad_norm":1,"bytes_per_second":1}"#,
            "",
        ]);
        let path = result.unwrap();
        let svg = std::fs::read_to_string(path).unwrap();
        assert!(svg.starts_with("<svg"));
        // Nothing but the run's files is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
