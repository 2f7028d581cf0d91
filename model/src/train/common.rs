//! What every training loop shares: the optimiser and its learning rate, the EMA of the
//! weights, optimiser state that survives a restart, and the feeder thread that prepares batch
//! `s + 1` while step `s` runs.

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, Optimizer};
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the learning rate goes after the warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrSchedule {
    /// The peak rate to the end.
    Constant,
    /// Cosine from the peak down to a tenth of it at the last step.
    Cosine,
}

/// The optimiser's settings and learning-rate curve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Optimisation {
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up.
    pub warmup: usize,
    pub schedule: LrSchedule,
    /// Gradient-norm clip per parameter tensor; 0 turns it off.
    pub grad_clip: f32,
    pub weight_decay: f32,
    /// Decay of the EMA of the weights (e.g. 0.999); `None`: no EMA.
    pub ema_decay: Option<f64>,
}

impl Optimisation {
    /// The learning rate of `step` (0-based) of a run of `steps`.
    pub fn lr_at(&self, step: usize, steps: usize) -> f64 {
        let warm = if self.warmup == 0 { 1.0 } else { ((step + 1) as f64 / self.warmup as f64).min(1.0) };
        let decay = match self.schedule {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine => {
                let span = steps.saturating_sub(self.warmup).max(1) as f64;
                let p = (step.saturating_sub(self.warmup) as f64 / span).min(1.0);
                0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        };
        self.lr * warm * decay
    }

    /// AdamW with decoupled weight decay and per-tensor norm clipping.
    pub fn adamw(&self) -> AdamWConfig {
        let adamw = AdamWConfig::new().with_weight_decay(self.weight_decay);
        if self.grad_clip > 0.0 {
            adamw.with_grad_clipping(Some(burn::optim::grad_clipping::GradientClippingConfig::Norm(self.grad_clip)))
        } else {
            adamw
        }
    }

    /// The EMA decay to use at `step`: a short memory early on (warm-up of the EMA).
    pub fn ema_decay_at(&self, step: usize) -> Option<f64> {
        self.ema_decay.map(|d| d.min((1.0 + step as f64) / (10.0 + step as f64)))
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(d) = self.ema_decay
            && !(0.0..1.0).contains(&d)
        {
            anyhow::bail!("the EMA decay must be in [0, 1)");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            anyhow::bail!("the learning rate must be positive");
        }
        Ok(())
    }
}

/// AdamW over module `M`.
pub type Optim<M, B> = OptimizerAdaptor<AdamW, M, B>;

/// Initialises every lazy parameter in place, in visit order; collects their ids.
struct Ids(Vec<ParamId>);

impl<B: Backend> ModuleVisitor<B> for Ids {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
        self.0.push(param.id);
    }
}

/// The ids of every float parameter in visit order; initialises lazy parameters on the way,
/// so calling it right after `init` fixes the weights from the current seed.
pub fn param_ids<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamId> {
    let mut ids = Ids(Vec::new());
    module.visit(&mut ids);
    ids.0
}

/// The parameters, flattened, in visit order.
struct Flatten<B: Backend>(Vec<Tensor<B, 1>>);

impl<B: Backend> ModuleVisitor<B> for Flatten<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.0.push(t.reshape([n]));
    }
}

/// `ema ← decay · ema + (1 − decay) · θ`, parameter by parameter in visit order.
struct EmaUpdate<B: Backend> {
    current: std::vec::IntoIter<Tensor<B, 1>>,
    decay: f64,
}

impl<B: Backend> ModuleMapper<B> for EmaUpdate<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let theta = self.current.next().expect("the EMA has the model's parameters");
        let decay = self.decay;
        param.map(|ema| {
            let shape = ema.shape();
            ema.mul_scalar(decay) + theta.reshape(shape).mul_scalar(1.0 - decay)
        })
    }
}

/// One EMA update of `ema` towards `model` (both of the same architecture).
pub fn ema_update<B: Backend, M: Module<B>>(ema: M, model: &M, decay: f64) -> M {
    let mut flat = Flatten(Vec::new());
    model.visit(&mut flat);
    ema.map(&mut EmaUpdate { current: flat.0.into_iter(), decay })
}

fn recorder() -> BinFileRecorder<FullPrecisionSettings> {
    BinFileRecorder::<FullPrecisionSettings>::new()
}

/// Saves the optimizer's state (`path` + `.bin`) with parameter ids replaced by their visit
/// index, so it loads into a model built afresh (whose ids differ).
pub fn save_optim<B: AutodiffBackend, M: AutodiffModule<B>>(optim: &Optim<M, B>, model: &M, path: &Path) -> Result<()> {
    let index: std::collections::HashMap<ParamId, u64> =
        param_ids(model).into_iter().enumerate().map(|(i, id)| (id, i as u64)).collect();
    let record: <Optim<M, B> as Optimizer<M, B>>::Record = optim
        .to_record()
        .into_iter()
        .map(|(id, r)| (ParamId::from(*index.get(&id).expect("optimizer state of a model parameter")), r))
        .collect();
    recorder().record(record, path.to_path_buf()).with_context(|| format!("writing {}", path.display()))
}

