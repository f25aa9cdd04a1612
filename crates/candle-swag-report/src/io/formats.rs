//! File format readers: `.npy` and `.npz` (bounded readers in `npy.rs`), `.safetensors` (through
//! candle) and CSV (through `CsvTable`).

use candle_core::{DType, Tensor};

use super::array::{Array, InputSource, Precision, Role};
use super::csv::{CsvTable, Header};
use candle_swag::error::{Error, Result};

/// Reads the array that `spec` designates, for the given role.
///
/// The format follows the file extension (`.npy`, `.npz`, `.safetensors`; anything else is
/// CSV). Arrays of rank 0 or above 2 are refused; so are files that cannot be opened or parsed,
/// with an error naming the file. Values are not checked here beyond parsing: see the `check_*`
/// functions of this module.
pub fn read_input(spec: &InputSource, role: Role) -> Result<Array> {
    let path = spec.path.as_path();
    std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "npy" => {
            if let Some(key) = &spec.key {
                return Err(Error::bad_file(
                    path,
                    format!("a .npy file holds one unnamed array; cannot select `{key}`"),
                ));
            }
            let t = super::npy::read_npy(path)?;
            tensor_to_array(spec.to_string(), &t)
        }
        "npz" => {
            let named = super::npy::read_npz(path)?;
            pick_named(spec, role, named)
        }
        "safetensors" => {
            let map =
                candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| {
                    Error::bad_file(path, format!("not a readable .safetensors file: {e}"))
                })?;
            let mut named: Vec<(String, Tensor)> = map.into_iter().collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            pick_named(spec, role, named)
        }
        _ => read_csv(spec, role),
    }
}

/// Chooses one array of a multi-array file: the user's key, else the role's default names,
/// else the only array.
fn pick_named(spec: &InputSource, role: Role, named: Vec<(String, Tensor)>) -> Result<Array> {
    let path = &spec.path;
    let available = || {
        named
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let index = match &spec.key {
        Some(key) => named.iter().position(|(n, _)| n == key).ok_or_else(|| {
            Error::bad_file(
                path,
                format!("holds no array `{key}` (it holds: {})", available()),
            )
        })?,
        None => {
            let by_role = role
                .default_names()
                .iter()
                .find_map(|want| named.iter().position(|(n, _)| n == want));
            match (by_role, named.len()) {
                (Some(i), _) => i,
                (None, 1) => 0,
                (None, 0) => return Err(Error::bad_file(path, "holds no arrays")),
                (None, _) => {
                    return Err(Error::bad_file(
                        path,
                        format!(
                            "holds several arrays ({}); name one with {}:NAME",
                            available(),
                            path.display()
                        ),
                    ))
                }
            }
        }
    };
    let (name, tensor) = &named[index];
    tensor_to_array(format!("{}:{}", path.display(), name), tensor)
}

/// Converts a rank-1 or rank-2 tensor of any numeric dtype to an `f64` array.
fn tensor_to_array(source: String, t: &Tensor) -> Result<Array> {
    let dims = t.dims().to_vec();
    let (rows, cols) = match dims.as_slice() {
        [n] => (*n, 1),
        [n, c] => (*n, *c),
        _ => {
            return Err(Error::BadData {
                file: source,
                row: 0,
                column: "-".into(),
                reason: format!("expected a 1-D [N] or 2-D [N, C] array, found shape {dims:?}"),
            })
        }
    };
    let values = t
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .map_err(|e| Error::BadData {
            file: source.clone(),
            row: 0,
            column: "-".into(),
            reason: format!("cannot convert dtype {:?} to numbers: {e}", t.dtype()),
        })?;
    let mut array = Array::new(source, rows, cols, values)?;
    if matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        array.precision = Precision::Single;
    }
    Ok(array)
}

/// Reads a CSV file, keeping the columns the spec or the role asks for.
fn read_csv(spec: &InputSource, role: Role) -> Result<Array> {
    let path = spec.path.as_path();
    let table = CsvTable::read_with(path, Header::Detect)?;
    let names = table.header();
    let width = names.len();

    // Which columns to keep.
    let selected: Vec<usize> = if let Some(key) = &spec.key {
        vec![table.column_index(key)?]
    } else if table.has_header() {
        let by_name = role
            .default_names()
            .iter()
            .find_map(|want| names.iter().position(|n| n == want));
        let prob_cols: Vec<usize> = names
            .iter()
            .enumerate()
            .filter(|(_, n)| n.starts_with("prob_"))
            .map(|(j, _)| j)
            .collect();
        if role == Role::Probabilities && !prob_cols.is_empty() {
            prob_cols
        } else if let (Some(j), false) = (by_name, role.is_matrix()) {
            vec![j]
        } else {
            (0..width).collect()
        }
    } else {
        (0..width).collect()
    };
    let selected_names: Vec<String> = selected.iter().map(|&j| names[j].clone()).collect();
    let values = table.numeric_matrix(&selected_names)?;
    let source = spec.to_string();
    let mut array = Array::new(source, table.num_rows(), selected.len(), values)?;
    if table.has_header() {
        array.column_names = Some(selected_names);
    }
    Ok(array)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_header_detected_and_prob_columns_selected() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("preds.csv");
        std::fs::write(&p, "prob_0,prob_1,pred\n0.25,0.75,1\n0.5,0.5,0\n")?;
        let a = read_input(&InputSource::new(&p), Role::Probabilities)?;
        assert_eq!((a.rows, a.cols), (2, 2));
        assert_eq!(a.values, vec![0.25, 0.75, 0.5, 0.5]);
        assert_eq!(a.column_name(1), "prob_1");
        let pred = read_input(
            &InputSource::parse(&format!("{}:pred", p.display())),
            Role::Labels,
        )?;
        assert_eq!(pred.values, vec![1.0, 0.0]);
        Ok(())
    }

    #[test]
    fn csv_bad_cell_names_row_and_column() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("y.csv");
        std::fs::write(&p, "a,b\n1,2\n3,oops\n")?;
        let e = read_input(&InputSource::new(&p), Role::Probabilities).unwrap_err();
        match e {
            Error::BadData { row, column, .. } => assert_eq!((row, column.as_str()), (2, "b")),
            other => panic!("unexpected {other}"),
        }
        Ok(())
    }
}
