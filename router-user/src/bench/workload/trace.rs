//! Request traces: a CSV file replaces the generator.
//!
//! One request per line: `arrival_s,input_tokens,output_tokens[,prefix_group]`. Arrival is in
//! seconds (any origin; the replay starts at the first and is rescaled to each swept rate),
//! token counts are positive integers, and requests with the same `prefix_group` (any
//! non-negative integer) share their leading tokens. Blank lines and lines starting with `#` are
//! skipped. An optional header row may name the columns (`arrival_s`/`arrival`/`timestamp`,
//! `input_tokens`/`input`, `output_tokens`/`output`, `prefix_group`/`group`) in any order.
//! Rows are sorted by arrival. The fields are plain numbers (no quoting), so a small parser here
//! does the job without a CSV dependency.
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceRow {
    pub arrival_s: f64,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub prefix_group: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read trace {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trace line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("the trace has no requests")]
    Empty,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Column {
    Arrival,
    Input,
    Output,
    Group,
}

fn column(name: &str) -> Option<Column> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "arrival_s" | "arrival" | "timestamp" | "time" => Column::Arrival,
        "input_tokens" | "input" | "prompt_tokens" => Column::Input,
        "output_tokens" | "output" | "completion_tokens" => Column::Output,
        "prefix_group" | "group" => Column::Group,
        _ => return None,
    })
}

/// Reads and parses a trace file.
pub fn load(path: &Path) -> Result<Vec<TraceRow>, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text)
}

/// Parses trace text (see the module docs for the format).
pub fn parse(text: &str) -> Result<Vec<TraceRow>, TraceError> {
    let mut order = vec![
        Column::Arrival,
        Column::Input,
        Column::Output,
        Column::Group,
    ];
    let mut rows = Vec::new();
    let mut seen_data = false;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = content.split(',').map(str::trim).collect();
        let error = |reason: String| TraceError::Line { line, reason };
        if !seen_data && fields[0].parse::<f64>().is_err() {
            // A header row: it fixes the column order.
            order = fields
                .iter()
                .map(|name| column(name).ok_or_else(|| error(format!("unknown column `{name}`"))))
                .collect::<Result<_, _>>()?;
            for needed in [Column::Arrival, Column::Input, Column::Output] {
                if !order.contains(&needed) {
                    return Err(error(format!("the header lacks a {needed:?} column")));
                }
            }
            seen_data = true;
            continue;
        }
        seen_data = true;
        if fields.len() < 3 || fields.len() > order.len() {
            return Err(error(format!(
                "expected 3 or 4 fields (arrival_s,input_tokens,output_tokens[,prefix_group]), got {}",
                fields.len()
            )));
        }
        let mut row = TraceRow {
            arrival_s: 0.0,
            input_tokens: 0,
            output_tokens: 0,
            prefix_group: None,
        };
        let mut filled = 0;
        for (field, kind) in fields.iter().zip(&order) {
            let count = |what: &str| -> Result<u32, TraceError> {
                match field.parse::<u32>() {
                    Ok(value) if value > 0 => Ok(value),
                    _ => Err(error(format!(
                        "{what} must be a positive integer, got `{field}`"
                    ))),
                }
            };
            match kind {
                Column::Arrival => {
                    row.arrival_s = field
                        .parse::<f64>()
                        .ok()
                        .filter(|value| value.is_finite() && *value >= 0.0)
                        .ok_or_else(|| {
                            error(format!("arrival must be seconds >= 0, got `{field}`"))
                        })?;
                }
                Column::Input => row.input_tokens = count("input_tokens")?,
                Column::Output => row.output_tokens = count("output_tokens")?,
                Column::Group if field.is_empty() => {}
                Column::Group => {
                    row.prefix_group = Some(field.parse::<u64>().map_err(|_| {
                        error(format!(
                            "prefix_group must be a non-negative integer, got `{field}`"
                        ))
                    })?);
                }
            }
            if *kind != Column::Group {
                filled += 1;
            }
        }
        if filled < 3 {
            return Err(error(
                "arrival, input and output are required on every row".to_owned(),
            ));
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(TraceError::Empty);
    }
    rows.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_headers_and_groups() {
        let rows = parse("# comment\n\n0.5,100,20\n0.1,200,30,7\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].arrival_s, 0.1, "sorted by arrival");
        assert_eq!(rows[0].prefix_group, Some(7));
        assert_eq!((rows[1].input_tokens, rows[1].output_tokens), (100, 20));
        let rows = parse("group,output,input,arrival\n3,10,50,2.0\n,11,51,1.0\n").unwrap();
        assert_eq!(rows[0].prefix_group, None);
        assert_eq!(rows[1].prefix_group, Some(3));
        assert_eq!((rows[1].input_tokens, rows[1].output_tokens), (50, 10));
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let err = parse("0,10,5\n1,abc,5\n").unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("input_tokens"),
            "{err}"
        );
        let err = parse("0,0,5\n").unwrap_err().to_string();
        assert!(err.contains("positive"), "{err}");
        let err = parse("-1,10,5\n").unwrap_err().to_string();
        assert!(err.contains("arrival"), "{err}");
        let err = parse("0,10\n").unwrap_err().to_string();
        assert!(err.contains("expected 3 or 4 fields"), "{err}");
        let err = parse("arrival,input,colour\n").unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        assert!(matches!(parse("# nothing\n"), Err(TraceError::Empty)));
        assert!(matches!(
            load(Path::new("/nonexistent/trace.csv")),
            Err(TraceError::Read { .. })
        ));
    }
}
