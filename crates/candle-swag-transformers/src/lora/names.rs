//! Weight-name patterns: the glob match of a target, and the closest names when one matches nothing.

/// True when `name` matches `pattern`, `*` matching any run of characters (dots included).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The `k` weight-name families closest to `pattern`: names with their layer numbers replaced
/// by `*` (so each suggestion is itself a usable pattern), ranked by edit distance to the
/// pattern's literal text (its tail against theirs when the pattern starts with `*`).
pub fn closest_names(pattern: &str, names: &[&String], k: usize) -> Vec<String> {
    let mut families: Vec<String> = names.iter().map(|n| generalise(n)).collect();
    families.sort();
    families.dedup();
    let literal = pattern.trim_start_matches('*');
    let anchored_tail = pattern.starts_with('*');
    let mut scored: Vec<(usize, String)> = families
        .into_iter()
        .map(|f| {
            let against = if anchored_tail {
                let skip = f.len().saturating_sub(literal.len());
                f.get(skip..).unwrap_or(&f).to_string()
            } else {
                f.clone()
            };
            (levenshtein(literal, &against), f)
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(k)
        .map(|(_, f)| format!("`{f}`"))
        .collect()
}

/// `encoder.layer.11.attention` → `encoder.layer.*.attention`.
pub(super) fn generalise(name: &str) -> String {
    name.split('.')
        .map(|part| {
            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

pub(super) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
