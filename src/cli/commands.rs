//! The subcommands.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};

use labelwise::active::metrics;
use labelwise::active::select::Pool;
use labelwise::active::Strategy;
use labelwise::backend::{self, Aggregate, BackendHandle};
use labelwise::checkpoint::{self, Cadence, Checkpointing};
use labelwise::data::{self, fashion_mnist, BadImagePolicy, Dataset, LabelsCsv, LoadOptions};
use labelwise::experiment::{self, ComputeBudget, Evaluator, ExperimentConfig, ModelSettings};
use labelwise::model::{Model, TorchvisionWeights, IMAGENET_MEAN, IMAGENET_STD};
use labelwise::optim::AdamConfig;
use labelwise::train::{self, LrSchedule, TrainConfig};

use super::output;
use super::progress::Reporter;
use super::ScheduleChoice;
use super::{BadImages, BenchArgs, EvaluatorChoice, Loading, RunArgs, TrainArgs};
use super::{EmbedArgs, EvaluateArgs, FashionMnistArgs, Global, LossChoice, PurchaseArgs, Recipe};

fn open_backend(global: &Global) -> anyhow::Result<BackendHandle> {
    Ok(backend::open(global.device)?)
}

fn parse_aggregate(s: &str) -> anyhow::Result<Aggregate> {
    match s {
        "mean" => Ok(Aggregate::Mean),
        "max" => Ok(Aggregate::Max),
        "sum" => Ok(Aggregate::Sum),
        _ => bail!("unknown aggregate {s:?} (expected mean, max or sum)"),
    }
}

/// Loads an image folder under the --bad-images policy; `labels` says whether its labels.csv
/// counts. A folder left without a usable image stops here, not deep inside training.
fn load(dir: &Path, size: usize, loading: &Loading, labels: LabelsCsv) -> anyhow::Result<Dataset> {
    let opts = LoadOptions {
        on_bad_image: match loading.bad_images {
            BadImages::Fail => BadImagePolicy::Fail,
            BadImages::Skip => BadImagePolicy::Skip,
        },
        labels,
        ..LoadOptions::default()
    };
    let (data, report) = Dataset::load_folder_with_report(dir, size, &opts)
        .with_context(|| format!("loading {}", dir.display()))?;
    if data.is_empty() {
        match report.skipped.len() {
            0 => bail!("{}: no images to load", dir.display()),
            n => bail!("{}: no usable images ({n} skipped as bad)", dir.display()),
        }
    }
    Ok(data)
}

/// A folder whose labels.csv is needed.
fn load_labelled(dir: &Path, size: usize, loading: &Loading) -> anyhow::Result<Dataset> {
    let data = load(dir, size, loading, LabelsCsv::Read)?;
    if data.labels.is_none() {
        bail!(
            "{}: no labels.csv; this folder must be labelled (images/ + labels.csv)",
            dir.display()
        );
    }
    Ok(data)
}

/// A folder whose images alone count: a labels.csv in it is ignored, whatever it holds.
fn load_images(dir: &Path, size: usize, loading: &Loading) -> anyhow::Result<Dataset> {
    load(dir, size, loading, LabelsCsv::Ignore)
}

/// Fails now, not after hours of work, when the file `path` could not be written at the end.
/// Its folder is created when missing.
fn check_output(path: &Path, flag: &str) -> anyhow::Result<()> {
    let cannot = || format!("{flag} {} cannot be written", path.display());
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("creating {}", folder.display()))
            .with_context(cannot)?;
    }
    labelwise::io::check_writable(path).with_context(cannot)
}

/// Warns about labels with no positive image in `data`: they cannot be learnt from it.
fn warn_labels_without_positives(data: &Dataset, what: &str) {
    let (Some(labels), n) = (&data.labels, data.num_labels()) else {
        return;
    };
    let empty: Vec<&str> = (0..n)
        .filter(|&c| labels.chunks_exact(n).all(|row| row[c] == 0))
        .map(|c| data.label_names[c].as_str())
        .collect();
    if !empty.is_empty() {
        log::warn!(
            "{what} has no positive image for label(s) {}: the model cannot learn them from it \
             and their F1 is undefined until it has some",
            empty.join(", ")
        );
    }
}

