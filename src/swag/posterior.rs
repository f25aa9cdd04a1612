//! [`SwagPosterior`]: the SWAG moments and deviation columns, collected along the SGD trajectory.
//!
//! # State and conventions
//! - The moments are kept the way Welford's algorithm keeps them, in f32: the running mean
//!   of θ over all `n_collected` snapshots (equal weights), its f32 rounding error (a
//!   compensation term, so that the mean is known to about 2⁻⁴⁸ relative), and the centred
//!   second moment `M2 = Σ (θ − mean)²`. One step is `kernels::welford_step` (crate-internal).
//! - The diagonal variance is `max(M2 / n, clamp)` ([`SwagPosterior::variance`]): the snapshots'
//!   own variance (divisor n, as SWAG's `E[θ²] − E[θ]²`). It is never formed as
//!   `sq_mean − mean²`, which cancels catastrophically when the weights move little (late in
//!   training: at a fluctuation of 1e-4 around |w| ≤ 1, f32 `sq_mean − mean²` was off by 250%
//!   in the median). Its relative error is that of f32 rounding of the deviations (about 1e-6
//!   for 30 snapshots, whatever `|mean| / std`), the precision the f32 mean itself has.
//!   Why not f64 accumulators: Metal has no f64, and the compensated f32 scheme gives the same
//!   accuracy on every device with the same operations.
//! - `sq_mean` (`[d]`, f32) is derived, `variance + mean²`, for tools that expect it.
//! - Posteriors loaded from version-1 files carry the old `sq_mean − mean²` variance
//!   ([`SwagPosterior::variance_is_legacy`]).
//! - The deviation matrix `D` holds the newest `rows ≤ K` columns `θ − mean`, each taken right
//!   *after* the mean update (as the reference implementation does), first-in first-out.
//!   It is stored as one preallocated `[K, d]` buffer used as a ring, so collecting never
//!   re-allocates nor concatenates; [`SwagPosterior::deviations`] returns it oldest first.
//! - The moments live on the model's device as candle tensors; the columns live where the
//!   [`DeviationStore`] says (device, host memory or the posterior file on disk), encoded as
//!   [`super::store`] documents (f16 columns carry a per-column scale). On CPU, collection is
//!   one fused pass over candle's storage (an in-place op); on CUDA and Metal it is a handful
//!   of tensor ops with in-place `slice_set`. A column that is not written straight into a
//!   device buffer of f32 or bf16 (an f16 column, or a host or disk store) is first computed in
//!   f32 in a transient `[d]` buffer, then encoded and written.
//! - A snapshot holding NaN or ±Inf is refused with [`Error::NonFinite`] before anything is
//!   modified.

use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};

use super::config::SwagConfig;
use super::format::HeaderFields;
use super::kernels;
use super::store::{Columns, DeviationStore, DiskColumns};
use crate::error::{Error, Result};
use crate::layout::{ParamLayout, ParamSet};

/// A SWAG posterior over a flat parameter vector of `d` numbers.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use candle_swag::layout::ParamSet;
/// use candle_swag::swag::{SwagParams, SwagPosterior};
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let _ = candle_nn::linear(2, 1, vb.pp("fc"))?;
/// let params = ParamSet::from_varmap(&varmap)?;
/// let config = SwagParams { rank: 5, ..Default::default() }.check()?;
/// let mut posterior = SwagPosterior::new(params.layout().clone(), config, &Device::Cpu)?;
/// posterior.collect(&params)?; // once per epoch during training
/// assert_eq!(posterior.n_collected(), 1);
/// assert_eq!(posterior.rows(), 1);
/// # Ok::<(), candle_swag::Error>(())
/// ```
#[derive(Debug)]
pub struct SwagPosterior {
    pub(crate) layout: ParamLayout,
    pub(crate) config: SwagConfig,
    pub(crate) device: Device,
    /// `[3, d]` f32: rows [`ROW_MEAN`], [`ROW_COMP`] (the mean's rounding error) and
    /// [`ROW_M2`] (`Σ (θ − mean)²`).
    pub(crate) moments: Tensor,
    /// The `K` deviation columns, a ring buffer (no rows when K = 0).
    pub(crate) columns: Columns,
    /// Scale of each physical row (1 unless f16, see [`super::store`]).
    pub(crate) scales: Vec<f32>,
    /// Nonzero deviation entries stored as 0 so far (f16 and bf16 encodings).
    pub(crate) flushed: u64,
    /// Index of the first parameter in the whole model's layout (0 unless a shard): the
    /// sampler's noise is keyed by it.
    pub(crate) param_base: usize,
    pub(crate) n_collected: usize,
    /// Number of deviation rows held.
    pub(crate) rows: usize,
    /// Physical row of the oldest held deviation.
    pub(crate) oldest: usize,
    /// True when the moments come from a version-1 file (variance `sq_mean − mean²`).
    pub(crate) legacy_variance: bool,
}

