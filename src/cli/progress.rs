//! Progress bars and the fixed-format per-epoch and per-round lines.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use labelwise::experiment::{Event, RoundRecord};
use labelwise::train::{EpochReport, Progress, SplitReport};

/// Turns library progress events into a batch bar on stderr and lines on stdout.
pub struct Reporter {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Reporter {
    pub fn new(quiet: bool) -> Self {
        Reporter { bar: None, quiet }
    }

    fn bar(&mut self, epoch: usize, batches: usize) -> &ProgressBar {
        let quiet = self.quiet;
        self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(
                Some(batches as u64),
                match quiet {
                    true => ProgressDrawTarget::hidden(),
                    false => ProgressDrawTarget::stderr(),
                },
            );
            let style = ProgressStyle::with_template(
                "  epoch {prefix:>3} [{bar:30}] {pos}/{len} batches {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(epoch.to_string());
            bar
        })
    }

    pub fn training(&mut self, p: Progress) {
        match p {
            Progress::Batch {
                epoch,
                batch,
                batches,
            } => {
                let bar = self.bar(epoch, batches);
                bar.set_position(batch as u64);
            }
            Progress::Epoch(report) => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                if !self.quiet {
                    println!("{}", epoch_line(report));
                }
            }
        }
    }

    pub fn experiment(&mut self, e: Event) {
        match e {
            Event::Stage(name) => {
                if !self.quiet {
                    println!("== {name}");
                }
            }
            Event::Train(p) => self.training(p),
            Event::Plan(plan) => {
                // The plan is printed even when quiet: it says what the budget allows.
                for line in plan.lines() {
                    println!("{line}");
                }
            }
            Event::Round(strategy, record) => {
                if !self.quiet {
                    println!("{}", round_line(strategy, record));
                }
            }
            Event::Resumed(from) => {
                if !self.quiet {
                    println!("== {from}");
                }
            }
            Event::Stopped(strategy, reason) => {
                println!("{strategy}: stopped early ({reason}); its purchases are kept");
            }
        }
    }
}

fn split_text(s: &SplitReport) -> String {
    format!(
        "loss {:.4} f1 {:.4} exact {:.4} hamming {:.4}",
        s.loss, s.metrics.macro_f1, s.metrics.exact_match, s.metrics.hamming_loss
    )
}

/// `epoch  3/8 | train loss .. | val loss .. | 12.3s`
pub fn epoch_line(r: &EpochReport) -> String {
    let val = match &r.val {
        Some(v) => split_text(v),
        None => "(no validation split)".to_string(),
    };
    format!(
        "epoch {:>2}/{} | train {} | val {} | {:.1}s",
        r.epoch,
        r.epochs,
        split_text(&r.train),
        val,
        r.elapsed_s
    )
}

/// `round 1 entropy: bought 500 (total 500) | test f1 .. | 1234 images | 40.2s`
pub fn round_line(strategy: &str, r: &RoundRecord) -> String {
    let test = match &r.test {
        Some(m) => format!(
            "test f1 {:.4} exact {:.4} hamming {:.4}",
            m.macro_f1, m.exact_match, m.hamming_loss
        ),
        None => "retraining cut short by the compute budget".to_string(),
    };
    format!(
        "round {} {strategy}: bought {} (total {}) | {test} | {} images | {:.1}s",
        r.round,
        r.items.len(),
        r.bought_total,
        r.images,
        r.seconds
    )
}
