//! The CSV loader: errors name file, row and column; standardisation uses training rows only;
//! class labels are sorted; the bundled datasets have the documented splits.

use anyhow::Result;
use candle_core::Device;
use candle_swag::Error;
use candle_swag_cli::data::{
    bundled, load_csv, load_table, prepare, CsvParams, FeatureScaling, Split, Standardizer,
    Targets, TaskKind,
};
use candle_swag_report::io::CsvTable;

fn spec(target: &str, split: Option<&str>, task: TaskKind) -> CsvParams {
    CsvParams {
        target: target.to_string(),
        split_column: split.map(str::to_string),
        task,
        ignore: Vec::new(),
        categorical: Vec::new(),
    }
}

fn bad_data(err: Error) -> (String, usize, String, String) {
    match err {
        Error::BadData {
            file,
            row,
            column,
            reason,
        } => (file, row, column, reason),
        other => panic!("expected BadData, got {other:?}"),
    }
}

fn load(text: &str, s: &CsvParams) -> candle_swag::Result<candle_swag_cli::data::TabularData> {
    load_table(&CsvTable::parse(text, "in.csv")?, &s.check()?)
}

#[test]
fn ragged_row_names_file_row_and_column() -> Result<()> {
    let text = "a,b,y\n1,2,0\n3,4\n5,6,1\n";
    let (file, row, column, reason) = bad_data(CsvTable::parse(text, "in.csv").unwrap_err());
    assert_eq!(file, "in.csv");
    assert_eq!(row, 2);
    assert_eq!(column, "y");
    assert!(reason.contains("ragged"), "{reason}");
    let (_, row, column, _) = bad_data(CsvTable::parse("a,b\n1,2,3\n", "x").unwrap_err());
    assert_eq!(row, 1);
    assert!(column.contains("#3"), "{column}");
    Ok(())
}

#[test]
fn non_numeric_cell_names_row_and_column() -> Result<()> {
    let text = "a,b,y\n1,2,0\n3,x7,1\n";
    let (file, row, column, reason) =
        bad_data(load(text, &spec("y", None, TaskKind::Classification)).unwrap_err());
    assert_eq!((file.as_str(), row, column.as_str()), ("in.csv", 2, "b"));
    assert!(reason.contains("`x7` is not a number"), "{reason}");
    // An empty cell and a NaN are refused too.
    let (_, row, column, _) =
        bad_data(load("a,y\n1,0\n,1\n", &spec("y", None, TaskKind::Classification)).unwrap_err());
    assert_eq!((row, column.as_str()), (2, "a"));
    let (_, row, _, reason) =
        bad_data(load("a,y\nNaN,0\n1,1\n", &spec("y", None, TaskKind::Regression)).unwrap_err());
    assert_eq!(row, 1);
    assert!(reason.contains("not finite"), "{reason}");
    // A regression target must be numeric as well.
    let (_, row, column, _) =
        bad_data(load("a,y\n1,0\n2,high\n", &spec("y", None, TaskKind::Regression)).unwrap_err());
    assert_eq!((row, column.as_str()), (2, "y"));
    Ok(())
}

#[test]
fn missing_target_column_is_named() -> Result<()> {
    let (file, row, column, reason) =
        bad_data(load("a,b\n1,2\n", &spec("label", None, TaskKind::Classification)).unwrap_err());
    assert_eq!(
        (file.as_str(), row, column.as_str()),
        ("in.csv", 0, "label")
    );
    assert!(
        reason.contains("no such column") && reason.contains("a, b"),
        "{reason}"
    );
    let (_, _, column, _) = bad_data(
        load(
            "a,y\n1,2\n",
            &spec("y", Some("split"), TaskKind::Regression),
        )
        .unwrap_err(),
    );
    assert_eq!(column, "split");
    Ok(())
}

#[test]
fn a_single_training_class_is_refused() -> Result<()> {
    let text = "split,a,y\ntrain,1,cat\ntrain,2,cat\ntest,3,dog\n";
    let (_, _, column, reason) =
        bad_data(load(text, &spec("y", Some("split"), TaskKind::Classification)).unwrap_err());
    assert_eq!(column, "y");
    assert!(
        reason.contains("at least two classes") && reason.contains("found 1"),
        "{reason}"
    );
    Ok(())
}