/// Row of the mean in the `[3, d]` moments buffer.
pub(crate) const ROW_MEAN: usize = 0;
/// Row of the mean's compensation term.
pub(crate) const ROW_COMP: usize = 1;
/// Row of the centred second moment `M2`.
pub(crate) const ROW_M2: usize = 2;
/// Number of f32 rows of per-parameter state the posterior keeps besides its columns (mean,
/// the mean's compensation term, centred second moment): its memory is `(MOMENT_ROWS + K) · 4 · d`
/// bytes for f32 columns.
pub(crate) const MOMENT_ROWS: usize = 3;

impl SwagPosterior {
    /// An empty posterior for `layout`, with its buffers allocated on `device`.
    pub fn new(layout: ParamLayout, config: SwagConfig, device: &Device) -> Result<Self> {
        if layout.numel() == 0 {
            return Err(Error::invalid("layout", "the layout holds no parameter"));
        }
        let d = layout.numel();
        let columns = match config.store() {
            // Created below, once the posterior can describe itself in the file's header.
            DeviationStore::Disk(_) => Columns::Memory(Tensor::zeros(
                (0, d),
                config.deviation_dtype(),
                &Device::Cpu,
            )?),
            DeviationStore::Device => Columns::Memory(Tensor::zeros(
                (config.rank(), d),
                config.deviation_dtype(),
                device,
            )?),
            DeviationStore::Host => Columns::Memory(Tensor::zeros(
                (config.rank(), d),
                config.deviation_dtype(),
                &Device::Cpu,
            )?),
        };
        let mut posterior = Self::assemble(layout, config, device, columns)?;
        if let DeviationStore::Disk(path) = posterior.config.store().clone() {
            let fields = posterior.header_fields(0, 0)?;
            let dtype = posterior.config.deviation_dtype();
            posterior.columns = Columns::Disk(DiskColumns::create(&path, fields, d, dtype)?);
        }
        Ok(posterior)
    }

    /// An empty posterior (zero moments) around given columns.
    pub(crate) fn assemble(
        layout: ParamLayout,
        config: SwagConfig,
        device: &Device,
        columns: Columns,
    ) -> Result<Self> {
        let d = layout.numel();
        Ok(Self {
            layout,
            scales: vec![1.0; config.rank()],
            config,
            device: device.clone(),
            moments: Tensor::zeros((MOMENT_ROWS, d), DType::F32, device)?,
            columns,
            flushed: 0,
            param_base: 0,
            n_collected: 0,
            rows: 0,
            oldest: 0,
            legacy_variance: false,
        })
    }

    /// A posterior for a model's parameters, on their device.
    pub fn for_params(params: &ParamSet, config: SwagConfig) -> Result<Self> {
        Self::new(params.layout().clone(), config, params.device())
    }

    /// The parameter layout the posterior is defined on.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The configuration.
    pub fn config(&self) -> &SwagConfig {
        &self.config
    }

    /// The device holding the state.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of snapshots collected so far.
    pub fn n_collected(&self) -> usize {
        self.n_collected
    }

    /// K, the maximum number of deviation columns.
    pub fn rank(&self) -> usize {
        self.config.rank()
    }

    /// Number of deviation columns held now: `min(n_collected, K)`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Dimension `d` of the flat parameter vector.
    pub fn numel(&self) -> usize {
        self.layout.numel()
    }

    /// Bytes of memory (device or host) held by the posterior's buffers: the moments, and the
    /// full `K×d` deviation buffer unless it is on disk.
    pub fn state_bytes(&self) -> usize {
        let d = self.numel();
        let columns = match self.columns {
            Columns::Memory(_) => {
                self.config.rank() * d * self.config.deviation_dtype().size_in_bytes()
            }
            Columns::Disk(_) => 0,
        };
        MOMENT_ROWS * 4 * d + columns
    }

    /// Nonzero deviation entries that their encoding stored as 0, over all collected columns
    /// (always 0 for f32; see [`super::store`] for f16's threshold).
    pub fn flushed_to_zero(&self) -> u64 {
        self.flushed
    }

    /// The scale of each held column, oldest first: the deviation is the stored value times
    /// its column's scale (1 unless the columns are f16).
    pub fn deviation_scales(&self) -> Vec<f32> {
        self.physical_rows()
            .iter()
            .map(|&r| self.scales[r])
            .collect()
    }

