//! Command-line definitions and dispatch.

mod commands;
mod output;
mod progress;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use labelwise::backend::DeviceChoice;
use labelwise::checkpoint::Cadence;

/// Decides which labels to buy: trains ResNet18 + CosFace on labelled images, scores an
/// unlabelled pool by uncertainty, buys within a budget, retrains, and reports the gain over
/// random purchases.
///
/// With no subcommand, runs the whole experiment (`labelwise run`) on the embedded
/// Fashion-MNIST subset.
#[derive(Parser, Debug)]
#[command(name = "labelwise", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Compute device: auto (CUDA when present, else CPU), cpu, cuda, or cuda-emulated (our
    /// CUDA kernels on the PTX interpreter: slow, for kernel development).
    #[arg(long, global = true, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// CPU threads (0 = one per core).
    #[arg(long, global = true, default_value_t = 0)]
    pub threads: usize,
    /// Print only warnings, errors and the final results.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

fn parse_cadence(s: &str) -> Result<Cadence, String> {
    s.parse().map_err(|e: labelwise::Error| e.to_string())
}

/// Checkpoint options of `train` and `run`.
#[derive(Args, Debug, Clone)]
pub struct CheckpointArgs {
    /// Continue from the last checkpoint beside --out, written by an interrupted run with the
    /// same data and options (any difference is an error naming it). Without a checkpoint this
    /// is an error; a run without --resume refuses to overwrite one.
    #[arg(long)]
    pub resume: bool,
    /// When to save a checkpoint (model, optimiser, progress; written atomically): off; epoch
    /// (every epoch and purchase round); a number of optimiser steps (and every epoch and
    /// round); or a time since the last one, as 90s or 5m.
    #[arg(long, default_value = "60s", value_parser = parse_cadence, value_name = "WHEN")]
    pub checkpoint_every: Cadence,
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse().map_err(|e: labelwise::Error| e.to_string())
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Turn a public dataset into the challenge layout (images/ + labels.csv).
    Import(ImportArgs),
    /// Train ResNet18 + CosFace on a labelled folder and save the model as safetensors.
    Train(TrainArgs),
    /// Write embeddings and per-label probabilities for a folder of images.
    Embed(EmbedArgs),
    /// Rank an unlabelled folder by a strategy and write the files to buy.
    Purchase(PurchaseArgs),
    /// Score a predictions file against a labels.csv.
    Evaluate(EvaluateArgs),
    /// The whole experiment: pre-train, buy by each strategy, retrain, evaluate.
    Run(RunArgs),
    /// Time the primitives at ResNet18's shapes and a whole training step on this device.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Square image size of the benchmarked model.
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Timed repetitions per measurement (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Skip the per-op table and time only the whole model.
    #[arg(long)]
    pub model_only: bool,
    /// Instead of the tables, time every primitive inside --reps training steps and print
    /// where a step's time goes, by op and by shape (CPU: op costs; CUDA: launch costs only).
    #[arg(long, conflicts_with = "model_only")]
    pub profile: bool,
    /// Also write the measurements as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub dataset: ImportDataset,
}

#[derive(Subcommand, Debug)]
pub enum ImportDataset {
    /// Fashion-MNIST's IDX files (Debian package `dataset-fashion-mnist`) to
    /// OUT/train and OUT/test, one 0/1 column per class.
    FashionMnist(FashionMnistArgs),
}

#[derive(Args, Debug)]
pub struct FashionMnistArgs {
    /// Folder holding the four IDX files (gzip or raw).
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    pub source: PathBuf,
    /// Output folder; gets train/ and test/ in the challenge layout.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Keep at most this many training images (a seeded random subset).
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Keep at most this many test images (a seeded random subset).
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// Build NxN mosaics of random images whose labels are the classes present (multi-label).
    #[arg(long)]
    pub mosaic: Option<usize>,
    /// Seed for subsets and mosaics.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Model and optimiser options shared by `train` and `run`.
#[derive(Args, Debug, Clone)]
pub struct Recipe {
    /// Training epochs.
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Images per training batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Weight decay (added to the gradient; decoupled with --adamw).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Use AdamW (decoupled weight decay) instead of Adam.
    #[arg(long)]
    pub adamw: bool,
    /// Learning-rate schedule: cosine (decays to 0 over the run) or constant.
    #[arg(long, value_enum, default_value_t = ScheduleChoice::Cosine)]
    pub lr_schedule: ScheduleChoice,
    /// CosFace margin m (training only; 0 or more).
    #[arg(long, default_value_t = 0.2)]
    pub margin: f32,
    /// CosFace scale s (above 0).
    #[arg(long, default_value_t = 16.0)]
    pub scale: f32,
    /// Images are resized to this square size.
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Fraction of the labelled images held out for validation.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f32,
    /// Loss: auto (sigmoid when any image has other than one label), softmax or sigmoid.
    #[arg(long, value_enum, default_value_t = LossChoice::Auto)]
    pub loss: LossChoice,
    /// Seed for initialisation, splits and batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start the encoder from a torchvision ResNet18 state dict saved as safetensors (e.g.
    /// ImageNet's, exported by scripts/export_torchvision.py) instead of a seeded
    /// initialisation. fc.* and num_batches_tracked are skipped; any other missing, extra or
    /// mis-shaped tensor is an error. The CosFace head still starts from --seed.
    #[arg(long, value_name = "FILE.safetensors")]
    pub init_weights: Option<PathBuf>,
}

/// How image folders are read; every command that loads images takes it.
#[derive(Args, Debug, Clone)]
pub struct Loading {
    /// Images that cannot be used: fail (stop, naming the file) or skip (leave them out, with
    /// a warning per file and a count).
    ///
    /// An image cannot be used when it is empty, truncated, corrupt, not PNG or JPEG, over 40
    /// megapixels (refused from its header, before decoding), or listed in labels.csv but
    /// absent from images/. fail stops with an error naming the file (and the labels.csv line
    /// of a missing one). skip leaves the item out everywhere: it is never trained on, scored
    /// or bought, and every count printed excludes it; each skipped file gets a warning naming
    /// it and the reason, then one warning gives the count. Under either policy a malformed
    /// labels.csv is an error naming its line, and images without a row in labels.csv are not
    /// loaded (one warning with their count).
    #[arg(long, value_enum, default_value_t = BadImages::Fail)]
    pub bad_images: BadImages,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadImages {
    Fail,
    Skip,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleChoice {
    Cosine,
    Constant,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvaluatorChoice {
    FineTune,
    Fixed,
}

/// The strategies with their formulas, for `--help`.
fn strategy_help(many: bool) -> String {
    let mut out = String::from(match many {
        true => {
            "Strategies to compare, comma-separated, or \"all\"; random is always included \
                 as the baseline. p is the softmax probability (multi-label: each label's sigmoid, \
                 per-label scores combined by --aggregate):\n"
        }
        false => {
            "Ranking strategy. p is the softmax probability (multi-label: each label's \
                  sigmoid, per-label scores combined by --aggregate):\n"
        }
    });
    for s in labelwise::active::Strategy::ALL {
        out += &format!("  {:<26} {}\n", s.name(), s.describe());
    }
    out
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossChoice {
    Auto,
    Softmax,
    Sigmoid,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Labelled folder (images/ + labels.csv).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to save the model (safetensors).
    #[arg(long, short, default_value = "model.safetensors")]
    pub out: PathBuf,
    /// Also write per-epoch metrics (CSV) and a plot of them beside the model.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub curves: bool,
    #[command(flatten)]
    pub recipe: Recipe,
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    #[command(flatten)]
    pub loading: Loading,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// A model saved by `labelwise train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Folder with images/: every PNG and JPEG in it (labels.csv, if any, is ignored).
    #[arg(long)]
    pub images: PathBuf,
    /// Output folder: embeddings.csv, probabilities.csv and predictions.csv.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Images per inference batch.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[command(flatten)]
    pub loading: Loading,
}

#[derive(Args, Debug)]
pub struct PurchaseArgs {
    /// A model saved by `labelwise train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Folder (images/) to buy from: every PNG and JPEG in it (labels.csv, if any, is ignored).
    #[arg(long)]
    pub pool: PathBuf,
    /// Ranking strategy; coreset, committee-* and balanced-* need --labelled (see the list).
    #[arg(long, default_value = "entropy", long_help = strategy_help(false))]
    pub strategy: String,
    /// Labelled folder (images/ + labels.csv): coreset's centres, the committee's training data
    /// and, without --val, the balanced strategies' per-label F1.
    #[arg(long)]
    pub labelled: Option<PathBuf>,
    /// Held-out labelled folder for the balanced strategies' per-label F1 (default: --labelled).
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Committee members, each the model fine-tuned on a bootstrap sample of --labelled.
    #[arg(long, default_value_t = 3)]
    pub committee_size: usize,
    /// Epochs each committee member is fine-tuned.
    #[arg(long, default_value_t = 1)]
    pub committee_epochs: usize,
    /// How multi-label per-label scores combine: mean, max or sum.
    #[arg(long, default_value = "mean")]
    pub aggregate: String,
    /// Most labels to buy.
    #[arg(long)]
    pub budget: usize,
    /// Files already labelled or bought, never chosen: a list of names one per line, a CSV whose
    /// first column is headed `file` (a labels.csv), or a purchase list (`rank,file,score`).
    #[arg(long)]
    pub exclude: Option<PathBuf>,
    /// Output CSV: rank, file, score.
    #[arg(long, short, default_value = "purchase.csv")]
    pub out: PathBuf,
    /// Seed for the random strategy.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per inference batch.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[command(flatten)]
    pub loading: Loading,
}

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// Predictions CSV (file, then one 0/1 column per label), as `labelwise embed` writes.
    #[arg(long)]
    pub predictions: PathBuf,
    /// Ground truth labels.csv.
    #[arg(long)]
    pub labels: PathBuf,
    /// Also write the metrics as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Labelled folder. Without --labelled/--pool/--test (or --train/--test) the embedded
    /// Fashion-MNIST subset is used: its training part split into labelled and pool, its test
    /// part as the test set.
    #[arg(long, requires_all = ["pool", "test"], conflicts_with = "train")]
    pub labelled: Option<PathBuf>,
    /// Unlabelled pool folder; its labels.csv is the oracle, read only for bought images.
    #[arg(long, requires_all = ["labelled", "test"], conflicts_with = "train")]
    pub pool: Option<PathBuf>,
    /// One labelled folder split by the seed into --initial-labelled labelled images and a pool
    /// of the rest (whose labels then act as the oracle), instead of --labelled and --pool.
    #[arg(long, requires = "test")]
    pub train: Option<PathBuf>,
    /// Held-out test folder.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// With --train or the embedded dataset (4,000 training images): how many start labelled.
    #[arg(long, default_value_t = 500)]
    pub initial_labelled: usize,
    /// Labels each strategy buys in total.
    #[arg(long, default_value_t = 500)]
    pub budget: usize,
    /// Purchase rounds (buy, retrain, rescore).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Strategies to compare, comma-separated, or "all"; random is always included as the
    /// baseline.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "random,least-confidence,margin,entropy",
        long_help = strategy_help(true)
    )]
    pub strategies: Vec<String>,
    /// Committee members, each a copy of the current model fine-tuned on a bootstrap sample
    /// of the current labelled set with its own seed.
    #[arg(long, default_value_t = 3)]
    pub committee_size: usize,
    /// Epochs each committee member is fine-tuned (1 keeps a committee round cheap).
    #[arg(long, default_value_t = 1)]
    pub committee_epochs: usize,
    /// Compute budget in wall-clock seconds per run (per seed): rounds and retraining epochs
    /// are planned to fit it from the measured pre-training throughput, and each strategy stops
    /// when its share is spent, keeping what it bought.
    #[arg(long, value_name = "SECONDS")]
    pub time_budget: Option<f64>,
    /// Compute budget in images processed by training and inference per run (per seed), one
    /// per image per epoch or scoring pass; planned and enforced as --time-budget.
    #[arg(long, value_name = "N")]
    pub image_budget: Option<u64>,
    /// The final model scored for each strategy: fine-tune (the pre-trained model fine-tuned on
    /// labelled + bought, as each round does) or fixed (a fresh model from the same seed
    /// trained on labelled + bought by the pre-training recipe).
    #[arg(long, value_enum, default_value_t = EvaluatorChoice::FineTune)]
    pub evaluator: EvaluatorChoice,
    /// Run the whole experiment this many times with seeds seed, seed+1, ... and report the
    /// mean and standard deviation per strategy.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// How multi-label per-label scores combine: mean, max or sum.
    #[arg(long, default_value = "mean")]
    pub aggregate: String,
    /// Epochs of retraining after each purchase (same recipe for every strategy).
    #[arg(long, default_value_t = 4)]
    pub retrain_epochs: usize,
    /// Output folder for results.json, results.csv, curves and purchase lists.
    #[arg(long, short, default_value = "labelwise-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub recipe: Recipe,
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    #[command(flatten)]
    pub loading: Loading,
}

/// Sets up the `log` facade for the library's messages.
pub fn init_logging(global: &Global) {
    let level = if global.quiet { "warn" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .format_target(false)
        .init();
}

/// Runs the chosen subcommand.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    // More threads than a few per core only adds scheduling cost; a typo such as 100000 would
    // spawn that many OS threads.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limit = 4 * cores.max(16);
    if cli.global.threads > limit {
        anyhow::bail!(
            "--threads {} is over this machine's limit of {limit} ({cores} cores); \
             use 0 for one thread per core",
            cli.global.threads
        );
    }
    if cli.global.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(cli.global.threads)
            .build_global()?;
    }
    let global = cli.global;
    match cli.command {
        None => commands::run(&global, &RunArgs::defaults()),
        Some(Command::Import(a)) => match a.dataset {
            ImportDataset::FashionMnist(f) => commands::import_fashion_mnist(&global, &f),
        },
        Some(Command::Train(a)) => commands::train(&global, &a),
        Some(Command::Embed(a)) => commands::embed(&global, &a),
        Some(Command::Purchase(a)) => commands::purchase(&global, &a),
        Some(Command::Evaluate(a)) => commands::evaluate(&global, &a),
        Some(Command::Run(a)) => commands::run(&global, &a),
        Some(Command::Bench(a)) => commands::bench(&global, &a),
    }
}

impl RunArgs {
    /// `labelwise run` with every default, for the bare `labelwise` command.
    fn defaults() -> RunArgs {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            run: RunArgs,
        }
        Wrapper::parse_from(["labelwise"]).run
    }
}
