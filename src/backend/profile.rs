//! A backend that times every primitive of the backend it wraps: where a training step's time
//! goes, op by op, for `labelwise bench --profile` and the optimisation log.
//!
//! Each call gets two figures: wall-clock time, and the CPU time the whole process spent
//! meanwhile (all threads; Linux only). On a machine shared with other work the second is the
//! steadier one: being descheduled stretches wall time but not CPU time. On the CPU every call
//! is synchronous, so both are the op's own cost; on CUDA a call returns once the kernel is
//! queued, so the figures there are launch costs, not kernel times (use Nsight for those).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;

/// Calls and total time of one op at one shape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpStat {
    pub calls: u64,
    /// Wall-clock time inside the op.
    pub total: Duration,
    /// CPU time of the process (every thread) inside the op; zero where not measured.
    pub cpu: Duration,
}

/// CPU time consumed by the whole process so far, where the platform tells.
pub fn process_cpu_time() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Timespec {
            tv_sec: i64,
            tv_nsec: i64,
        }
        const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
        extern "C" {
            fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
        }
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec (two 64-bit fields on every 64-bit Linux
        // target, the only ones we build for); clock_gettime writes it and nothing else.
        let ok = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0;
        ok.then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Wraps a backend and records [`OpStat`]s per `(op, shape)`.
pub struct Profiled {
    inner: BackendHandle,
    stats: Mutex<HashMap<(&'static str, String), OpStat>>,
}

impl Profiled {
    pub fn new(inner: BackendHandle) -> Self {
        Profiled {
            inner,
            stats: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets everything recorded so far (to drop a warm-up step).
    pub fn reset(&self) {
        self.lock().clear();
    }

    /// Everything recorded so far, slowest first: `(op, shape, stat)`.
    pub fn report(&self) -> Vec<(&'static str, String, OpStat)> {
        let mut rows: Vec<_> = self
            .lock()
            .iter()
            .map(|((op, shape), s)| (*op, shape.clone(), *s))
            .collect();
        rows.sort_by(|a, b| b.2.total.cmp(&a.2.total).then(a.0.cmp(b.0)));
        rows
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(&'static str, String), OpStat>> {
        // A panic while the lock was held cannot leave the map inconsistent (each update is
        // one insert), so a poisoned lock is still good to read.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn timed<R>(
        &self,
        op: &'static str,
        shape: impl FnOnce() -> String,
        f: impl FnOnce() -> R,
    ) -> R {
        let cpu_start = process_cpu_time();
        let start = Instant::now();
        let out = f();
        let elapsed = start.elapsed();
        let cpu = match (cpu_start, process_cpu_time()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => Duration::ZERO,
        };
        let mut stats = self.lock();
        let s = stats.entry((op, shape())).or_default();
        s.calls += 1;
        s.total += elapsed;
        s.cpu += cpu;
        out
    }
}

fn sh(t: &Tensor) -> String {
    format!("{:?}", t.shape())
}

fn conv_shape(x: &[usize], w: &[usize], p: Conv2dParams) -> String {
    let k = w.get(1).copied().unwrap_or(0);
    let co = w.first().copied().unwrap_or(0);
    format!("{x:?} {k}x{k}/{} -> {co}", p.stride)
}

impl Backend for Profiled {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn from_host(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        self.timed(
            "from_host",
            || format!("{shape:?}"),
            || self.inner.from_host(data, shape),
        )
    }

    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        self.timed("to_host", || sh(x), || self.inner.to_host(x))
    }

    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        self.timed("zeros", || format!("{shape:?}"), || self.inner.zeros(shape))
    }

    fn peak_device_bytes(&self) -> Option<usize> {
        self.inner.peak_device_bytes()
    }

    fn non_finite_count(&self, x: &Tensor) -> Result<usize> {
        self.timed(
            "non_finite_count",
            || sh(x),
            || self.inner.non_finite_count(x),
        )
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.timed("add", || sh(a), || self.inner.add(a, b))
    }

    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        self.timed("add_assign", || sh(b), || self.inner.add_assign(a, b))
    }

    fn scale(&self, x: &Tensor, alpha: f32) -> Result<Tensor> {
        self.timed("scale", || sh(x), || self.inner.scale(x, alpha))
    }

    fn lerp_assign(&self, a: &mut Tensor, b: &Tensor, alpha: f32, weight: f32) -> Result<()> {
        self.timed(
            "lerp_assign",
            || sh(b),
            || self.inner.lerp_assign(a, b, alpha, weight),
        )
    }

    fn relu_fwd(&self, x: &Tensor) -> Result<Tensor> {
        self.timed("relu_fwd", || sh(x), || self.inner.relu_fwd(x))
    }

    fn relu_bwd(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        self.timed("relu_bwd", || sh(y), || self.inner.relu_bwd(dy, y))
    }

    fn channel_sum(&self, x: &Tensor) -> Result<Tensor> {
        self.timed("channel_sum", || sh(x), || self.inner.channel_sum(x))
    }

    fn conv2d_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        self.timed(
            "conv2d_fwd",
            || conv_shape(x.shape(), w.shape(), p),
            || self.inner.conv2d_fwd(x, w, bias, p),
        )
    }

    fn conv2d_bwd_data(
        &self,
        dy: &Tensor,
        w: &Tensor,
        x_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<Tensor> {
        self.timed(
            "conv2d_bwd_data",
            || conv_shape(x_shape, w.shape(), p),
            || self.inner.conv2d_bwd_data(dy, w, x_shape, p),
        )
    }

    fn conv2d_bwd_filter(
        &self,
        x: &Tensor,
        dy: &Tensor,
        w_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<Tensor> {
        self.timed(
            "conv2d_bwd_filter",
            || conv_shape(x.shape(), w_shape, p),
            || self.inner.conv2d_bwd_filter(x, dy, w_shape, p),
        )
    }

    fn batch_norm_fwd_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        p: BatchNormParams,
    ) -> Result<BatchNormTrainOut> {
        self.timed(
            "batch_norm_fwd_train",
            || sh(x),
            || self.inner.batch_norm_fwd_train(x, gamma, beta, p),
        )
    }

    fn batch_norm_fwd_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        p: BatchNormParams,
    ) -> Result<Tensor> {
        self.timed(
            "batch_norm_fwd_eval",
            || sh(x),
            || {
                self.inner
                    .batch_norm_fwd_eval(x, gamma, beta, running_mean, running_var, p)
            },
        )
    }

    fn batch_norm_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        p: BatchNormParams,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        self.timed(
            "batch_norm_bwd",
            || sh(x),
            || self.inner.batch_norm_bwd(dy, x, gamma, mean, var, p),
        )
    }

    fn max_pool_fwd(&self, x: &Tensor, p: PoolParams) -> Result<Tensor> {
        self.timed("max_pool_fwd", || sh(x), || self.inner.max_pool_fwd(x, p))
    }

    fn max_pool_bwd(&self, dy: &Tensor, x: &Tensor, y: &Tensor, p: PoolParams) -> Result<Tensor> {
        self.timed(
            "max_pool_bwd",
            || sh(x),
            || self.inner.max_pool_bwd(dy, x, y, p),
        )
    }

    fn avg_pool_global_fwd(&self, x: &Tensor) -> Result<Tensor> {
        self.timed(
            "avg_pool_global_fwd",
            || sh(x),
            || self.inner.avg_pool_global_fwd(x),
        )
    }

    fn avg_pool_global_bwd(&self, dy: &Tensor, x_shape: &[usize]) -> Result<Tensor> {
        self.timed(
            "avg_pool_global_bwd",
            || format!("{x_shape:?}"),
            || self.inner.avg_pool_global_bwd(dy, x_shape),
        )
    }

    fn cosface_fwd(
        &self,
        emb: &Tensor,
        weight: &Tensor,
        targets: Option<&Tensor>,
        p: CosFaceParams,
    ) -> Result<Tensor> {
        self.timed(
            "cosface_fwd",
            || sh(emb),
            || self.inner.cosface_fwd(emb, weight, targets, p),
        )
    }

    fn cosface_bwd(
        &self,
        dlogits: &Tensor,
        emb: &Tensor,
        weight: &Tensor,
        p: CosFaceParams,
    ) -> Result<(Tensor, Tensor)> {
        self.timed(
            "cosface_bwd",
            || sh(emb),
            || self.inner.cosface_bwd(dlogits, emb, weight, p),
        )
    }

    fn softmax_xent_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        self.timed(
            "softmax_xent_fwd",
            || sh(logits),
            || self.inner.softmax_xent_fwd(logits, targets),
        )
    }

    fn softmax_xent_bwd(&self, logits: &Tensor, targets: &Tensor, dloss: f32) -> Result<Tensor> {
        self.timed(
            "softmax_xent_bwd",
            || sh(logits),
            || self.inner.softmax_xent_bwd(logits, targets, dloss),
        )
    }

    fn sigmoid_xent_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        self.timed(
            "sigmoid_xent_fwd",
            || sh(logits),
            || self.inner.sigmoid_xent_fwd(logits, targets),
        )
    }

    fn sigmoid_xent_bwd(&self, logits: &Tensor, targets: &Tensor, dloss: f32) -> Result<Tensor> {
        self.timed(
            "sigmoid_xent_bwd",
            || sh(logits),
            || self.inner.sigmoid_xent_bwd(logits, targets, dloss),
        )
    }

    fn probabilities(&self, logits: &Tensor, multilabel: bool) -> Result<Tensor> {
        self.timed(
            "probabilities",
            || sh(logits),
            || self.inner.probabilities(logits, multilabel),
        )
    }

    fn adam_update(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        p: AdamParams,
    ) -> Result<()> {
        // All parameters under one key: Adam's cost is its total, not any one tensor's.
        self.timed(
            "adam_update",
            || "all parameters".to_string(),
            || self.inner.adam_update(param, grad, m, v, p),
        )
    }

    fn score_pool(&self, logits: &Tensor, p: ScoreParams) -> Result<Tensor> {
        self.timed(
            "score_pool",
            || sh(logits),
            || self.inner.score_pool(logits, p),
        )
    }

    fn top_k(&self, scores: &Tensor, k: usize) -> Result<Vec<usize>> {
        self.timed("top_k", || sh(scores), || self.inner.top_k(scores, k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_each_call_under_its_op_and_shape() -> Result<()> {
        let p = Profiled::new(Arc::new(cpu::CpuBackend));
        let a = p.from_host(&[1.0, -2.0, 3.0], &[3])?;
        let b = p.relu_fwd(&a)?;
        p.relu_fwd(&b)?;
        assert_eq!(p.to_host(&b)?, vec![1.0, 0.0, 3.0]);
        let rows = p.report();
        let relu = rows
            .iter()
            .find(|r| r.0 == "relu_fwd")
            .expect("relu recorded");
        assert_eq!((relu.1.as_str(), relu.2.calls), ("[3]", 2));
        assert_eq!(rows.iter().map(|r| r.2.calls).sum::<u64>(), 4);
        p.reset();
        assert!(p.report().is_empty());
        Ok(())
    }
}
