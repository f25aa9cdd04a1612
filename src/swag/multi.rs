//! MultiSWAG (Wilson and Izmailov, 2020): several SWAG posteriors from independent runs,
//! sampled jointly as one mixture.

use rand::Rng;

use super::posterior::SwagPosterior;
use super::sample::SampleOptions;
use crate::error::{Error, Result};
use crate::layout::ParamSet;

/// Several posteriors over the same layout, sampled as an equal-weight mixture.
#[derive(Debug)]
pub struct MultiSwag {
    posteriors: Vec<SwagPosterior>,
}

impl MultiSwag {
    /// Groups posteriors fitted on the same parameter layout.
    pub fn new(posteriors: Vec<SwagPosterior>) -> Result<Self> {
        let Some(first) = posteriors.first() else {
            return Err(Error::invalid(
                "posteriors",
                "MultiSWAG needs at least one posterior",
            ));
        };
        for (i, p) in posteriors.iter().enumerate().skip(1) {
            p.layout().check_same(first.layout()).map_err(|e| {
                Error::LayoutMismatch(format!("posterior #{i} differs from posterior #0: {e}"))
            })?;
        }
        Ok(Self { posteriors })
    }

    /// The posteriors, in the order given.
    pub fn posteriors(&self) -> &[SwagPosterior] {
        &self.posteriors
    }

    /// Number of posteriors.
    pub fn len(&self) -> usize {
        self.posteriors.len()
    }

    /// Always false: a MultiSwag holds at least one posterior.
    pub fn is_empty(&self) -> bool {
        self.posteriors.is_empty()
    }

    /// Which posterior each of `num_samples` samples comes from: spread evenly, in blocks.
    /// With `S` samples over `M` posteriors, posterior `i` gets `⌊S/M⌋` samples, plus one for
    /// the first `S mod M` posteriors.
    ///
    /// ```
    /// # use candle_swag::swag::MultiSwag;
    /// assert_eq!(MultiSwag::assignment(3, 7), vec![0, 0, 0, 1, 1, 2, 2]);
    /// ```
    pub fn assignment(num_posteriors: usize, num_samples: usize) -> Vec<usize> {
        if num_posteriors == 0 {
            return Vec::new();
        }
        let base = num_samples / num_posteriors;
        let extra = num_samples % num_posteriors;
        (0..num_posteriors)
            .flat_map(|i| std::iter::repeat_n(i, base + usize::from(i < extra)))
            .collect()
    }

    /// [`MultiSwag::assignment`] for this group's size.
    pub fn assign(&self, num_samples: usize) -> Vec<usize> {
        Self::assignment(self.len(), num_samples)
    }

    /// Draws from posterior `which` into `params`.
    pub fn sample_into(
        &self,
        which: usize,
        params: &ParamSet,
        opts: &SampleOptions,
        rng: &mut impl Rng,
    ) -> Result<()> {
        let p = self.posteriors.get(which).ok_or_else(|| {
            Error::invalid(
                "which",
                format!("posterior #{which} asked, {} held", self.posteriors.len()),
            )
        })?;
        p.sample_into(params, opts, rng)
    }
}
