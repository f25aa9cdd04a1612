//! Data: a strict CSV loader, standardisation with training statistics, the bundled datasets
//! (digits, diabetes), a 1-D regression toy with a gap, and MNIST images (IDX files, bilinear
//! rotation).
//!
//! Flow: [`load_csv`] → [`TabularData`] (raw units) → [`Standardizer::fit`] on the training rows
//! only → [`Dataset`] (candle tensors) for training and prediction.

pub mod bundled;
pub mod csv;
pub mod idx;
pub mod image;
pub mod toy;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use csv::{
    encode_features, input_names, load_csv, load_table, CsvConfig, CsvParams, FeatureColumn, Split,
    TabularData, Targets, TaskKind,
};

use candle_swag::error::{Error, Result};

/// Per-column affine standardisation `z = (x − mean) / std`, fitted on training rows only.
///
/// `std` is the population standard deviation (divisor n, ddof 0), as the reference
/// preprocessing uses. A constant column (std = 0 over the training rows) gets std 1, so it maps
/// to 0 instead of dividing by zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Mean of each column over the fitting rows.
    pub mean: Vec<f64>,
    /// Population standard deviation of each column (1 for constant columns).
    pub std: Vec<f64>,
}

impl Standardizer {
    /// Fits on the rows `rows` of a row-major matrix with `cols` columns.
    pub fn fit(values: &[f64], cols: usize, rows: &[usize]) -> Result<Self> {
        if cols == 0 || rows.is_empty() {
            return Err(Error::invalid(
                "rows",
                "standardisation needs at least one row and one column",
            ));
        }
        let n = rows.len() as f64;
        let mut mean = vec![0.0; cols];
        for &r in rows {
            for (m, v) in mean.iter_mut().zip(&values[r * cols..(r + 1) * cols]) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; cols];
        for &r in rows {
            for ((s, v), m) in var
                .iter_mut()
                .zip(&values[r * cols..(r + 1) * cols])
                .zip(&mean)
            {
                *s += (v - m) * (v - m);
            }
        }
        let std = var
            .into_iter()
            .map(|s| {
                let sd = (s / n).sqrt();
                if sd > 0.0 {
                    sd
                } else {
                    1.0
                }
            })
            .collect();
        Ok(Self { mean, std })
    }

    /// The identity transform on `cols` columns (mean 0, std 1).
    pub fn identity(cols: usize) -> Self {
        Self {
            mean: vec![0.0; cols],
            std: vec![1.0; cols],
        }
    }

    /// A transform dividing every column by `divisor` (mean 0), e.g. 16 for digit pixels.
    pub fn scale_only(cols: usize, divisor: f64) -> Self {
        Self {
            mean: vec![0.0; cols],
            std: vec![divisor; cols],
        }
    }

    /// Number of columns this transform expects.
    pub fn num_columns(&self) -> usize {
        self.mean.len()
    }

    /// Standardises the given rows of a row-major matrix into f32 (row-major, `rows.len() × cols`).
    pub fn transform_rows(&self, values: &[f64], rows: &[usize]) -> Vec<f32> {
        let cols = self.mean.len();
        let mut out = Vec::with_capacity(rows.len() * cols);
        for &r in rows {
            for ((v, m), s) in values[r * cols..(r + 1) * cols]
                .iter()
                .zip(&self.mean)
                .zip(&self.std)
            {
                out.push(((v - m) / s) as f32);
            }
        }
        out
    }

    /// Maps one standardised value of column `col` back to the original units.
    pub fn inverse(&self, col: usize, z: f64) -> f64 {
        z * self.std[col] + self.mean[col]
    }
}

/// Model inputs and targets as candle tensors, ready for training or prediction.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Inputs `[n, d]`, f32.
    pub features: Tensor,
    /// Targets: `[n]` u32 class indices for classification, `[n]` f32 (standardised) values for
    /// regression.
    pub targets: Tensor,
}

impl Dataset {
    /// Builds a dataset from row-major f32 features and class indices.
    pub fn classification(
        features: Vec<f32>,
        cols: usize,
        classes: Vec<u32>,
        device: &Device,
    ) -> Result<Self> {
        let n = classes.len();
        check_len(features.len(), n, cols)?;
        Ok(Self {
            features: Tensor::from_vec(features, (n, cols), device)?,
            targets: Tensor::from_vec(classes, n, device)?,
        })
    }

