//! MultiSWAG (Wilson and Izmailov, 2020): several SWAG posteriors from independent runs,
//! sampled jointly as one equal-weight mixture.
//!
//! [`MultiSwag`] is the one type for it: it owns its posteriors (`MultiSwag<SwagPosterior>`) or
//! borrows them (`MultiSwag<&SwagPosterior>`, when each run keeps its own), and
//! [`crate::predictive::Predictive::multi_swag`] predicts with it.

use std::borrow::Borrow;

use super::posterior::SwagPosterior;
use crate::error::{Error, Result};

/// Several posteriors over the same layout, sampled as an equal-weight mixture.
#[derive(Debug)]
pub struct MultiSwag<P = SwagPosterior> {
    posteriors: Vec<P>,
}

impl<P: Borrow<SwagPosterior>> MultiSwag<P> {
    /// Groups posteriors fitted on the same parameter layout.
    ///
    /// Errors: no posterior (`Error::InvalidArgument` naming `posteriors`), posteriors over
    /// different layouts (`Error::LayoutMismatch` naming which).
    pub fn new(posteriors: Vec<P>) -> Result<Self> {
        let Some(first) = posteriors.first() else {
            return Err(Error::invalid(
                "posteriors",
                "MultiSWAG needs at least one posterior",
            ));
        };
        for (i, p) in posteriors.iter().enumerate().skip(1) {
            p.borrow()
                .layout()
                .check_same(first.borrow().layout())
                .map_err(|e| {
                    Error::LayoutMismatch(format!("posterior #{i} differs from posterior #0: {e}"))
                })?;
        }
        Ok(Self { posteriors })
    }

    /// The posteriors, in the order given.
    pub fn posteriors(&self) -> &[P] {
        &self.posteriors
    }

    /// Number of posteriors (at least 1).
    pub fn len(&self) -> usize {
        self.posteriors.len()
    }

    /// Always false: a MultiSwag holds at least one posterior.
    pub fn is_empty(&self) -> bool {
        self.posteriors.is_empty()
    }

    /// [`assignment`] for this group's size.
    pub fn assign(&self, num_samples: usize) -> Vec<usize> {
        assignment(self.len(), num_samples)
    }
}

/// Which posterior each of `num_samples` samples comes from: spread evenly, in blocks.
/// With `S` samples over `M` posteriors, posterior `i` gets `⌊S/M⌋` samples, plus one for
/// the first `S mod M` posteriors.
///
/// ```
/// # use candle_swag::swag::multi::assignment;
/// assert_eq!(assignment(3, 7), vec![0, 0, 0, 1, 1, 2, 2]);
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