    /// The running mean of θ (`[d]`, f32): the SWA solution.
    pub fn mean(&self) -> Result<Tensor> {
        // A copy: views of the internal buffers must not escape (they would alias the state).
        Ok(self.moments.get(ROW_MEAN)?.copy()?)
    }

    /// The mean of θ² (`[d]`, f32), derived as `variance + mean²` (for tools that expect it;
    /// subtracting `mean²` back from it in f32 loses the variance's digits).
    pub fn sq_mean(&self) -> Result<Tensor> {
        Ok(self.variance(0.0)?.add(&self.mean()?.sqr()?)?)
    }

    /// The centred second moment `M2 = Σ (θ − mean)²` (`[d]`, f32).
    pub fn m2(&self) -> Result<Tensor> {
        Ok(self.moments.get(ROW_M2)?.copy()?)
    }

    /// The compensation term of the mean (`[d]`, f32): the mean is `mean + mean_compensation`.
    pub fn mean_compensation(&self) -> Result<Tensor> {
        Ok(self.moments.get(ROW_COMP)?.copy()?)
    }

    /// The diagonal variance `max(M2 · (1/n), clamp)` (`[d]`, f32), the one sampling and
    /// [`SwagPosterior::log_prob`] use: the same two f32 operations as
    /// the CPU kernel's formula, with `1/n` and `clamp` rounded to f32. Equal to `clamp`
    /// before any snapshot.
    pub fn variance(&self, clamp: f64) -> Result<Tensor> {
        let inv_n = kernels::inv_count(self.n_collected) as f64;
        let clamp = clamp as f32 as f64;
        Ok(self
            .moments
            .get(ROW_M2)?
            .affine(inv_n, 0.0)?
            .maximum(clamp)?)
    }

    /// True when the moments were converted from a version-1 file: its variance is the old
    /// `sq_mean − mean²` in f32 (rounded into `M2`), with the cancellation error that formula
    /// has; snapshots collected afterwards are added exactly.
    pub fn variance_is_legacy(&self) -> bool {
        self.legacy_variance
    }

    /// The header fields describing this posterior in its file ([`super::file`]), with the
    /// given oldest stored row and checksum.
    pub(crate) fn header_fields(&self, oldest: usize, checksum: u64) -> Result<HeaderFields> {
        Ok(HeaderFields {
            layout: serde_json::to_string(self.layout.entries())?,
            n_collected: self.n_collected as u64,
            rank: self.config.rank(),
            rows: self.rows,
            dtype: self.config.deviation_dtype(),
            scales: Vec::new(),
            oldest,
            legacy: self.legacy_variance,
            collecting: false,
            param_base: self.param_base,
            checksum,
        })
    }

    /// Physical buffer rows of the held deviations, oldest first.
    pub(crate) fn physical_rows(&self) -> Vec<usize> {
        (0..self.rows)
            .map(|k| (self.oldest + k) % self.config.rank().max(1))
            .collect()
    }

    /// The held deviation columns as stored: a `[rows, d]` tensor, oldest first, in the
    /// storage dtype (multiply row `i` by [`deviation_scales`](Self::deviation_scales)`[i]`
    /// for the deviation itself). On the columns' device; a disk store reads them all into
    /// host memory.
    pub fn deviations(&self) -> Result<Tensor> {
        let (dt, d) = (self.config.deviation_dtype(), self.numel());
        let buffer = match &self.columns {
            Columns::Memory(t) => t,
            Columns::Disk(_) => {
                let mut bytes = Vec::new();
                for r in self.physical_rows() {
                    bytes.extend(self.stored_row_bytes(r)?);
                }
                return Ok(Tensor::from_raw_buffer(
                    &bytes,
                    dt,
                    &[self.rows, d],
                    &Device::Cpu,
                )?);
            }
        };
        if self.rows == 0 {
            return Ok(Tensor::zeros((0, d), dt, buffer.device())?);
        }
        if self.oldest == 0 {
            return Ok(buffer.narrow(0, 0, self.rows)?.copy()?);
        }
        // Full ring wrapped around: oldest..K then 0..oldest.
        let k = self.config.rank();
        let tail = buffer.narrow(0, self.oldest, k - self.oldest)?;
        let head = buffer.narrow(0, 0, self.oldest)?;
        Ok(Tensor::cat(&[&tail, &head], 0)?)
    }

