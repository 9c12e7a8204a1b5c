//! Progress bars on stderr (only when it is a terminal) and warnings.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The binary's [`gantry_ops::Reporter`]: one progress line per running target on a terminal,
/// plain log lines otherwise.
pub(crate) struct Bars {
    show: bool,
    quiet: bool,
    multi: MultiProgress,
}

impl Bars {
    pub(crate) fn new(show: bool, quiet: bool) -> Self {
        Bars {
            show,
            quiet,
            multi: MultiProgress::new(),
        }
    }

    fn line(&self, text: &str) {
        if self.show {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }
}

struct Bar(ProgressBar);

impl gantry_layer::Progress for Bar {
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl gantry_ops::Reporter for Bars {
    fn layer_progress(&self, label: &str, total: u64) -> Box<dyn gantry_layer::Progress> {
        if !self.show {
            return Box::new(gantry_layer::NoProgress);
        }
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_owned());
        Box::new(Bar(bar))
    }

    fn warn(&self, message: &str) {
        if !self.quiet {
            self.line(&format!("warning: {message}"));
        }
    }

    fn event(&self, message: &str) {
        if !self.quiet {
            self.line(message);
        }
    }
}