#[test]
fn bad_split_value_and_no_training_rows() -> Result<()> {
    let (_, row, column, reason) = bad_data(
        load(
            "split,a,y\ntrain,1,0\nvalid,2,1\n",
            &spec("y", Some("split"), TaskKind::Regression),
        )
        .unwrap_err(),
    );
    assert_eq!((row, column.as_str()), (2, "split"));
    assert!(reason.contains("`valid`"), "{reason}");
    let (_, _, _, reason) = bad_data(
        load(
            "split,a,y\ntest,1,0\n",
            &spec("y", Some("split"), TaskKind::Regression),
        )
        .unwrap_err(),
    );
    assert!(reason.contains("no training rows"), "{reason}");
    Ok(())
}

#[test]
fn empty_and_header_only_files_are_refused() -> Result<()> {
    assert!(bad_data(CsvTable::parse("", "e.csv").unwrap_err())
        .3
        .contains("empty"));
    assert!(bad_data(CsvTable::parse("a,b\n", "e.csv").unwrap_err())
        .3
        .contains("no data rows"));
    let (_, _, column, _) = bad_data(CsvTable::parse("a,a\n1,2\n", "e.csv").unwrap_err());
    assert_eq!(column, "a");
    Ok(())
}

#[test]
fn missing_file_is_an_io_error_naming_it() -> Result<()> {
    let err = load_csv(
        "/nonexistent/x.csv",
        &spec("y", None, TaskKind::Regression).check()?,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/x.csv"));
    Ok(())
}

#[test]
fn class_labels_are_sorted_and_indexed() -> Result<()> {
    let text = "a,y\n1,10\n2,9\n3,10\n4,2\n";
    let d = load(text, &spec("y", None, TaskKind::Classification))?;
    assert_eq!(
        d.targets,
        Targets::Classes {
            indices: vec![2, 1, 2, 0],
            labels: vec!["2".into(), "9".into(), "10".into()],
        }
    );
    let d = load(
        "a,y\n1,dog\n2,cat\n",
        &spec("y", None, TaskKind::Classification),
    )?;
    assert_eq!(
        d.targets,
        Targets::Classes {
            indices: vec![1, 0],
            labels: vec!["cat".into(), "dog".into()],
        }
    );
    Ok(())
}

#[test]
fn standardisation_uses_training_rows_only() -> Result<()> {
    // Train rows: a = 1, 3 (mean 2, population std 1); c is constant on train rows (std -> 1).
    // The test row's extreme values must not move the statistics.
    let text = "split,a,c,y\ntrain,1,5,10\ntest,1000,-7,0\ntrain,3,5,20\n";
    let d = load(text, &spec("y", Some("split"), TaskKind::Regression))?;
    assert_eq!(d.splits, vec![Split::Train, Split::Test, Split::Train]);
    assert_eq!(d.feature_names, vec!["a", "c"]);
    let p = prepare(&d, FeatureScaling::Standardize, &Device::Cpu)?;
    assert_eq!(
        p.feature_scaler,
        Standardizer {
            mean: vec![2.0, 5.0],
            std: vec![1.0, 1.0],
        }
    );
    let train: Vec<Vec<f32>> = p.train.features.to_vec2()?;
    assert_eq!(train, vec![vec![-1.0, 0.0], vec![1.0, 0.0]]);
    let test: Vec<Vec<f32>> = p.test.features.to_vec2()?;
    assert_eq!(test, vec![vec![998.0, -12.0]]);
    // Targets: train mean 15, std 5; test target 0 -> -3.
    let t = p.target_scaler.clone().unwrap();
    assert_eq!((t.mean[0], t.std[0]), (15.0, 5.0));
    assert_eq!(p.test.targets.to_vec1::<f32>()?, vec![-3.0]);
    assert_eq!(p.targets_in_original_units(&p.test)?, vec![0.0]);
    assert_eq!(
        (p.train_rows.clone(), p.test_rows.clone()),
        (vec![0, 2], vec![1])
    );
    Ok(())
}

#[test]
fn bundled_datasets_have_the_documented_splits() -> Result<()> {
    let digits = bundled::digits(&Device::Cpu)?;
    assert_eq!((digits.train.len(), digits.test.len()), (1198, 599));
    assert_eq!(digits.train.num_features(), 64);
    assert_eq!(digits.output_dim(), 10);
    // Split rule of the data README: row i is test when i % 3 == 2.
    assert!(digits.test_rows.iter().all(|i| i % 3 == 2));
    // Pixels 0..16 divided by 16.
    let max = digits.train.features.max_all()?.to_scalar::<f32>()?;
    assert_eq!(max, 1.0);
    let diabetes = bundled::diabetes(&Device::Cpu)?;
    assert_eq!((diabetes.train.len(), diabetes.test.len()), (354, 88));
    assert!(diabetes.test_rows.iter().all(|i| i % 5 == 4));
    assert_eq!(diabetes.feature_names.len(), 10);
    let ood = bundled::digits_ood(&Device::Cpu)?;
    let train_labels: Vec<u32> = ood.in_distribution.train.targets.to_vec1()?;
    assert!(train_labels.iter().all(|&c| c < 5));
    let out_labels: Vec<u32> = ood.out_of_distribution.targets.to_vec1()?;
    assert!(out_labels.iter().all(|&c| c >= 5));
    assert_eq!(
        ood.in_distribution.test.len() + ood.out_of_distribution.len(),
        599
    );
    Ok(())
}

#[test]
fn categorical_columns_are_one_hot_and_ignored_columns_dropped() -> Result<()> {
    // Columns: an id to ignore, a text column, a number, the target. Categories sort as
    // labels do (lexicographic for text).
    let text = "id,colour,size,y\nr1,red,1.5,0\nr2,blue,2,1\nr3,red,3,1\nr4,green,4,0\n";
    let mut s = spec("y", None, TaskKind::Classification);
    s.ignore = vec!["id".into()];
    s.categorical = vec!["colour".into()];
    let d = load(text, &s)?;
    assert_eq!(
        d.feature_names,
        ["colour=blue", "colour=green", "colour=red", "size"]
    );
    #[rustfmt::skip]
    let want = [
        0.0, 0.0, 1.0, 1.5,
        1.0, 0.0, 0.0, 2.0,
        0.0, 0.0, 1.0, 3.0,
        0.0, 1.0, 0.0, 4.0,
    ];
    assert_eq!(d.features, want);

    // The fitted columns encode another table the same way, and refuse an unseen category.
    let other = CsvTable::parse("colour,size\ngreen,7\npurple,8\n", "new.csv")?;
    let err = candle_swag_cli::data::encode_features(&other, &d.columns).unwrap_err();
    let (file, row, column, reason) = bad_data(err);
    assert_eq!(
        (file.as_str(), row, column.as_str()),
        ("new.csv", 2, "colour")
    );
    assert!(
        reason.contains("`purple`") && reason.contains("blue, green, red"),
        "{reason}"
    );
    let ok = CsvTable::parse("size,colour\n7,green\n", "new.csv")?;
    assert_eq!(
        candle_swag_cli::data::encode_features(&ok, &d.columns)?,
        [0.0, 1.0, 0.0, 7.0]
    );

    // Without --categorical the text column is refused with the hint; unknown names are named.
    let mut plain = spec("y", None, TaskKind::Classification);
    plain.ignore = vec!["id".into()];
    let (_, row, column, reason) = bad_data(load(text, &plain).unwrap_err());
    assert_eq!((row, column.as_str()), (1, "colour"));
    assert!(reason.contains("--categorical colour"), "{reason}");
    let mut typo = s.clone();
    typo.ignore = vec!["idd".into()];
    assert!(matches!(
        load(text, &typo).unwrap_err(),
        Error::InvalidArgument { ref name, ref reason } if name == "ignore" && reason.contains("`idd`")
    ));
    let mut both = s.clone();
    both.ignore.push("colour".into());
    assert!(matches!(
        load(text, &both).unwrap_err(),
        Error::InvalidArgument { ref name, .. } if name == "categorical"
    ));
    let mut target = s.clone();
    target.categorical = vec!["y".into()];
    assert!(matches!(
        load(text, &target).unwrap_err(),
        Error::InvalidArgument { ref name, .. } if name == "categorical"
    ));
    Ok(())
}

#[test]
fn quoted_cells_hold_commas_and_quotes() -> Result<()> {
    let t = CsvTable::parse("name,x\n\"Smith, J.\",1\n\"say \"\"hi\"\"\",2\n", "q.csv")?;
    assert_eq!(t.text_column("name")?, ["Smith, J.", "say \"hi\""]);
    assert_eq!(t.numeric_column("x")?, [1.0, 2.0]);
    Ok(())
}