/// Warns when the pool overlaps the labelled set: the same folder, or the same pictures.
fn warn_pool_overlap(labelled_dir: &Path, pool_dir: &Path, labelled: &Dataset, pool: &Dataset) {
    let same_folder = matches!(
        (labelled_dir.canonicalize(), pool_dir.canonicalize()),
        (Ok(a), Ok(b)) if a == b
    );
    if same_folder {
        log::warn!(
            "--labelled and --pool are the same folder ({}): every pool image is already labelled",
            pool_dir.display()
        );
        return;
    }
    let pairs = data::identical_images(labelled, pool);
    if let Some(&(i, j)) = pairs.first() {
        log::warn!(
            "{} of {} pool images are identical to labelled images at {}px (e.g. pool {} and \
             labelled {}): buying them adds no information",
            pairs.len(),
            pool.len(),
            pool.size,
            pool.files[j],
            labelled.files[i]
        );
    }
}

impl Recipe {
    /// The model settings, with --init-weights read and checked.
    fn settings(&self) -> anyhow::Result<ModelSettings> {
        let init_encoder = match &self.init_weights {
            Some(path) => Some(Arc::new(
                TorchvisionWeights::read(path).context("--init-weights")?,
            )),
            None => None,
        };
        Ok(ModelSettings {
            image_size: self.image_size,
            margin: self.margin,
            scale: self.scale,
            multilabel: match self.loss {
                LossChoice::Auto => None,
                LossChoice::Softmax => Some(false),
                LossChoice::Sigmoid => Some(true),
            },
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            init_encoder,
        })
    }

