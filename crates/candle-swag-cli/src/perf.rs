//! Speed and memory of the SWAG primitives, measured against the machine's own floor.
//!
//! SWAG's primitives are memory-bound: collecting must read θ, read and write the two moments
//! and write one deviation column (`24·d` bytes in f32); a low-rank sample must read the moments
//! and `K` deviation rows and write θ (`(K + 3)·4·d` bytes) and draw `d + K` normals. So each
//! operation is timed next to, **in the same run**, a plain parallel memory copy that moves the
//! same number of bytes (half read, half written) and, for sampling, the drawing of the same
//! normals with the same generator and threads. The ratio of the two is what this module
//! reports: it is stable on a noisy shared machine where absolute times are not.
//!
//! Memory: [`measure`] also records the process's peak resident memory (`VmHWM` on Linux)
//! around the posterior's creation and use, to check the posterior costs no more than its
//! state `(K + 3)·4·d` bytes (the mean, its compensation and `M2`, and the `K×d` deviation
//! buffer) plus one `d`-sized buffer.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use candle_swag::error::{Error, Result};
use candle_swag::layout::ParamSet;
use candle_swag::swag::normals::{fill_normals, NOISE_BLOCK, Z1_STREAM};
use candle_swag::swag::{SampleConfig, SampleParams, SwagParams, SwagPosterior};

/// One measured operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpTiming {
    /// `collect`, `sample_lowrank`, `sample_diag`, `flatten` or `write_back`.
    pub op: String,
    /// d, the number of parameters.
    pub params: usize,
    /// K, the rank.
    pub rank: usize,
    /// Median wall time of the operation, seconds.
    pub seconds: f64,
    /// The floor: median time of a copy moving the same bytes, plus (sampling) the median time
    /// to draw the same normals.
    pub floor_seconds: f64,
    /// `seconds / floor_seconds`.
    pub ratio_to_floor: f64,
    /// Bytes the operation must move (read + written).
    pub bytes: usize,
    /// Median time of the plain copy alone.
    pub copy_seconds: f64,
    /// Median time of drawing the normals alone (0 for non-sampling ops).
    pub normals_seconds: f64,
    /// Peak resident memory of the process after the operation (VmHWM), bytes; 0 where unknown.
    pub peak_rss_bytes: u64,
    /// Threads in rayon's pool.
    pub threads: usize,
    /// The device measured: `cpu`, `cuda:N` or `metal:N` ([`device_name`]).
    pub device: String,
}

/// Memory cost of the posterior, measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryReport {
    /// d.
    pub params: usize,
    /// K.
    pub rank: usize,
    /// Peak resident memory gained from creating, filling and sampling the posterior, bytes.
    pub posterior_peak_extra_bytes: u64,
    /// The allowance `(K + 3)·4·d + 4·d` bytes.
    pub allowance_bytes: u64,
}

/// Reads a field of /proc/self/status in bytes (Linux); 0 elsewhere.
fn proc_status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Peak resident set size of this process so far, bytes (0 where unknown).
pub fn peak_rss_bytes() -> u64 {
    proc_status_bytes("VmHWM:")
}

