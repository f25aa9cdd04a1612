//! Sampling on the CPU: the fused kernel over columns held in memory, or streamed from the
//! posterior file (the first full sample of a file opened on disk also completes its
//! checksum). The conventions are those of [`super::sample`].

use candle_core::{CpuStorage, DType, InplaceOp3, Layout, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::config::SampleConfig;
use super::format::{chunk_digests, BufferDigest, CHECKSUM_CHUNK};
use super::kernels::{self, DeviationElem, NoiseSource, SampleCoefficients};
use super::normals;
use super::posterior::SwagPosterior;
use super::store::{decode_into, Columns, DiskColumns};
use crate::error::{Error, Result};

impl SwagPosterior {
    /// The fused kernel over a flat host vector, for a posterior whose moments are on the CPU:
    /// the columns are read from the buffer in place (memory) or [`CHUNK`] coordinates at a
    /// time (disk; `K · CHUNK` numbers in memory). Stored values are widened to f32 exactly and
    /// the kernel's arithmetic is the same, so every store gives the same bits.
    pub(super) fn sample_host(&self, seed: u64, opts: &SampleConfig) -> Result<Vec<f32>> {
        let (coef, z2) = self.kernel_inputs(seed, opts);
        let rows = if z2.is_empty() {
            Vec::new()
        } else {
            self.physical_rows()
        };
        let d = self.numel();
        let mut out = vec![0f32; d];
        let (m_storage, m_layout) = self.moments.storage_and_layout();
        let moments = super::posterior::cpu_f32_slice(&m_storage, m_layout)?;
        let m2_row = &moments[super::posterior::ROW_M2 * d..(super::posterior::ROW_M2 + 1) * d];
        if let Columns::Disk(disk) = &self.columns {
            if disk.is_unverified() && rows.len() == self.rows && self.rows > 0 {
                let args = KernelArgs {
                    rows: &rows,
                    z2: &z2,
                    coef,
                    noise: NoiseSource {
                        seed,
                        param: 0,
                        first: 0,
                    },
                };
                let mean = &moments[..d];
                self.sample_disk_verifying(disk, &mut out, mean, m2_row, args)?;
                return Ok(out);
            }
            disk.verify()?;
        }
        for (p, entry) in self.layout.entries().iter().enumerate() {
            let range = entry.offset..entry.offset + entry.numel();
            let noise = NoiseSource {
                seed,
                param: (self.param_base + p) as u32,
                first: 0,
            };
            let param = ParamSlices {
                out: &mut out[range.clone()],
                mean: &moments[range.clone()],
                m2: &m2_row[range.clone()],
            };
            match &self.columns {
                Columns::Memory(buffer) => sample_from_memory(
                    param,
                    buffer,
                    entry.offset,
                    KernelArgs {
                        rows: &rows,
                        z2: &z2,
                        coef,
                        noise,
                    },
                )?,
                Columns::Disk(disk) => {
                    // One noise block per task, in parallel: each task reads its rows' slice
                    // (K · 64 KiB for f32) with positioned reads and runs the kernel on it while
                    // it is in cache; the other threads read meanwhile.
                    let dtype = self.config.deviation_dtype();
                    let block = normals::NOISE_BLOCK;
                    param
                        .out
                        .par_chunks_mut(block)
                        .zip(param.mean.par_chunks(block))
                        .zip(param.m2.par_chunks(block))
                        .enumerate()
                        .try_for_each_init(
                            || (Vec::new(), Vec::new()),
                            |(bytes, dev), (b, ((out, mean), m2))| -> Result<()> {
                                let len = out.len();
                                if !rows.is_empty() {
                                    disk.read_chunk_into(
                                        &rows,
                                        entry.offset + b * block,
                                        len,
                                        dtype,
                                        bytes,
                                        dev,
                                    )?;
                                }
                                let dev_rows: Vec<&[f32]> = dev.chunks(len).collect();
                                kernels::sample(
                                    out,
                                    kernels::SampleSource {
                                        mean,
                                        m2,
                                        dev_rows: &dev_rows,
                                        z2: &z2,
                                        coef,
                                        noise: NoiseSource {
                                            first: (b * block) as u64,
                                            ..noise
                                        },
                                    },
                                );
                                Ok(())
                            },
                        )?;
                }
            }
        }
        Ok(out)
    }

    /// The first full sample of columns opened on disk: the file is walked in windows of one
    /// checksum chunk of every row (1 MiB of each row's bytes, in parallel over windows), each
    /// window's rows are digested and decoded, and the kernel samples the window's coordinates,
    /// parameter by parameter (the noise is keyed by parameter and coordinate, and each
    /// coordinate's arithmetic is that of every other path, so the bits are the same). The
    /// digests complete the file's checksum; on a mismatch the sample is discarded.
    fn sample_disk_verifying(
        &self,
        disk: &DiskColumns,
        out: &mut [f32],
        mean: &[f32],
        m2: &[f32],
        args: KernelArgs<'_>,
    ) -> Result<()> {
        let dtype = self.config.deviation_dtype();
        let es = dtype.size_in_bytes();
        let width = CHECKSUM_CHUNK / es;
        let entries = self.layout.entries();
        let window_digests: Vec<Vec<u64>> = out
            .par_chunks_mut(width)
            .enumerate()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(bytes, dev): &mut (Vec<u8>, Vec<f32>), (w, out)| -> Result<Vec<u64>> {
                    let (lo, len) = (w * width, out.len());
                    let digests = if dtype == DType::F32 && cfg!(target_endian = "little") {
                        // Stored f32 are the host's own: read straight into the rows, then
                        // digest them four at a time.
                        dev.resize(self.rows * len, 0.0);
                        for (r, row) in dev.chunks_exact_mut(len).enumerate() {
                            disk.read_at(r, lo, bytemuck::cast_slice_mut(row))?;
                        }
                        let rows: Vec<&[u8]> =
                            dev.chunks_exact(len).map(bytemuck::cast_slice).collect();
                        chunk_digests(&rows)
                    } else {
                        bytes.resize(len * es, 0);
                        dev.clear();
                        let mut digests = Vec::with_capacity(self.rows);
                        for r in 0..self.rows {
                            digests.push(disk.read_window(r, lo, bytes)?);
                            decode_into(bytes, dtype, dev);
                        }
                        digests
                    };
                    let physical: Vec<&[f32]> = dev.chunks(len).collect();
                    let first = entries.partition_point(|e| e.offset + e.numel() <= lo);
                    for (p, entry) in entries.iter().enumerate().skip(first) {
                        if entry.offset >= lo + len {
                            break;
                        }
                        let a = entry.offset.max(lo);
                        let b = (entry.offset + entry.numel()).min(lo + len);
                        let dev_rows: Vec<&[f32]> = args
                            .rows
                            .iter()
                            .map(|&r| &physical[r][a - lo..b - lo])
                            .collect();
                        kernels::sample(
                            &mut out[a - lo..b - lo],
                            kernels::SampleSource {
                                mean: &mean[a..b],
                                m2: &m2[a..b],
                                dev_rows: &dev_rows,
                                z2: args.z2,
                                coef: args.coef,
                                noise: NoiseSource {
                                    seed: args.noise.seed,
                                    param: (self.param_base + p) as u32,
                                    first: (a - entry.offset) as u64,
                                },
                            },
                        );
                    }
                    Ok(digests)
                },
            )
            .collect::<Result<_>>()?;
        let row_digests = (0..self.rows)
            .map(|r| BufferDigest {
                len: self.numel() * es,
                chunks: window_digests.iter().map(|w| w[r]).collect(),
            })
            .collect();
        disk.verify_with(row_digests)
    }
}

