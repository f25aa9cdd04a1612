//! The user's own CSV data end to end, as `swag fit` and `swag predict` run it: read and
//! standardise the training rows, train the MLP with SWAG collection, write the run directory;
//! then read new rows, run the Bayesian model average, and write one prediction row per input
//! row.

mod fit;
pub(crate) mod predict;
pub use fit::{
    default_lr, fit_csv, fit_dataset, CsvFitConfig, CsvFitParams, DatasetFit, FitSummary,
    NoiseChoice, NOISE_CV_FOLDS, TUNE_VALIDATION_FRACTION,
};
pub use predict::{predict_csv, CsvPredictConfig, CsvPredictParams, PredictionTable};