/// Current resident set size, bytes (0 where unknown).
pub fn rss_bytes() -> u64 {
    proc_status_bytes("VmRSS:")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn time_median(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let mut ts = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    Ok(median(ts))
}

/// Median time of a parallel copy that moves `bytes` bytes (half read, half written).
pub fn copy_seconds(bytes: usize, repeats: usize) -> f64 {
    let n = (bytes / 8).max(1); // f32 elements per side
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    let t = time_median(repeats, || {
        dst.par_chunks_mut(NOISE_BLOCK)
            .zip(src.par_chunks(NOISE_BLOCK))
            .for_each(|(d, s)| d.copy_from_slice(s));
        Ok(())
    });
    std::hint::black_box(&dst);
    t.unwrap_or(f64::NAN)
}

/// Median time to draw `d` normals with the sampler's generator, block streams and threads
/// (into per-thread scratch, as the sampler does).
pub fn normals_seconds(d: usize, repeats: usize) -> f64 {
    let blocks = d.div_ceil(NOISE_BLOCK);
    let t = time_median(repeats, || {
        let s: f32 = (0..blocks)
            .into_par_iter()
            .map_init(
                || vec![0f32; NOISE_BLOCK],
                |buf, b| {
                    let len = NOISE_BLOCK.min(d - b * NOISE_BLOCK);
                    fill_normals(1, Z1_STREAM, 0, (b * NOISE_BLOCK) as u64, &mut buf[..len]);
                    buf[0]
                },
            )
            .sum();
        std::hint::black_box(s);
        Ok(())
    });
    t.unwrap_or(f64::NAN)
}

/// `cpu`, `cuda:N` or `metal:N`: how [`candle_swag::device::DeviceRequest`] spells the device.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Median time of a device-to-device copy that moves `bytes` bytes (half read, half written),
/// into a preallocated buffer, synchronised: the floor of a GPU operation.
pub fn device_copy_seconds(bytes: usize, repeats: usize, device: &Device) -> Result<f64> {
    let n = (bytes / 8).max(1);
    // On CUDA, the driver's own device-to-device copy (cuMemcpyDtoD): the fastest way the GPU
    // has to move these bytes.
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        let src = dev.alloc_zeros::<f32>(n)?;
        let mut dst = dev.alloc_zeros::<f32>(n)?;
        return time_median(repeats, || {
            dev.memcpy_dtod(&src, &mut dst)?;
            Ok(device.synchronize()?)
        });
    }
    let src = Tensor::ones(n, DType::F32, device)?;
    let dst = Tensor::zeros(n, DType::F32, device)?;
    time_median(repeats, || {
        dst.slice_set(&src, 0, 0)?;
        Ok(device.synchronize()?)
    })
}

/// A model-like parameter set of `d` f32 numbers in three tensors (weights, bias, head).
fn synthetic_params(d: usize, rng: &mut StdRng, device: &Device) -> Result<ParamSet> {
    if d < 3 {
        return Err(Error::invalid("params", "need at least 3 parameters"));
    }
    let sizes = [d - d / 10 - 1, 1, d / 10];
    let mut named = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let t = Tensor::from_vec(v, n, device)?;
        named.push((format!("p{i}"), Var::from_tensor(&t)?));
    }
    ParamSet::from_named_vars(named)
}