/// One parameter's output, mean and `M2` slices.
struct ParamSlices<'a> {
    out: &'a mut [f32],
    mean: &'a [f32],
    m2: &'a [f32],
}

/// What the fused kernel takes for every parameter of one sample.
#[derive(Clone, Copy)]
struct KernelArgs<'a> {
    /// Physical rows, oldest first (empty for a diagonal sample).
    rows: &'a [usize],
    /// Low-rank weights, scales folded in.
    z2: &'a [f32],
    coef: SampleCoefficients,
    noise: NoiseSource,
}

/// The fused kernel for one parameter (at `offset` in the flat vector) reading its rows from
/// an in-memory CPU buffer.
fn sample_from_memory(
    param: ParamSlices<'_>,
    buffer: &Tensor,
    offset: usize,
    args: KernelArgs<'_>,
) -> Result<()> {
    fn run<E: DeviationElem>(
        param: ParamSlices<'_>,
        dev: &[E],
        d: usize,
        offset: usize,
        args: KernelArgs<'_>,
    ) {
        let len = param.out.len();
        let dev_rows: Vec<&[E]> = args
            .rows
            .iter()
            .map(|&r| &dev[r * d + offset..r * d + offset + len])
            .collect();
        kernels::sample(
            param.out,
            kernels::SampleSource {
                mean: param.mean,
                m2: param.m2,
                dev_rows: &dev_rows,
                z2: args.z2,
                coef: args.coef,
                noise: args.noise,
            },
        );
    }
    let d = buffer.dim(1)?;
    let (storage, layout) = buffer.storage_and_layout();
    let range = kernels::contiguous_range(layout, "deviations")?;
    match &*storage {
        candle_core::Storage::Cpu(CpuStorage::F32(v)) => run(param, &v[range], d, offset, args),
        candle_core::Storage::Cpu(CpuStorage::BF16(v)) => run(param, &v[range], d, offset, args),
        candle_core::Storage::Cpu(CpuStorage::F16(v)) => run(param, &v[range], d, offset, args),
        _ => {
            return Err(Error::invalid(
                "deviations",
                "expected an f32, bf16 or f16 buffer in host memory",
            ))
        }
    }
    Ok(())
}

