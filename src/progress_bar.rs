//! A terminal progress bar (indicatif) behind the engine's `Progress` trait. Hidden when
//! standard error is not a terminal.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use quiver_engine::progress::Progress;

/// Draws one bar per stage on standard error.
pub struct TerminalProgress {
    bar: Mutex<Option<ProgressBar>>,
}

impl TerminalProgress {
    pub fn new() -> Self {
        TerminalProgress {
            bar: Mutex::new(None),
        }
    }
}

impl Progress for TerminalProgress {
    fn stage(&self, name: &str, total: u64) {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>14} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta})",
        ) {
            bar.set_style(style);
        }
        bar.set_message(name.to_string());
        if let Ok(mut b) = self.bar.lock() {
            if let Some(old) = b.replace(bar) {
                old.finish_and_clear();
            }
        }
    }

    fn advance(&self, n: u64) {
        if let Ok(b) = self.bar.lock() {
            if let Some(bar) = b.as_ref() {
                bar.inc(n);
            }
        }
    }

    fn finish_stage(&self) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(bar) = b.take() {
                bar.finish_and_clear();
            }
        }
    }
}
