//! The five methods the recipes, the demo and the report compare, each as a
//! [`Predictive`] over the same model, so that comparing them is
//! one loop.

use serde::{Deserialize, Serialize};

use super::run::{swag_at_scale, Fitted};
use candle_swag::error::Result;
use candle_swag::predictive::{BmaConfig, BmaParams, Predictive};
use candle_swag::swag::{MultiSwag, SampleParams, SwagPosterior};

/// The five methods compared by the examples, the demo and the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The last SGD iterate.
    Sgd,
    /// The SWA mean (the posterior mean, scale 0).
    Swa,
    /// SWAG with the diagonal covariance only.
    SwagDiag,
    /// SWAG: diagonal plus low-rank covariance.
    Swag,
    /// SWAG samples spread over several independent runs' posteriors.
    MultiSwag,
}

impl Method {
    /// All methods, in the order of the tables.
    pub const ALL: [Method; 5] = [
        Method::Sgd,
        Method::Swa,
        Method::SwagDiag,
        Method::Swag,
        Method::MultiSwag,
    ];

    /// The machine name (`sgd`, `swa`, `swag_diag`, `swag`, `multiswag`).
    pub fn key(&self) -> &'static str {
        match self {
            Method::Sgd => "sgd",
            Method::Swa => "swa",
            Method::SwagDiag => "swag_diag",
            Method::Swag => "swag",
            Method::MultiSwag => "multiswag",
        }
    }

    /// The display name (`SGD`, `SWA`, `SWAG-diag`, `SWAG`, `MultiSWAG`).
    pub fn display(&self) -> &'static str {
        match self {
            Method::Sgd => "SGD",
            Method::Swa => "SWA",
            Method::SwagDiag => "SWAG-diag",
            Method::Swag => "SWAG",
            Method::MultiSwag => "MultiSWAG",
        }
    }

    /// The predictive of this method: SGD and SWA from run 0 (`multi`'s first posterior is run
    /// 0's), SWAG and SWAG-diagonal (`bma` with `diag_only` set) from run 0's posterior,
    /// MultiSWAG over every posterior of `multi`. A scale of 0 makes SWAG and SWAG-diagonal the
    /// SWA mean (one pass); MultiSWAG at scale 0 is the ensemble of the runs' SWA means.
    pub fn predictive<'a>(
        &self,
        run0: &'a Fitted,
        multi: &'a MultiSwag<&'a SwagPosterior>,
        bma: BmaConfig,
    ) -> Result<Predictive<'a>> {
        let params = &run0.params;
        match self {
            Method::Sgd => Predictive::point(params, &run0.sgd_weights),
            Method::Swa => Predictive::swa(params, &run0.posterior),
            Method::Swag => swag_at_scale(params, &run0.posterior, bma),
            Method::SwagDiag => {
                let diag = BmaParams {
                    sample: SampleParams {
                        diag_only: true,
                        ..bma.sample().into()
                    },
                    ..bma.into()
                }
                .check()?;
                swag_at_scale(params, &run0.posterior, diag)
            }
            Method::MultiSwag => Predictive::multi_swag(params, multi, bma),
        }
    }
}