/// Writes one parameter's sample into its Var's storage.
pub(super) struct SampleOp<'a> {
    pub(super) offset: usize,
    pub(super) d: usize,
    pub(super) rows: &'a [usize],
    pub(super) z2: &'a [f32],
    pub(super) coef: SampleCoefficients,
    pub(super) noise: NoiseSource,
}

impl SampleOp<'_> {
    fn run<E: DeviationElem>(
        &self,
        out: &mut [f32],
        moments: &[f32],
        dev: &[E],
    ) -> candle_core::Result<()> {
        let len = out.len();
        let mean = &moments[self.offset..self.offset + len];
        let m2_lo = super::posterior::ROW_M2 * self.d + self.offset;
        let m2 = &moments[m2_lo..m2_lo + len];
        let dev_rows: Vec<&[E]> = self
            .rows
            .iter()
            .map(|&r| &dev[r * self.d + self.offset..r * self.d + self.offset + len])
            .collect();
        let src = kernels::SampleSource {
            mean,
            m2,
            dev_rows: &dev_rows,
            z2: self.z2,
            coef: self.coef,
            noise: self.noise,
        };
        kernels::sample(out, src);
        Ok(())
    }
}

impl InplaceOp3 for SampleOp<'_> {
    fn name(&self) -> &'static str {
        "swag-sample"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        moments: &CpuStorage,
        ml: &Layout,
        dev: &CpuStorage,
        devl: &Layout,
    ) -> candle_core::Result<()> {
        let msg = |m: &str| candle_core::Error::Msg(m.to_string());
        let out_range = kernels::contiguous_range(dl, "parameter")?;
        let m_range = kernels::contiguous_range(ml, "moments")?;
        let d_range = kernels::contiguous_range(devl, "deviations")?;
        let (CpuStorage::F32(out), CpuStorage::F32(m)) = (dst, moments) else {
            return Err(msg("parameter and moments must be f32"));
        };
        let out = &mut out[out_range];
        let m = &m[m_range];
        match dev {
            CpuStorage::F32(v) => self.run(out, m, &v[d_range]),
            CpuStorage::BF16(v) => self.run::<bf16>(out, m, &v[d_range]),
            CpuStorage::F16(v) => self.run::<f16>(out, m, &v[d_range]),
            _ => Err(msg("deviation buffer has an unsupported dtype")),
        }
    }
}
