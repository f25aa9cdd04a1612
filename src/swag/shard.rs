//! A posterior split by parameter ranges: one shard per device or process.
//!
//! A model split across GPUs (one process per GPU, as in candle's NCCL example) has each rank
//! own some of its parameters. Each rank keeps a [`SwagPosterior`] over a contiguous range of
//! the whole model's layout ([`SwagPosterior::shard`]): it collects its own weights and samples
//! its own slice, alone. Nothing is exchanged:
//! - the low-rank noise `z2` (one number per held column) comes from the seed alone, and every
//!   shard holds the same number of columns, since all collect at the same steps;
//! - the diagonal noise `z1` is keyed by the parameter's index in the *whole* layout (the
//!   shard's `param_base` plus its local index) and the block within the parameter, so it is
//!   the same numbers whether drawn whole or shard by shard;
//! - every coordinate's arithmetic reads only that coordinate's moments and columns.
//!
//! So concatenating the shards' samples gives the whole posterior's sample bit for bit. With
//! f16 columns a shard's per-column scale may be smaller than the whole column's (its largest
//! entry is), but both are powers of two, and scaling by a power of two is exact: the bits are
//! still equal, except for entries that fall in f16's subnormal range (below `2⁻²⁹` of the
//! whole column's largest) in one and not the other.
//!
//! # Files
//! Each shard saves to its own posterior file ([`super::file`], with its `param_base`), and a
//! small JSON index ties them together ([`ShardIndex`]): the whole layout and, per shard, its
//! file (relative to the index) and parameter range. [`ShardSet::load`] reads the set and
//! refuses a missing, overlapping or inconsistent shard, naming it.

use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::SampleConfig;
use super::config::SwagConfig;
use super::posterior::SwagPosterior;
use crate::error::{Error, Result};
use crate::layout::{ParamEntry, ParamLayout};

/// Value of the index's `format` field.
pub(crate) const INDEX_FORMAT: &str = "candle-swag-shards";

/// The parameters `range` of `layout`, as a layout of their own (offsets from 0).
pub(crate) fn sub_layout(layout: &ParamLayout, range: Range<usize>) -> Result<ParamLayout> {
    if range.start >= range.end || range.end > layout.len() {
        return Err(Error::invalid(
            "params",
            format!(
                "range {}..{} is empty or outside the layout's {} parameters",
                range.start,
                range.end,
                layout.len()
            ),
        ));
    }
    ParamLayout::new(
        layout.entries()[range]
            .iter()
            .map(|e| (e.name.clone(), e.shape.clone()))
            .collect(),
    )
}

impl SwagPosterior {
    /// An empty posterior over the parameters `params` (a range of indices) of the whole
    /// model's `layout`: a shard. Its samples are the whole posterior's samples of those
    /// parameters, bit for bit (module docs).
    pub fn shard(
        layout: &ParamLayout,
        params: Range<usize>,
        config: SwagConfig,
        device: &Device,
    ) -> Result<Self> {
        let first = params.start;
        let mut p = Self::new(sub_layout(layout, params)?, config, device)?;
        p.param_base = first;
        Ok(p)
    }

    /// Index, in the whole model's layout, of this posterior's first parameter (0 unless it
    /// is a shard).
    pub fn param_base(&self) -> usize {
        self.param_base
    }
}

/// One shard of an index: its file and parameter range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The shard's posterior file, relative to the index's directory.
    pub file: PathBuf,
    /// First parameter (index in the whole layout).
    pub first_param: usize,
    /// Number of parameters.
    pub params: usize,
}

/// The JSON index of a shard set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// `INDEX_FORMAT`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// The whole model's layout.
    pub layout: Vec<ParamEntry>,
    /// The shards, in any order.
    pub shards: Vec<ShardEntry>,
}

impl ShardIndex {
    /// An index of `shards` over the whole `layout`.
    pub fn new(layout: &ParamLayout, shards: Vec<ShardEntry>) -> Self {
        Self {
            format: INDEX_FORMAT.into(),
            version: 1,
            layout: layout.entries().to_vec(),
            shards,
        }
    }