/// Measures collect, low-rank sample, diagonal sample, flatten and write-back at `d`
/// parameters and rank `k` on `device`, each against its floor; `repeats` timed runs per op
/// (median), after one warm-up run each.
///
/// Floors: on the CPU, a parallel copy of the same bytes plus, for sampling, drawing the same
/// normals with the sampler's generator and threads; on a GPU, a device-to-device copy of the
/// same bytes (the kernels draw their noise in the same pass, so it is not added). Bytes moved:
/// collect reads θ and the three moment rows and writes the moments and one column
/// (`(28 + column bytes)·d`); a sample reads the mean, `M2` and the held columns and writes θ.
/// GPU timings synchronise the device after each run.
pub fn measure(
    d: usize,
    k: usize,
    repeats: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Vec<OpTiming>, MemoryReport)> {
    if repeats == 0 {
        return Err(Error::invalid("repeats", "must be at least 1"));
    }
    let threads = rayon::current_num_threads();
    let mut rng = StdRng::seed_from_u64(0);
    let params = synthetic_params(d, &mut rng, device)?;

    // Two weight vectors to alternate between snapshots, allocated before the baseline so the
    // measurement sees the posterior alone; rayon's pool is started before it too.
    let theta_a = params.flatten()?;
    let theta_b = theta_a.affine(1.0, 0.01)?;
    rayon::broadcast(|_| ());

    // Memory first, before any copy buffer exists.
    let rss_before = rss_bytes();
    let mut posterior = SwagPosterior::for_params(
        &params,
        SwagParams {
            rank: k,
            deviation_dtype: dtype,
            ..Default::default()
        }
        .check()?,
    )?;
    for i in 0..=k {
        params.write_flat(if i % 2 == 0 { &theta_a } else { &theta_b })?;
        posterior.collect(&params)?;
    }
    posterior.sample_into(&params, &SampleConfig::default(), &mut rng)?;
    posterior.sample_into(
        &params,
        &SampleParams {
            scale: 0.5,
            diag_only: true,
            ..Default::default()
        }
        .check()?,
        &mut rng,
    )?;
    let memory = MemoryReport {
        params: d,
        rank: k,
        posterior_peak_extra_bytes: peak_rss_bytes().saturating_sub(rss_before),
        // The posterior's own state (moments and K f32 columns) plus one f32 vector.
        allowance_bytes: (posterior.state_bytes() + 4 * d) as u64,
    };

    let dev_bytes = dtype.size_in_bytes();
    let mut out = Vec::new();
    let gpu = !device.is_cpu();
    let mut record = |op: &str, seconds: f64, bytes: usize, normals: f64| -> Result<()> {
        let copy = if gpu {
            device_copy_seconds(bytes, repeats, device)?
        } else {
            copy_seconds(bytes, repeats)
        };
        let floor = copy + normals;
        out.push(OpTiming {
            op: op.to_string(),
            params: d,
            rank: k,
            seconds,
            floor_seconds: floor,
            ratio_to_floor: seconds / floor,
            bytes,
            copy_seconds: copy,
            normals_seconds: normals,
            peak_rss_bytes: peak_rss_bytes(),
            threads,
            device: device_name(device),
        });
        Ok(())
    };
    let sync = || -> Result<()> { Ok(device.synchronize()?) };

    let t = time_median(repeats, || {
        posterior.collect(&params)?;
        sync()
    })?;
    record("collect", t, (28 + dev_bytes) * d, 0.0)?;

    let normals = if gpu {
        0.0
    } else {
        normals_seconds(d, repeats)
    };
    let opts = SampleConfig::default();
    let t = time_median(repeats, || {
        posterior.sample_into(&params, &opts, &mut rng)?;
        sync()
    })?;
    record(
        "sample_lowrank",
        t,
        12 * d + posterior.rows() * dev_bytes * d,
        normals,
    )?;

    let opts = SampleParams {
        scale: 0.5,
        diag_only: true,
        ..Default::default()
    }
    .check()?;
    let t = time_median(repeats, || {
        posterior.sample_into(&params, &opts, &mut rng)?;
        sync()
    })?;
    record("sample_diag", t, 12 * d, normals)?;

    let flat = params.flatten()?;
    let t = time_median(repeats, || {
        params.flatten_into(&flat)?;
        sync()
    })?;
    record("flatten", t, 8 * d, 0.0)?;

    let t = time_median(repeats, || {
        params.write_flat(&flat)?;
        sync()
    })?;
    record("write_back", t, 8 * d, 0.0)?;

    Ok((out, memory))
}

/// `swag bench --store disk`: a posterior whose columns live in its file, measured end to end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskReport {
    /// d.
    pub params: usize,
    /// K.
    pub rank: usize,
    /// Storage dtype of the columns (`F32`, `BF16`, `F16`).
    pub dtype: String,
    /// Snapshot files collected.
    pub snapshots: usize,
    /// Bytes of deviation columns in the posterior file.
    pub column_bytes: u64,
    /// Seconds to collect every snapshot file (read, update, write the column) and save.
    pub collect_seconds: f64,
    /// Peak resident memory while collecting and saving, bytes.
    pub collect_peak_rss_bytes: u64,
    /// Seconds to open the posterior on disk (the checksum reads every column once).
    pub open_seconds: f64,
    /// Median seconds of one low-rank sample streamed from the file.
    pub sample_seconds: f64,
    /// Peak resident memory while opening and sampling, bytes.
    pub sample_peak_rss_bytes: u64,
    /// The floor: median seconds of one sequential read of the columns' bytes of the file,
    /// timed in the same run.
    pub floor_seconds: f64,
    /// `sample_seconds / floor_seconds`.
    pub sample_ratio_to_floor: f64,
}