/// Loads what [`save_optim`] wrote (give the path with `.bin`) into the optimiser of `model`.
pub fn load_optim<B: AutodiffBackend, M: AutodiffModule<B>>(
    optim: Optim<M, B>,
    model: &M,
    path: &Path,
    device: &B::Device,
) -> Result<Optim<M, B>> {
    let ids = param_ids(model);
    let record: <Optim<M, B> as Optimizer<M, B>>::Record =
        recorder().load(path.to_path_buf(), device).with_context(|| format!("reading {}", path.display()))?;
    let mut remapped = <Optim<M, B> as Optimizer<M, B>>::Record::default();
    for (i, r) in record {
        let id =
            ids.get(i.val() as usize).with_context(|| format!("{}: state of an unknown parameter", path.display()))?;
        remapped.insert(*id, r);
    }
    Ok(optim.load_record(remapped))
}

/// Prepares batches on a background thread, two ahead of the training step: `make(step)` must
/// be a pure function of the step, so a resumed run sees the batches a straight one would.
///
/// It also counts whether it keeps up ([`Feeder::take_stats`]): on a GPU the data, rendered on
/// the CPU, can be what limits a run, and the log has to say so.
pub struct Feeder<T> {
    rx: Option<mpsc::Receiver<(usize, T)>>,
    thread: Option<JoinHandle<()>>,
    /// Batches made and nanoseconds spent making them, by the thread.
    made: Arc<(AtomicU64, AtomicU64)>,
    /// What [`Feeder::take_stats`] last read of `made`, and the time `next` has waited since.
    taken: (u64, u64),
    waited: Duration,
}

/// How a [`Feeder`] kept up over a stretch of training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeedStats {
    /// Batches the thread finished in the stretch.
    pub batches: u64,
    /// Time the thread spent making them.
    pub making: Duration,
    /// Time the training loop spent waiting for a batch.
    pub waited: Duration,
}

impl FeedStats {
    /// For a log line: what a batch costs to make and the share of `elapsed` the loop waited.
    pub fn describe(&self, elapsed: Duration) -> String {
        let each = self.making.as_secs_f64() / self.batches.max(1) as f64;
        let share = 100.0 * self.waited.as_secs_f64() / elapsed.as_secs_f64().max(1e-9);
        format!("data {each:.2} s a batch, waited for {share:.0} % of the time")
    }
}

impl<T: Send + 'static> Feeder<T> {
    pub fn start(steps: std::ops::Range<usize>, make: impl FnMut(usize) -> T + Send + 'static) -> Feeder<T> {
        let (tx, rx) = mpsc::sync_channel::<(usize, T)>(2);
        let mut make = make;
        let made = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let counts = made.clone();
        let thread = std::thread::spawn(move || {
            for step in steps {
                let started = Instant::now();
                let batch = make(step);
                counts.1.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                counts.0.fetch_add(1, Ordering::Relaxed);
                if tx.send((step, batch)).is_err() {
                    break;
                }
            }
        });
        Feeder { rx: Some(rx), thread: Some(thread), made, taken: (0, 0), waited: Duration::ZERO }
    }

    /// The batch of `step` (batches come in order).
    pub fn next(&mut self, step: usize) -> Result<T> {
        let started = Instant::now();
        let (s, batch) =
            self.rx.as_ref().expect("feeder open").recv().context("the batch feeder stopped (did it panic?)")?;
        self.waited += started.elapsed();
        debug_assert_eq!(s, step);
        Ok(batch)
    }

    /// How it kept up since the last call (or the start).
    pub fn take_stats(&mut self) -> FeedStats {
        let now = (self.made.0.load(Ordering::Relaxed), self.made.1.load(Ordering::Relaxed));
        let stats = FeedStats {
            batches: now.0 - self.taken.0,
            making: Duration::from_nanos(now.1 - self.taken.1),
            waited: std::mem::take(&mut self.waited),
        };
        self.taken = now;
        stats
    }

    /// Stops the thread and reports whether it panicked.
    pub fn finish(mut self) -> Result<()> {
        self.rx.take();
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow::anyhow!("the batch feeder panicked")),
            None => Ok(()),
        }
    }
}

impl<T> Drop for Feeder<T> {
    fn drop(&mut self) {
        // Closing the channel ends the thread at its next send.
        self.rx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feeder_counts_who_waits_for_whom() {
        let pause = Duration::from_millis(20);
        // A slow feeder: the loop waits for every batch, at least as long as each takes.
        let mut feeder = Feeder::start(0..5, move |step| {
            std::thread::sleep(pause);
            step
        });
        let started = Instant::now();
        for step in 0..5 {
            assert_eq!(feeder.next(step).unwrap(), step);
        }
        let slow = feeder.take_stats();
        assert_eq!(slow.batches, 5);
        assert!(slow.making >= 5 * pause, "{slow:?}");
        assert!(slow.waited >= 4 * pause, "{slow:?}");
        assert!(slow.waited <= started.elapsed(), "{slow:?}");
        feeder.finish().unwrap();
        // A fast feeder and a slow loop: after the first batch the next is always ready.
        let mut feeder = Feeder::start(0..5, |step| step);
        feeder.next(0).unwrap();
        let _ = feeder.take_stats();
        for step in 1..5 {
            std::thread::sleep(pause);
            assert_eq!(feeder.next(step).unwrap(), step);
        }
        let fast = feeder.take_stats();
        assert!(fast.waited < 2 * pause, "{fast:?}");
        assert!(fast.making < pause, "{fast:?}");
        // Nothing happened since: an empty stretch.
        assert_eq!(feeder.take_stats(), FeedStats { batches: 0, making: Duration::ZERO, waited: Duration::ZERO });
        feeder.finish().unwrap();
        let stats = FeedStats { batches: 4, making: Duration::from_secs(2), waited: Duration::from_millis(500) };
        assert_eq!(stats.describe(Duration::from_secs(1)), "data 0.50 s a batch, waited for 50 % of the time");
    }
}
