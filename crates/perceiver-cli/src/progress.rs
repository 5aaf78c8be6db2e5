//! Progress bars on standard error for the commands whose work takes minutes (a large frame's
//! flow tiles, a clip's decoder chunks), drawn only where standard error is a terminal, so that
//! scripts and pipes see nothing of them.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar for `total` steps, each one of `what` ("tiles", "chunks"); hidden unless standard error
/// is a terminal and there is more than one step. Clear it with `finish_and_clear` once done.
pub fn bar(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    if total > 1 && std::io::stderr().is_terminal() {
        let template = format!("{{bar:30}} {{pos}}/{{len}} {what} [{{elapsed_precise}}<{{eta_precise}}]");
        bar.set_style(ProgressStyle::with_template(&template).expect("a valid template"));
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}