    fn train_config(&self, epochs: usize) -> TrainConfig {
        TrainConfig {
            epochs,
            batch_size: self.batch_size,
            adam: AdamConfig {
                lr: self.lr,
                weight_decay: self.weight_decay,
                decoupled: self.adamw,
                ..AdamConfig::default()
            },
            seed: self.seed,
            lr_schedule: match self.lr_schedule {
                ScheduleChoice::Cosine => LrSchedule::Cosine,
                ScheduleChoice::Constant => LrSchedule::Constant,
            },
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.batch_size < 2 {
            bail!("--batch-size must be at least 2 (batch norm needs two images)");
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            bail!("--val-fraction must be in [0, 1)");
        }
        // ResNet18 activations grow with the square of the side; past this a batch no longer
        // fits in memory on the machines this runs on.
        if self.image_size > 1024 {
            bail!("--image-size must be at most 1024");
        }
        if self.image_size < 8 {
            bail!("--image-size must be at least 8");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr must be a positive number");
        }
        if !(self.margin >= 0.0 && self.margin.is_finite()) {
            bail!(
                "--margin must be a finite number of 0 or more (CosFace subtracts it from the \
                 target's cosine), got {}",
                self.margin
            );
        }
        if !(self.scale > 0.0 && self.scale.is_finite()) {
            bail!(
                "--scale must be a finite number above 0 (CosFace multiplies the cosines by \
                 it), got {}",
                self.scale
            );
        }
        Ok(())
    }
}

/// The start-up table of the resolved configuration.
fn print_config(global: &Global, backend: &BackendHandle, rows: &[(&str, String)]) {
    if global.quiet {
        return;
    }
    let threads = rayon::current_num_threads();
    println!("labelwise {}", env!("CARGO_PKG_VERSION"));
    println!(
        "  {:<18} {} ({threads} thread{})",
        "device",
        backend.name(),
        if threads == 1 { "" } else { "s" }
    );
    println!(
        "  {:<18} {}",
        "cuda kernels",
        labelwise::backend::cuda::kernel_build_summary()
    );
    for (k, v) in rows {
        println!("  {k:<18} {v}");
    }
}

fn recipe_rows(r: &Recipe, epochs: usize) -> Vec<(&'static str, String)> {
    vec![
        ("image size", format!("{}px", r.image_size)),
        ("epochs", epochs.to_string()),
        ("batch size", r.batch_size.to_string()),
        (
            "optimiser",
            format!(
                "{} lr {} ({:?}) wd {}",
                if r.adamw { "AdamW" } else { "Adam" },
                r.lr,
                r.lr_schedule,
                r.weight_decay
            ),
        ),
        ("cosface", format!("m {} s {}", r.margin, r.scale)),
        ("seed", r.seed.to_string()),
        (
            "encoder init",
            match &r.init_weights {
                Some(path) => path.display().to_string(),
                None => "seeded (Kaiming normal)".to_string(),
            },
        ),
    ]
}

pub fn import_fashion_mnist(global: &Global, a: &FashionMnistArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let opts = fashion_mnist::ImportOptions {
        limit_train: a.limit_train,
        limit_test: a.limit_test,
        seed: a.seed,
        mosaic: a.mosaic,
    };
    let summary = fashion_mnist::import(&a.source, &a.out, &opts)?;
    if !global.quiet {
        println!(
            "{} training images to {}, {} test images to {}",
            summary.train_items,
            summary.train_dir.display(),
            summary.test_items,
            summary.test_dir.display()
        );
        println!(
            "imported into {} in {:.1}s",
            a.out.display(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

pub fn train(global: &Global, a: &TrainArgs) -> anyhow::Result<()> {
    a.recipe.check()?;
    check_output(&a.out, "--out")?;
    let backend = open_backend(global)?;
    let settings = a.recipe.settings()?;
    let data = load_labelled(&a.data, a.recipe.image_size, &a.loading)?;
    warn_labels_without_positives(&data, &format!("{}", a.data.display()));
    let config = settings.config_for(&data);
    let mut rows = recipe_rows(&a.recipe, a.recipe.epochs);
    rows.insert(
        0,
        (
            "data",
            format!(
                "{} ({} images, {} labels)",
                a.data.display(),
                data.len(),
                data.num_labels()
            ),
        ),
    );
    rows.push((
        "loss",
        if config.multilabel {
            "sigmoid (multi-label)"
        } else {
            "softmax"
        }
        .into(),
    ));
    let ck = Checkpointing {
        path: beside(&a.out, "checkpoint.safetensors"),
        cadence: a.checkpoint.checkpoint_every,
        resume: a.checkpoint.resume,
    };
    rows.push(("checkpoints", checkpoint_text(&ck)));
    print_config(global, &backend, &rows);

    // Fail now, not after the last epoch, when the model cannot be written where asked.
    labelwise::io::check_writable(&a.out)?;
    let model = settings.initial_model(backend, config, a.recipe.seed)?;
    let mut reporter = Reporter::new(global.quiet);
    let trained = checkpoint::train(
        model,
        &data,
        &a.recipe.train_config(a.recipe.epochs),
        a.recipe.val_fraction,
        &ck,
        &mut |p| reporter.training(p),
    )?;
    if let (Some((epochs, steps)), false) = (trained.resumed, global.quiet) {
        println!("resumed from the checkpoint after {epochs} epoch(s) and {steps} step(s)");
    }
    let (mut model, epochs) = (trained.model, trained.epochs);
    model
        .save(&a.out)
        .with_context(|| format!("saving {}", a.out.display()))?;
    if let Some(last) = epochs.last().and_then(|e| e.val.as_ref()) {
        output::note_undefined_f1(&last.metrics, &data.label_names);
    }
    if a.curves {
        let stem = a.out.with_extension("");
        output::write_epochs(&stem.with_extension("epochs.csv"), &epochs)?;
        output::plot_epochs(&stem.with_extension("epochs.png"), "training", &epochs)?;
    }
    // Everything is on disk: the checkpoint has served.
    ck.finish()?;
    if !global.quiet {
        println!("saved {}", a.out.display());
    }
    Ok(())
}

/// `out` with `suffix` in place of its `.safetensors` extension (or after its name).
fn beside(out: &Path, suffix: &str) -> std::path::PathBuf {
    let name = out
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let stem = name.strip_suffix(".safetensors").unwrap_or(&name);
    out.with_file_name(format!("{stem}.{suffix}"))
}

/// The configuration table's line about checkpoints.
fn checkpoint_text(ck: &Checkpointing) -> String {
    match ck.cadence {
        Cadence::Off => "off".into(),
        cadence => format!(
            "{cadence} to {}{}",
            ck.path.display(),
            if ck.resume { " (resuming)" } else { "" }
        ),
    }
}

pub fn embed(global: &Global, a: &EmbedArgs) -> anyhow::Result<()> {
    let backend = open_backend(global)?;
    let mut model = Model::load(&a.model, backend)?;
    check_output(&a.out.join("embeddings.csv"), "--out")?;
    let data = load_images(&a.images, model.config.image_size, &a.loading)?;
    let all: Vec<usize> = (0..data.len()).collect();
    let inference = train::infer(&mut model, &data, &all, a.batch_size)?;
    let predictions = metrics::predict(
        &inference.probabilities,
        model.num_labels(),
        model.config.multilabel,
    )?;
    output::write_matrix(
        &a.out.join("embeddings.csv"),
        &data.files,
        &output::numbered("e", labelwise::model::EMBEDDING_DIM),
        &inference.embeddings,
    )?;
    output::write_matrix(
        &a.out.join("probabilities.csv"),
        &data.files,
        &model.config.label_names,
        &inference.probabilities,
    )?;
    data::write_labels_csv(
        &a.out.join("predictions.csv"),
        &model.config.label_names,
        &data.files,
        &predictions,
    )?;
    if !global.quiet {
        println!(
            "wrote embeddings, probabilities and predictions of {} images to {}",
            data.len(),
            a.out.display()
        );
    }
    Ok(())
}

pub fn purchase(global: &Global, a: &PurchaseArgs) -> anyhow::Result<()> {
    let strategy: Strategy = a.strategy.parse()?;
    let aggregate = parse_aggregate(&a.aggregate)?;
    let backend = open_backend(global)?;
    let mut model = Model::load(&a.model, backend.clone())?;
    check_output(&a.out, "--out")?;
    let size = model.config.image_size;
    let data = load_images(&a.pool, size, &a.loading)?;
    let mut pool = Pool::new(data.files.clone())?;

    // Files already labelled or bought are never offered.
    if let Some(path) = &a.exclude {
        let excluded = output::read_first_column(path)?;
        let index: HashMap<&str, usize> = data
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();
        let known: Vec<usize> = excluded
            .iter()
            .filter_map(|f| index.get(f.as_str()).copied())
            .collect();
        pool.mark_bought(&known)?;
        if !global.quiet {
            println!(
                "excluding {} of {} listed files found in the pool",
                known.len(),
                excluded.len()
            );
        }
    }

    // What the strategy needs besides the pool's logits, from --labelled and --val.
    let labelled = match &a.labelled {
        Some(dir)
            if strategy.needs_embeddings()
                || strategy.needs_committee()
                || strategy.needs_label_f1() =>
        {
            Some(load_labelled(dir, size, &a.loading)?)
        }
        _ => None,
    };
    if let (Some(dir), Some(labelled)) = (&a.labelled, &labelled) {
        // --exclude is what keeps labelled files out of the purchase; say so when they overlap.
        warn_pool_overlap(dir, &a.pool, labelled, &data);
    }
    let all: Vec<usize> = (0..data.len()).collect();
    let inference = train::infer(&mut model, &data, &all, a.batch_size)?;
    let centres = match (&labelled, strategy == Strategy::Coreset) {
        (Some(l), true) => Some(
            train::infer(
                &mut model,
                l,
                &(0..l.len()).collect::<Vec<_>>(),
                a.batch_size,
            )?
            .embeddings,
        ),
        _ => None,
    };
    let committee = match (&labelled, strategy.needs_committee()) {
        (Some(l), true) => {
            // The model file holds no training recipe; members use `labelwise train`'s
            // defaults (batch 32, Adam lr 1e-3).
            let recipe = experiment::CommitteeRecipe {
                size: a.committee_size,
                train: TrainConfig {
                    epochs: a.committee_epochs,
                    batch_size: 32,
                    adam: AdamConfig::default(),
                    seed: a.seed,
                    lr_schedule: LrSchedule::Cosine,
                },
                infer_batch: a.batch_size,
            };
            let all_labelled: Vec<usize> = (0..l.len()).collect();
            Some(
                experiment::build_committee(
                    &mut model,
                    l,
                    &all_labelled,
                    &data,
                    &recipe,
                    a.seed,
                    &mut |_| false,
                )?
                .members,
            )
        }
        _ => None,
    };
    let label_f1 = match (
        a.val.as_ref().or(a.labelled.as_ref()),
        strategy.needs_label_f1(),
    ) {
        (Some(dir), true) => {
            let val = match (&a.val, &labelled) {
                (None, Some(l)) => l.clone(),
                _ => load_labelled(dir, size, &a.loading)?,
            };
            Some(
                train::evaluate(
                    &mut model,
                    &val,
                    &(0..val.len()).collect::<Vec<_>>(),
                    a.batch_size,
                )?
                .metrics
                .per_label_f1,
            )
        }
        _ => None,
    };

    let scoring = experiment::Scoring {
        pool: Some(&inference),
        centres: centres.as_deref(),
        committee: committee.as_deref(),
        label_f1: label_f1.as_deref(),
    };
    let params = experiment::ChooseParams {
        aggregate,
        multilabel: model.config.multilabel,
        num_labels: model.num_labels(),
        seed: a.seed,
    };
    let chosen = experiment::choose(&strategy, &backend, &scoring, &pool, a.budget, params)
        .map_err(|e| match e {
            labelwise::Error::StrategyInput { .. } => {
                anyhow!(e).context(format!("{strategy} needs --labelled DIR (labelled images)"))
            }
            e => anyhow!(e),
        })?;
    output::write_purchase(
        &a.out,
        &chosen
            .iter()
            .map(|&(i, s)| (data.files[i].clone(), s))
            .collect::<Vec<_>>(),
    )?;
    if !global.quiet {
        println!(
            "chose {} of {} available images by {strategy}; wrote {}",
            chosen.len(),
            pool.available().len(),
            a.out.display()
        );
    }
    Ok(())
}

pub fn evaluate(global: &Global, a: &EvaluateArgs) -> anyhow::Result<()> {
    let truth = data::read_labels_csv(&a.labels)?;
    let pred = data::read_labels_csv(&a.predictions)?;
    if truth.label_names != pred.label_names {
        bail!(
            "{} has labels {:?} but {} has {:?}",
            a.predictions.display(),
            pred.label_names,
            a.labels.display(),
            truth.label_names
        );
    }
    let l = truth.label_names.len();
    let row_of: HashMap<&str, usize> = truth
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_str(), i))
        .collect();
    let (mut y_true, mut y_pred) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for (j, f) in pred.files.iter().enumerate() {
        let i = *row_of.get(f.as_str()).ok_or_else(|| {
            anyhow!(
                "{}: {f:?} has no row in {}",
                a.predictions.display(),
                a.labels.display()
            )
        })?;
        seen.insert(i);
        y_true.extend_from_slice(&truth.labels[i * l..(i + 1) * l]);
        y_pred.extend_from_slice(&pred.labels[j * l..(j + 1) * l]);
    }
    if seen.len() < truth.files.len() {
        log::warn!(
            "{} of {} labelled files have no prediction and are not scored",
            truth.files.len() - seen.len(),
            truth.files.len()
        );
    }
    let m = metrics::evaluate(&y_true, &y_pred, l)?;
    println!("images        {}", pred.files.len());
    println!("macro F1      {:.4}", m.macro_f1);
    println!("exact match   {:.4}", m.exact_match);
    println!("Hamming loss  {:.4}", m.hamming_loss);
    output::note_undefined_f1(&m, &truth.label_names);
    if let Some(path) = &a.json {
        output::write_metrics_json(path, &m, &truth.label_names)?;
    }
    let _ = global;
    Ok(())
}

/// Splits `train` by `seed` into `n` labelled images and a pool of the rest.
fn split_labelled(train: &Dataset, n: usize, seed: u64) -> anyhow::Result<(Dataset, Dataset)> {
    if n < 2 || n >= train.len() {
        bail!(
            "--initial-labelled must be between 2 and {}",
            train.len().saturating_sub(1)
        );
    }
    let all: Vec<usize> = (0..train.len()).collect();
    let order = train::split_train_val(&all, 0.0, seed ^ 0x5eed).0;
    Ok((train.subset(&order[..n]), train.subset(&order[n..])))
}

fn parse_strategies(names: &[String]) -> anyhow::Result<Vec<Strategy>> {
    let mut out: Vec<Strategy> = Vec::new();
    let mut repeated: Vec<Strategy> = Vec::new();
    for name in names {
        let these: Vec<Strategy> = match name.as_str() {
            "all" => Strategy::ALL.to_vec(),
            _ => vec![name.parse()?],
        };
        for s in these {
            if !out.contains(&s) {
                out.push(s);
            } else if !repeated.contains(&s) {
                repeated.push(s);
            }
        }
    }
    if !repeated.is_empty() {
        let list: Vec<String> = repeated.iter().map(|s| s.to_string()).collect();
        log::warn!(
            "--strategies names {} more than once; each runs once",
            list.join(", ")
        );
    }
    if !out.contains(&Strategy::Random) {
        out.insert(0, Strategy::Random);
    }
    Ok(out)
}

pub fn run(global: &Global, a: &RunArgs) -> anyhow::Result<()> {
    a.recipe.check()?;
    if a.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if a.time_budget.is_some_and(|s| !(s > 0.0 && s.is_finite())) {
        bail!("--time-budget must be a positive number of seconds");
    }
    check_output(&a.out.join("results.json"), "--out")?;
    let backend = open_backend(global)?;
    let settings = a.recipe.settings()?;
    let size = a.recipe.image_size;
    let labelled_folder = |dir: &Path| load_labelled(dir, size, &a.loading);

    // The data: the user's folders, or the embedded Fashion-MNIST subset. A single --train
    // folder (or the embedded one) is split by --seed, the same split for every repetition.
    let (labelled, pool, test, source) = match (&a.labelled, &a.pool, &a.train, &a.test) {
        (Some(l), Some(p), None, Some(t)) => {
            let (labelled, pool) = (labelled_folder(l)?, labelled_folder(p)?);
            warn_pool_overlap(l, p, &labelled, &pool);
            (labelled, pool, labelled_folder(t)?, format!("{}", l.display()))
        }
        (None, None, Some(tr), Some(t)) => {
            let (labelled, pool) = split_labelled(&labelled_folder(tr)?, a.initial_labelled, a.recipe.seed)?;
            (labelled, pool, labelled_folder(t)?, format!("{} (split)", tr.display()))
        }
        (None, None, None, None) => {
            let splits = fashion_mnist::embedded()?;
            let (labelled, pool) = split_labelled(&splits.train.resized(size)?, a.initial_labelled, a.recipe.seed)?;
            (labelled, pool, splits.test.resized(size)?, "embedded Fashion-MNIST subset".to_string())
        }
        _ => bail!("give --labelled, --pool and --test; or --train and --test; or none of them for the embedded dataset"),
    };

    warn_labels_without_positives(&labelled, "the labelled set");
    let strategies = parse_strategies(&a.strategies)?;
    let compute = ComputeBudget {
        seconds: a.time_budget,
        images: a.image_budget,
    };
    let base = ExperimentConfig {
        model: settings,
        pretrain: a.recipe.train_config(a.recipe.epochs),
        retrain: a.recipe.train_config(a.retrain_epochs),
        val_fraction: a.recipe.val_fraction,
        budget: a.budget,
        rounds: a.rounds,
        strategies,
        aggregate: parse_aggregate(&a.aggregate)?,
        seed: a.recipe.seed,
        infer_batch: 128,
        committee_size: a.committee_size,
        committee_epochs: a.committee_epochs,
        compute,
        evaluator: match a.evaluator {
            EvaluatorChoice::FineTune => Evaluator::FineTune,
            EvaluatorChoice::Fixed => Evaluator::Fixed,
        },
    };
    let mut rows = recipe_rows(&a.recipe, a.recipe.epochs);
    rows.insert(
        0,
        (
            "data",
            format!(
                "{source}: {} labelled, {} pool, {} test, {} labels",
                labelled.len(),
                pool.len(),
                test.len(),
                labelled.num_labels()
            ),
        ),
    );
    rows.push((
        "retrain epochs",
        format!("{} (at most; the plan may lower it)", a.retrain_epochs),
    ));
    rows.push((
        "budget",
        format!("{} labels in at most {} round(s)", a.budget, a.rounds),
    ));
    rows.push((
        "compute budget",
        match (a.time_budget, a.image_budget) {
            (None, None) => "unlimited".to_string(),
            (t, i) => format!(
                "{}{}{} per run",
                t.map_or(String::new(), |t| format!("{t}s")),
                if t.is_some() && i.is_some() {
                    " or "
                } else {
                    ""
                },
                i.map_or(String::new(), |i| format!("{i} images"))
            ),
        },
    ));
    rows.push((
        "strategies",
        base.strategies
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    ));
    rows.push((
        "committee",
        format!(
            "{} members, {} epoch(s) each on a bootstrap sample",
            a.committee_size, a.committee_epochs
        ),
    ));
    rows.push(("aggregate", a.aggregate.clone()));
    rows.push(("evaluator", base.evaluator.name().to_string()));
    rows.push((
        "repeat",
        format!(
            "{} (seeds {}..={})",
            a.repeat,
            a.recipe.seed,
            a.recipe.seed + a.repeat as u64 - 1
        ),
    ));
    rows.push(("output", a.out.display().to_string()));

    // One output folder and one checkpoint per seed. A fresh run never overwrites an
    // unfinished one; a resume continues every seed that has a checkpoint and starts the others.
    let seeds: Vec<(u64, std::path::PathBuf)> = (0..a.repeat)
        .map(|i| {
            let seed = a.recipe.seed + i as u64;
            let dir = match a.repeat {
                1 => a.out.clone(),
                _ => a.out.join(format!("seed-{seed}")),
            };
            (seed, dir)
        })
        .collect();
    let checkpoints: Vec<Checkpointing> = seeds
        .iter()
        .map(|(_, dir)| Checkpointing {
            path: dir.join("checkpoint.safetensors"),
            cadence: a.checkpoint.checkpoint_every,
            resume: a.checkpoint.resume,
        })
        .collect();
    let found: Vec<&Checkpointing> = checkpoints.iter().filter(|c| c.path.is_file()).collect();
    match (a.checkpoint.resume, found.first()) {
        (false, Some(c)) => Err(labelwise::Error::CheckpointExists {
            path: c.path.clone(),
        })?,
        (true, None) => Err(labelwise::Error::NoCheckpoint {
            path: checkpoints[0].path.clone(),
        })?,
        _ => {}
    }
    rows.push(("checkpoints", checkpoint_text(&checkpoints[0])));
    print_config(global, &backend, &rows);

    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let start = Instant::now();
    let mut reports = Vec::with_capacity(a.repeat);
    for (i, ((seed, dir), ck)) in seeds.iter().zip(&checkpoints).enumerate() {
        let seed = *seed;
        let mut cfg = base.clone();
        cfg.seed = seed;
        cfg.pretrain.seed = seed;
        cfg.retrain.seed = seed;
        if a.repeat > 1 && !global.quiet {
            println!("=== seed {seed} ({} of {})", i + 1, a.repeat);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Fail now, not after the experiment, when the results cannot be written there.
        labelwise::io::check_writable(&dir.join("results.json"))?;
        let ck = Checkpointing {
            resume: ck.resume && ck.path.is_file(),
            ..ck.clone()
        };
        let mut reporter = Reporter::new(global.quiet);
        let report = experiment::run_resumable(
            backend.clone(),
            &labelled,
            &pool,
            &test,
            &cfg,
            &ck,
            &mut |e| reporter.experiment(e),
        )?;
        println!();
        println!("{}", output::results_table(&report));
        output::note_undefined_f1(&report.baseline, &report.label_names);
        output::write_run(dir, &report)?;
        println!("wrote results.json, results.csv, learning_curve.csv/.png, pretrain_epochs.csv/.png and purchases/ to {} ({:.0}s)", dir.display(), report.seconds);
        reports.push(report);
    }

    let summary = experiment::summarize(&reports)?;
    output::write_summary(&a.out, &summary)?;
    // Everything is on disk: the checkpoints have served.
    for ck in &checkpoints {
        ck.finish()?;
    }
    // One seed's spread is all zeros: its table above says everything, so the summary table
    // (its files are still written) only prints for --repeat 2 or more.
    if reports.len() > 1 {
        println!();
        println!("{}", output::summary_table(&summary));
    }
    println!(
        "wrote summary.json, summary.csv and learning_curve_summary.csv/.png to {} ({:.0}s in all)",
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn bench(global: &Global, a: &BenchArgs) -> anyhow::Result<()> {
    if a.batch_size < 2 || a.image_size < 8 {
        bail!("--batch-size must be at least 2 and --image-size at least 8");
    }
    let backend = open_backend(global)?;
    print_config(
        global,
        &backend,
        &[
            ("image size", format!("{}px", a.image_size)),
            ("batch size", a.batch_size.to_string()),
            ("repetitions", a.reps.to_string()),
        ],
    );
    let mut doc = serde_json::json!({
        "device": backend.name(), "threads": rayon::current_num_threads(),
        "image_size": a.image_size, "batch": a.batch_size,
    });
    if a.profile {
        let p = labelwise::bench::profile(&backend, a.image_size, a.batch_size, a.reps)?;
        println!("{}", output::profile_table(&p));
        doc["profile"] = output::profile_json(&p);
        if let Some(path) = &a.json {
            labelwise::io::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        }
        return Ok(());
    }
    if !a.model_only {
        let ops = labelwise::bench::ops(&backend, a.image_size, a.batch_size, a.reps)?;
        println!("{}", output::ops_table(&ops));
        doc["ops"] = serde_json::json!(ops
            .iter()
            .map(|o| serde_json::json!({
                "op": o.op, "shape": o.shape, "median_ms": o.timing.median_ms,
                "min_ms": o.timing.min_ms, "max_ms": o.timing.max_ms, "gflops": o.gflops(),
            }))
            .collect::<Vec<_>>());
    }
    let m = labelwise::bench::model(&backend, a.image_size, a.batch_size, a.reps)?;
    println!(
        "ResNet18 + CosFace, {}px, batch {}: training {:.1} images/s (step {:.1} ms, min {:.1}, max {:.1}); inference {:.1} images/s",
        m.image_size, m.batch, m.train_images_per_s(), m.train_step.median_ms, m.train_step.min_ms, m.train_step.max_ms, m.inference_images_per_s()
    );
    doc["train_images_per_s"] = serde_json::json!(m.train_images_per_s());
    doc["inference_images_per_s"] = serde_json::json!(m.inference_images_per_s());
    doc["train_step_ms"] = serde_json::json!(m.train_step.median_ms);
    if let Some(peak) = backend.peak_device_bytes() {
        println!(
            "peak device memory: {:.1} MiB",
            peak as f64 / (1u64 << 20) as f64
        );
        doc["peak_device_bytes"] = serde_json::json!(peak);
    }
    if let Some(path) = &a.json {
        labelwise::io::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    Ok(())
}