    /// Builds a dataset from row-major f32 features and real targets.
    pub fn regression(
        features: Vec<f32>,
        cols: usize,
        values: Vec<f32>,
        device: &Device,
    ) -> Result<Self> {
        let n = values.len();
        check_len(features.len(), n, cols)?;
        Ok(Self {
            features: Tensor::from_vec(features, (n, cols), device)?,
            targets: Tensor::from_vec(values, n, device)?,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.features.dims().first().copied().unwrap_or(0)
    }

    /// True when the dataset has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of input features.
    pub fn num_features(&self) -> usize {
        self.features.dims().get(1).copied().unwrap_or(0)
    }

    /// The rows at `indices` (in that order) as a new dataset.
    pub fn select(&self, indices: &[usize]) -> Result<Self> {
        let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, indices.len(), self.features.device())?;
        Ok(Self {
            features: self.features.index_select(&idx, 0)?,
            targets: self.targets.index_select(&idx, 0)?,
        })
    }
}

fn check_len(got: usize, n: usize, cols: usize) -> Result<()> {
    if got != n * cols {
        return Err(Error::invalid(
            "features",
            format!("{got} values for {n} rows of {cols} columns"),
        ));
    }
    Ok(())
}

/// How features are scaled before they reach the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FeatureScaling {
    /// Standardise each column with the training rows' mean and population std.
    Standardize,
    /// Divide every column by a constant (mean 0), e.g. 16 for 4-bit digit pixels.
    Divide(f64),
}

/// A table turned into train and test [`Dataset`]s, with the transforms needed to read
/// predictions back in the file's units.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Classification or regression.
    pub task: TaskKind,
    /// Feature column names, in file order.
    pub feature_names: Vec<String>,
    /// Class label per class index (classification only).
    pub class_labels: Option<Vec<String>>,
    /// Feature transform fitted on the training rows.
    pub feature_scaler: Standardizer,
    /// Target transform (one column) fitted on the training rows (regression only).
    pub target_scaler: Option<Standardizer>,
    /// The training rows.
    pub train: Dataset,
    /// The test rows (possibly empty when the table has no split column).
    pub test: Dataset,
    /// Row indices in the original table of the training rows.
    pub train_rows: Vec<usize>,
    /// Row indices in the original table of the test rows.
    pub test_rows: Vec<usize>,
}

impl Prepared {
    /// Number of classes (1 for regression: the model's output width).
    pub fn output_dim(&self) -> usize {
        self.class_labels.as_ref().map_or(1, |l| l.len())
    }

    /// The training targets of a regression task in the file's units.
    pub fn targets_in_original_units(&self, ds: &Dataset) -> Result<Vec<f64>> {
        let z: Vec<f32> = ds.targets.to_vec1()?;
        let scaler = self.target_scaler.as_ref().ok_or_else(|| {
            Error::invalid("task", "original-unit targets exist only for regression")
        })?;
        Ok(z.into_iter().map(|v| scaler.inverse(0, v as f64)).collect())
    }
}

/// Splits, scales and converts a table to tensors. Statistics (feature and target) come from the
/// training rows only, so nothing about the test rows leaks into training.
pub fn prepare(data: &TabularData, scaling: FeatureScaling, device: &Device) -> Result<Prepared> {
    let cols = data.num_features();
    let train_rows = data.rows_of(Split::Train);
    let test_rows = data.rows_of(Split::Test);
    let feature_scaler = match scaling {
        FeatureScaling::Standardize => Standardizer::fit(&data.features, cols, &train_rows)?,
        FeatureScaling::Divide(d) => {
            if !(d.is_finite() && d > 0.0) {
                return Err(Error::invalid("divisor", format!("{d} must be positive")));
            }
            Standardizer::scale_only(cols, d)
        }
    };
    let x_train = feature_scaler.transform_rows(&data.features, &train_rows);
    let x_test = feature_scaler.transform_rows(&data.features, &test_rows);
    let (task, class_labels, target_scaler, train, test) = match &data.targets {
        Targets::Classes { indices, labels } => {
            let pick = |rows: &[usize]| rows.iter().map(|&r| indices[r]).collect::<Vec<_>>();
            (
                TaskKind::Classification,
                Some(labels.clone()),
                None,
                Dataset::classification(x_train, cols, pick(&train_rows), device)?,
                Dataset::classification(x_test, cols, pick(&test_rows), device)?,
            )
        }
        Targets::Values(values) => {
            let scaler = Standardizer::fit(values, 1, &train_rows)?;
            let pick = |rows: &[usize]| scaler.transform_rows(values, rows);
            (
                TaskKind::Regression,
                None,
                Some(scaler.clone()),
                Dataset::regression(x_train, cols, pick(&train_rows), device)?,
                Dataset::regression(x_test, cols, pick(&test_rows), device)?,
            )
        }
    };
    Ok(Prepared {
        task,
        feature_names: data.feature_names.clone(),
        class_labels,
        feature_scaler,
        target_scaler,
        train,
        test,
        train_rows,
        test_rows,
    })
}