    /// The L2 norm of each held deviation column (stored value times scale), oldest first,
    /// computed in f64 while the columns are streamed in chunks (a disk store is never read
    /// whole).
    pub fn deviation_norms(&self) -> Result<Vec<f64>> {
        let (d, rows) = (self.numel(), self.physical_rows());
        let mut sums = vec![0f64; rows.len()];
        for lo in (0..d).step_by(super::store::CHUNK) {
            let len = super::store::CHUNK.min(d - lo);
            let chunk = self
                .columns
                .chunk(&rows, lo, len, self.config.deviation_dtype())?
                .to_device(&Device::Cpu)?;
            for (k, sum) in sums.iter_mut().enumerate() {
                let row: Vec<f32> = chunk.get(k)?.to_vec1()?;
                *sum += row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
            }
        }
        Ok(sums
            .iter()
            .zip(&rows)
            .map(|(s, &r)| s.sqrt() * self.scales[r] as f64)
            .collect())
    }

    /// Refuses a tensor (`what`) on another device than the posterior's, by name: candle would
    /// otherwise fail deep inside an op.
    pub(crate) fn check_device(&self, device: &Device, what: &str) -> Result<()> {
        if self.device.same_device(device) {
            return Ok(());
        }
        Err(Error::invalid(
            what,
            format!(
                "on {:?}, but the posterior is on {:?}; create the posterior on the model's \
                 device (SwagPosterior::for_params) or move the tensor",
                device.location(),
                self.device.location()
            ),
        ))
    }

    /// Refuses operations that need at least one collected snapshot.
    pub(crate) fn require_snapshots(&self) -> Result<()> {
        if self.n_collected == 0 {
            return Err(Error::NotEnoughSnapshots(
                "no snapshot collected yet; call collect() first".into(),
            ));
        }
        Ok(())
    }
}

/// The contiguous f32 slice of a CPU tensor's storage.
pub(crate) fn cpu_f32_slice<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let (lo, hi) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::invalid("tensor", "expected a contiguous tensor"))?;
    match storage {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(&v[lo..hi]),
        _ => Err(Error::invalid("tensor", "expected an f32 CPU tensor")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn theta(seed: u32, d: usize) -> Tensor {
        let v: Vec<f32> = (0..d)
            .map(|i| (i as f32 * 0.37 + seed as f32 * 1.3).sin() * 2.0)
            .collect();
        Tensor::from_vec(v, d, &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_and_tensor_op_paths_agree() -> anyhow::Result<()> {
        use crate::SwagParams;
        let layout = ParamLayout::new(vec![("a".into(), vec![7]), ("b".into(), vec![2, 3])])?;
        // The snapshots are computed once and fed to every posterior: `sin` may round
        // differently where the compiler inlines or vectorises it, which would make the
        // posteriors' inputs, not their arithmetic, differ.
        let thetas: Vec<Tensor> = (0..5).map(|s| theta(s, 13)).collect();
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let cfg = SwagParams {
                rank: 3,
                deviation_dtype: dt,
                ..Default::default()
            }
            .check()?;
            let mut fused = SwagPosterior::new(layout.clone(), cfg.clone(), &Device::Cpu)?;
            let mut ops = SwagPosterior::new(layout.clone(), cfg, &Device::Cpu)?;
            for t in &thetas {
                fused.collect_flat(t)?;
                ops.collect_with_tensor_ops(t)?;
            }
            let host = |t: Tensor| -> Vec<f32> {
                let t = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
                t.to_vec1::<f32>().unwrap()
            };
            let diff = |a: Tensor, b: Tensor| -> f32 {
                let (a, b) = (host(a), host(b));
                a.iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max)
            };
            let same_as_fused = |other: &SwagPosterior| {
                assert_eq!(
                    host(fused.moments.copy().unwrap()),
                    host(other.moments.copy().unwrap())
                );
                assert_eq!(
                    diff(fused.deviations().unwrap(), other.deviations().unwrap()),
                    0.0
                );
                assert_eq!(fused.deviation_scales(), other.deviation_scales());
            };
            // Same f32 operations in the same order: bit for bit.
            same_as_fused(&ops);
            // Host memory (what a GPU model uses): the tensor-op path copies each column to
            // the host and encodes it there; the same bits.
            let cfg = SwagParams {
                store: DeviationStore::Host,
                ..fused.config().clone().into()
            }
            .check()?;
            let mut host_ops = SwagPosterior::new(layout.clone(), cfg, &Device::Cpu)?;
            for t in &thetas {
                host_ops.collect_with_tensor_ops(t)?;
            }
            same_as_fused(&host_ops);
            assert_eq!(fused.rows(), 3);
            assert_eq!(ops.rows(), 3);
        }
        Ok(())
    }
}