    /// Writes the index atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        crate::crash_safe::write_file_atomic(path, json.as_bytes())
    }

    /// Reads an index and checks that its shards cover every parameter exactly once; the
    /// error names the missing or overlapping range.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |r: String| Error::bad_file(path, r);
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let index: ShardIndex =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a shard index: {e}")))?;
        if index.format != INDEX_FORMAT || index.version != 1 {
            return Err(bad(format!(
                "format `{}` version {}, expected `{INDEX_FORMAT}` version 1",
                index.format, index.version
            )));
        }
        let n = index.layout.len();
        let mut shards: Vec<&ShardEntry> = index.shards.iter().collect();
        shards.sort_by_key(|s| s.first_param);
        let mut next = 0;
        for s in &shards {
            if s.params == 0 {
                return Err(bad(format!(
                    "shard `{}` covers no parameter",
                    s.file.display()
                )));
            }
            if s.first_param > next {
                // `next` may already be past the layout (the shards before covered it all).
                return Err(bad(match index.layout.get(next) {
                    Some(e) => format!(
                        "no shard covers parameters {next}..{} (`{}` onwards): a shard is missing",
                        s.first_param, e.name
                    ),
                    None => format!(
                        "shard `{}` starts at parameter {}, past the layout's {n} parameters",
                        s.file.display(),
                        s.first_param
                    ),
                }));
            }
            if s.first_param < next {
                let name = index
                    .layout
                    .get(s.first_param)
                    .map(|e| format!(" (`{}`)", e.name))
                    .unwrap_or_default();
                return Err(bad(format!(
                    "shard `{}` overlaps the one before it at parameter {}{name}",
                    s.file.display(),
                    s.first_param,
                )));
            }
            next = s.first_param.checked_add(s.params).ok_or_else(|| {
                bad(format!(
                    "shard `{}` claims {} parameters from parameter {}: past any layout",
                    s.file.display(),
                    s.params,
                    s.first_param
                ))
            })?;
        }
        if next != n {
            return Err(bad(if next < n {
                format!(
                    "no shard covers parameters {next}..{n} (`{}` onwards): a shard is missing",
                    index.layout[next].name
                )
            } else {
                format!("the shards cover {next} parameters, the layout has {n}")
            }));
        }
        Ok(index)
    }
}

/// A loaded shard set: the whole layout and each shard's posterior, in parameter order.
#[derive(Debug)]
pub struct ShardSet {
    layout: ParamLayout,
    shards: Vec<(ShardEntry, SwagPosterior)>,
}

impl ShardSet {
    /// Loads the index at `path` and every shard it names onto `device`, checking each
    /// shard's layout, range and counts against the index and the others.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let index = ShardIndex::load(path)?;
        let layout = ParamLayout::new(
            index
                .layout
                .iter()
                .map(|e| (e.name.clone(), e.shape.clone()))
                .collect(),
        )
        .map_err(|e| Error::bad_file(path, format!("layout: {e}")))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut entries = index.shards.clone();
        entries.sort_by_key(|s| s.first_param);
        let mut shards = Vec::with_capacity(entries.len());
        for e in entries {
            let file = dir.join(&e.file);
            let p = SwagPosterior::load(&file, device)?;
            let want = sub_layout(&layout, e.first_param..e.first_param + e.params)?;
            p.layout().check_same(&want).map_err(|err| {
                Error::bad_file(&file, format!("not the shard the index names: {err}"))
            })?;
            if p.param_base() != e.first_param {
                return Err(Error::bad_file(
                    &file,
                    format!(
                        "shard starts at parameter {} but the index says {}",
                        p.param_base(),
                        e.first_param
                    ),
                ));
            }
            if let Some((_, first)) = shards.first() {
                let first: &SwagPosterior = first;
                if (p.n_collected(), p.rows(), p.rank())
                    != (first.n_collected(), first.rows(), first.rank())
                {
                    return Err(Error::bad_file(
                        &file,
                        format!(
                            "{} snapshots and {} of K = {} columns, but the first shard has {}, {} and {}: shards must collect together",
                            p.n_collected(),
                            p.rows(),
                            p.rank(),
                            first.n_collected(),
                            first.rows(),
                            first.rank()
                        ),
                    ));
                }
            }
            shards.push((e, p));
        }
        Ok(Self { layout, shards })
    }

    /// The whole model's layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The shards in parameter order: index entry and posterior.
    pub fn shards(&self) -> &[(ShardEntry, SwagPosterior)] {
        &self.shards
    }

    /// The whole flat `[d]` sample for `seed`: the shards' samples concatenated.
    pub fn sample_flat_seeded(&self, seed: u64, opts: &SampleConfig) -> Result<Tensor> {
        let parts = self
            .shards
            .iter()
            .map(|(_, p)| p.sample_flat_seeded(seed, opts))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }
}