/// Resets the process's peak resident memory (Linux `clear_refs`), so that `VmHWM` measures
/// one phase; returns false where that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Collects `k + 1` synthetic snapshot files of `d` parameters into a disk posterior under
/// `dir`, then samples from it; each phase's time and peak memory, and the floor.
pub fn measure_disk(
    d: usize,
    k: usize,
    repeats: usize,
    dtype: DType,
    dir: &std::path::Path,
) -> Result<DiskReport> {
    use candle_swag::layout::ParamLayout;
    use candle_swag::swag::checkpoint::{read_flat, write_flat};
    use candle_swag::swag::DeviationStore;
    use std::io::Read;

    if repeats == 0 {
        return Err(Error::invalid("repeats", "must be at least 1"));
    }
    if d < 10 {
        return Err(Error::invalid("params", "need at least 10 parameters"));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Ten tensors, as a model has layers; the snapshots move around a fixed point.
    let sizes: Vec<usize> = (0..10).map(|i| d / 10 + usize::from(i < d % 10)).collect();
    let layout = ParamLayout::new(
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (format!("layer{i}.weight"), vec![n]))
            .collect(),
    )?;
    let n_snapshots = k + 1;
    let mut snapshots = Vec::with_capacity(n_snapshots);
    {
        let base: Vec<f32> = (0..d).map(|i| ((i as f32) * 1e-3).sin()).collect();
        for s in 0..n_snapshots {
            let mut theta = vec![0f32; d];
            theta
                .par_chunks_mut(NOISE_BLOCK)
                .zip(base.par_chunks(NOISE_BLOCK))
                .enumerate()
                .for_each(|(b, (t, x))| {
                    fill_normals(s as u64, Z1_STREAM, 7, (b * NOISE_BLOCK) as u64, t);
                    t.iter_mut().zip(x).for_each(|(t, &x)| *t = x + 1e-2 * *t);
                });
            let path = dir.join(format!("snapshot{s:03}.safetensors"));
            write_flat(&path, &layout, &theta)?;
            snapshots.push(path);
        }
    }
    let posterior_path = dir.join("posterior.safetensors");

    reset_peak_rss();
    let t = Instant::now();
    {
        let config = SwagParams {
            rank: k,
            deviation_dtype: dtype,
            store: DeviationStore::Disk(posterior_path.clone()),
        }
        .check()?;
        let mut posterior = SwagPosterior::new(layout.clone(), config, &Device::Cpu)?;
        for path in &snapshots {
            let flat = read_flat(path, &layout)?;
            posterior.collect_flat(&Tensor::from_vec(flat, d, &Device::Cpu)?)?;
        }
        posterior.save(&posterior_path)?;
    }
    let collect_seconds = t.elapsed().as_secs_f64();
    let collect_peak = peak_rss_bytes();
    for path in &snapshots {
        let _ = std::fs::remove_file(path);
    }

    let file_len = std::fs::metadata(&posterior_path)
        .map_err(|e| Error::io(&posterior_path, e))?
        .len();
    let column_bytes = (k * d * dtype.size_in_bytes()) as u64;
    // The columns are the file's last bytes: read them once, sequentially, 8 MiB at a time.
    let floor = time_median(repeats, || {
        let mut f =
            std::fs::File::open(&posterior_path).map_err(|e| Error::io(&posterior_path, e))?;
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(file_len - column_bytes))
            .map_err(|e| Error::io(&posterior_path, e))?;
        let mut buf = vec![0u8; 8 << 20];
        let mut sum = 0u8;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| Error::io(&posterior_path, e))?;
            if n == 0 {
                break;
            }
            sum ^= buf[n - 1];
        }
        std::hint::black_box(sum);
        Ok(())
    })?;

    reset_peak_rss();
    let t = Instant::now();
    let posterior = SwagPosterior::load_with_store(
        &posterior_path,
        &Device::Cpu,
        DeviationStore::Disk(posterior_path.clone()),
    )?;
    let open_seconds = t.elapsed().as_secs_f64();
    let opts = SampleConfig::default();
    let mut seed = 0u64;
    let sample_seconds = time_median(repeats, || {
        seed += 1;
        std::hint::black_box(posterior.sample_flat_seeded(seed, &opts)?);
        Ok(())
    })?;
    let sample_peak = peak_rss_bytes();
    drop(posterior);
    let _ = std::fs::remove_file(&posterior_path);
    Ok(DiskReport {
        params: d,
        rank: k,
        dtype: format!("{dtype:?}"),
        snapshots: n_snapshots,
        column_bytes,
        collect_seconds,
        collect_peak_rss_bytes: collect_peak,
        open_seconds,
        sample_seconds,
        sample_peak_rss_bytes: sample_peak,
        floor_seconds: floor,
        sample_ratio_to_floor: sample_seconds / floor,
    })
}
