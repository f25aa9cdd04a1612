//! The user's own CSV data end to end, as `swag fit` and `swag predict` run it: read and
//! standardise the training rows, train the MLP with SWAG collection, write the run directory;
//! then read new rows, run the Bayesian model average, and write one prediction row per input
//! row.

mod fit;
pub(crate) mod predict;
pub use fit::{
    default_lr, default_weight_decay, fit_csv, fit_dataset, CsvFitConfig, CsvFitParams, DatasetFit,
    FitSummary, NoiseChoice, WeightDecay, NOISE_CV_FOLDS, TUNE_VALIDATION_FRACTION,
    WEIGHT_DECAY_GRID,
};
pub use predict::{predict_csv, CsvPredictConfig, CsvPredictParams, PredictionTable};
