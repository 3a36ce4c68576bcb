//! A strict, zero-copy reader for the Prometheus text exposition format (0.0.4), tolerant of the
//! OpenMetrics additions the engines' client libraries can emit (`# EOF`, `# UNIT`, exemplars,
//! float timestamps).
//!
//! Why our own instead of a crate (see docs/telemetry.md for the full evaluation):
//! `prometheus-parse` silently drops every name with a colon (all of `vllm:*`, `sglang:*`) and
//! splits label values on commas; `openmetrics-parser` is LGPL-3.0 and builds an owned model of
//! the whole page; the others are unmaintained. We scrape every endpoint every 50 ms, so the
//! reader must also be cheap: it borrows from the body, skips the families the caller does not
//! ask for after reading only their name, and allocates nothing.
//!
//! Strictness: every HELP/TYPE line and every sample line of a selected family is checked fully
//! (name, label syntax and escapes, value, timestamp). Lines of families the caller skips are
//! checked only up to their metric name; `parse_all` checks every line.
use std::borrow::Cow;
use std::fmt;

/// One sample of a selected family, borrowed from the scraped text.
#[derive(Clone, Copy, Debug)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Labels<'a>,
    pub value: f64,
    /// 1-based line number, for error messages further up.
    pub line: usize,
}

/// The label set of a sample: the validated text after `{`, up to and including `}`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Labels<'a> {
    raw: &'a str,
}

/// A label value as written (escapes still in place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelValue<'a> {
    raw: &'a str,
}

impl<'a> Labels<'a> {
    pub fn iter(&self) -> LabelIter<'a> {
        LabelIter { rest: self.raw }
    }

    pub fn get(&self, name: &str) -> Option<LabelValue<'a>> {
        self.iter()
            .find_map(|(label, value)| (label == name).then_some(value))
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// Iterates over `(name, value)` pairs of an already validated label set.
pub struct LabelIter<'a> {
    rest: &'a str,
}

impl<'a> Iterator for LabelIter<'a> {
    type Item = (&'a str, LabelValue<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        // The text was validated when the sample was read, so a lexing error cannot happen here;
        // should it anyway, the iteration just ends.
        match next_label(self.rest) {
            Ok(Some((name, raw, rest))) => {
                self.rest = rest;
                Some((name, LabelValue { raw }))
            }
            _ => None,
        }
    }
}

impl<'a> LabelValue<'a> {
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The value with `\\`, `\"` and `\n` resolved; borrows when there is nothing to resolve.
    pub fn unescape(&self) -> Cow<'a, str> {
        unescape_raw(self.raw)
    }

    /// Compares with plain text without allocating.
    pub fn eq_str(&self, text: &str) -> bool {
        if !self.raw.contains('\\') {
            return self.raw == text;
        }
        self.unescape() == text
    }
}

/// Where and why the text is not valid exposition format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind} in `{excerpt}`")]
pub struct ParseError {
    pub line: usize,
    pub kind: ParseErrorKind,
    /// The offending line, cut to a readable length.
    pub excerpt: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("invalid metric name")]
    InvalidMetricName,
    #[error("invalid label name")]
    InvalidLabelName,
    #[error("expected `{expected}` after label name")]
    ExpectedEquals { expected: char },
    #[error("label value must start with `\"`")]
    ExpectedQuote,
    #[error("unterminated label value")]
    UnterminatedLabelValue,
    #[error("invalid escape `\\{0}` in label value (only \\\\, \\\" and \\n are allowed)")]
    InvalidEscape(char),
    #[error("expected `,` or `}}` after label value")]
    ExpectedCommaOrBrace,
    #[error("expected a blank between the labels and the value")]
    ExpectedBlank,
    #[error("missing value after metric name")]
    MissingValue,
    #[error("invalid sample value `{0}`")]
    InvalidValue(String),
    #[error("invalid timestamp `{0}`")]
    InvalidTimestamp(String),
    #[error("unexpected text after the sample")]
    TrailingText,
    #[error("unknown metric type `{0}`")]
    UnknownType(String),
    #[error("malformed `# {0}` line")]
    MalformedDescriptor(&'static str),
    #[error("text after `# EOF`")]
    ContentAfterEof,
}

/// What a successful pass saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseSummary {
    pub lines: usize,
    /// Sample lines of every family (selected or not).
    pub samples: usize,
    /// Sample lines handed to the caller.
    pub selected: usize,
    pub saw_eof: bool,
}

/// Reads `text`, hands each sample whose metric name `select` maps to `Some(key)` to
/// `on_sample`, and stops at the first malformed line.
pub fn parse<'a, K: Clone>(
    text: &'a str,
    mut select: impl FnMut(&str) -> Option<K>,
    mut on_sample: impl FnMut(K, Sample<'a>),
) -> Result<ParseSummary, ParseError> {
    let mut summary = ParseSummary::default();
    // Consecutive lines mostly repeat a name (histogram buckets): remember the last decision.
    let mut last: (&str, Option<K>) = ("", None);
    for (index, raw_line) in text.split('\n').enumerate() {
        let line_no = index + 1;
        // Tolerate CRLF bodies; the format itself uses bare LF.
        let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        summary.lines = line_no;
        let fail = |kind| ParseError {
            line: line_no,
            kind,
            excerpt: excerpt(line),
        };
        if summary.saw_eof {
            if line.trim().is_empty() {
                continue;
            }
            return Err(fail(ParseErrorKind::ContentAfterEof));
        }
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            match check_comment(comment) {
                Ok(is_eof) => summary.saw_eof = is_eof,
                Err(kind) => return Err(fail(kind)),
            }
            continue;
        }
        summary.samples += 1;
        let name_len = metric_name_len(trimmed);
        if name_len == 0 {
            return Err(fail(ParseErrorKind::InvalidMetricName));
        }
        let name = &trimmed[..name_len];
        if name != last.0 {
            last = (name, select(name));
        }
        let Some(key) = last.1.clone() else {
            continue;
        };
        let (labels, value) = parse_sample_rest(&trimmed[name_len..]).map_err(fail)?;
        summary.selected += 1;
        on_sample(
            key,
            Sample {
                name,
                labels,
                value,
                line: line_no,
            },
        );
    }
    Ok(summary)
}

/// Reads and checks every line, handing every sample to `on_sample`.
pub fn parse_all<'a>(
    text: &'a str,
    mut on_sample: impl FnMut(Sample<'a>),
) -> Result<ParseSummary, ParseError> {
    parse(text, |_| Some(()), |(), sample| on_sample(sample))
}

fn excerpt(line: &str) -> String {
    const MAX: usize = 120;
    if line.len() <= MAX {
        return line.to_owned();
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

fn is_name_start(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_' || byte == b':'
}

fn is_name_char(byte: u8) -> bool {
    is_name_start(byte) || byte.is_ascii_digit()
}

/// Length of the metric name at the start of `text` (0 when there is none).
fn metric_name_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    match bytes.first() {
        Some(&first) if is_name_start(first) => {}
        _ => return 0,
    }
    bytes
        .iter()
        .position(|&byte| !is_name_char(byte))
        .unwrap_or(bytes.len())
}

fn label_name_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    match bytes.first() {
        Some(&first) if first.is_ascii_alphabetic() || first == b'_' => {}
        _ => return 0,
    }
    bytes
        .iter()
        .position(|&byte| !(byte.is_ascii_alphanumeric() || byte == b'_'))
        .unwrap_or(bytes.len())
}

fn skip_blanks(text: &str) -> &str {
    text.trim_start_matches([' ', '\t'])
}

/// `# HELP`, `# TYPE`, `# UNIT` are checked; `# EOF` ends the exposition; other comments pass.
fn check_comment(comment: &str) -> Result<bool, ParseErrorKind> {
    let body = skip_blanks(comment);
    let (keyword, rest) = body.split_once([' ', '\t']).unwrap_or((body, ""));
    match keyword {
        "EOF" if rest.trim().is_empty() => Ok(true),
        "HELP" | "UNIT" => {
            let label = if keyword == "HELP" { "HELP" } else { "UNIT" };
            let rest = skip_blanks(rest);
            let len = metric_name_len(rest);
            let after = &rest[len..];
            if len == 0 || !(after.is_empty() || after.starts_with([' ', '\t'])) {
                return Err(ParseErrorKind::MalformedDescriptor(label));
            }
            Ok(false)
        }
        "TYPE" => {
            let rest = skip_blanks(rest);
            let len = metric_name_len(rest);
            if len == 0 || !rest[len..].starts_with([' ', '\t']) {
                return Err(ParseErrorKind::MalformedDescriptor("TYPE"));
            }
            let kind = rest[len..].trim();
            match kind {
                "counter" | "gauge" | "histogram" | "summary" | "untyped" | "unknown" | "info"
                | "stateset" | "gaugehistogram" => Ok(false),
                "" => Err(ParseErrorKind::MalformedDescriptor("TYPE")),
                other => Err(ParseErrorKind::UnknownType(other.to_owned())),
            }
        }
        _ => Ok(false),
    }
}

/// Everything after the metric name: optional labels, the value, an optional timestamp and an
/// optional OpenMetrics exemplar.
fn parse_sample_rest(rest: &str) -> Result<(Labels<'_>, f64), ParseErrorKind> {
    let blank_after_name = rest.starts_with([' ', '\t']);
    let mut rest = skip_blanks(rest);
    let mut labels = Labels::default();
    if let Some(inner) = rest.strip_prefix('{') {
        let close = validate_labels(inner)?;
        // Keep the closing brace: it ends the iteration over the labels.
        labels = Labels {
            raw: &inner[..=close],
        };
        rest = &inner[close + 1..];
        if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
            return Err(ParseErrorKind::ExpectedBlank);
        }
    } else if !blank_after_name && !rest.is_empty() {
        // A name followed directly by something else, e.g. `metric-name 1`.
        return Err(ParseErrorKind::InvalidMetricName);
    }
    let rest = skip_blanks(rest);
    let (value_text, rest) = split_token(rest);
    if value_text.is_empty() {
        return Err(ParseErrorKind::MissingValue);
    }
    let value = parse_value(value_text)?;
    let rest = skip_blanks(rest);
    if rest.is_empty() {
        return Ok((labels, value));
    }
    let rest = if rest.starts_with('#') {
        rest
    } else {
        let (timestamp, after) = split_token(rest);
        if timestamp.parse::<i64>().is_err() && !is_float_timestamp(timestamp) {
            return Err(ParseErrorKind::InvalidTimestamp(timestamp.to_owned()));
        }
        skip_blanks(after)
    };
    if rest.is_empty() || is_exemplar(rest) {
        Ok((labels, value))
    } else {
        Err(ParseErrorKind::TrailingText)
    }
}

fn split_token(text: &str) -> (&str, &str) {
    let end = text.find([' ', '\t']).unwrap_or(text.len());
    text.split_at(end)
}

/// Go's ParseFloat spellings as Prometheus writes them (`+Inf`, `-Inf`, `NaN`, exponents).
fn parse_value(text: &str) -> Result<f64, ParseErrorKind> {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    let special = ["nan", "+inf", "-inf", "inf"]
        .iter()
        .any(|word| text.eq_ignore_ascii_case(word));
    if !(plain || special) {
        return Err(ParseErrorKind::InvalidValue(text.to_owned()));
    }
    text.parse::<f64>()
        .map_err(|_| ParseErrorKind::InvalidValue(text.to_owned()))
}

fn is_float_timestamp(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        && text.parse::<f64>().is_ok_and(f64::is_finite)
}

/// An OpenMetrics exemplar: `# {labels} value [timestamp]`.
fn is_exemplar(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('#') else {
        return false;
    };
    let Some(inner) = skip_blanks(rest).strip_prefix('{') else {
        return false;
    };
    let Ok(close) = validate_labels(inner) else {
        return false;
    };
    let rest = skip_blanks(&inner[close + 1..]);
    let (value, rest) = split_token(rest);
    if parse_value(value).is_err() {
        return false;
    }
    let (timestamp, rest) = split_token(skip_blanks(rest));
    (timestamp.is_empty() || is_float_timestamp(timestamp)) && rest.trim().is_empty()
}

/// Checks the label list after `{` and returns the index of the closing `}`.
fn validate_labels(text: &str) -> Result<usize, ParseErrorKind> {
    let mut rest = text;
    loop {
        match next_label(rest)? {
            Some((_, _, after)) => rest = after,
            None => {
                // `next_label` returns None only right before the closing brace.
                let close = skip_blanks(rest);
                return Ok(text.len() - close.len());
            }
        }
    }
}

/// Lexes one `name="value"` pair (plus its separator) from a label list. Returns `None` at the
/// closing brace, leaving `}` as the first character of what remains.
#[allow(clippy::type_complexity)]
fn next_label(text: &str) -> Result<Option<(&str, &str, &str)>, ParseErrorKind> {
    let rest = skip_blanks(text);
    if rest.starts_with('}') {
        return Ok(None);
    }
    if rest.is_empty() {
        return Err(ParseErrorKind::UnterminatedLabelValue);
    }
    let name_len = label_name_len(rest);
    if name_len == 0 {
        return Err(ParseErrorKind::InvalidLabelName);
    }
    let name = &rest[..name_len];
    let rest = skip_blanks(&rest[name_len..]);
    let Some(rest) = rest.strip_prefix('=') else {
        return Err(ParseErrorKind::ExpectedEquals { expected: '=' });
    };
    let Some(rest) = skip_blanks(rest).strip_prefix('"') else {
        return Err(ParseErrorKind::ExpectedQuote);
    };
    let bytes = rest.as_bytes();
    let mut index = 0;
    let end = loop {
        match bytes.get(index) {
            None => return Err(ParseErrorKind::UnterminatedLabelValue),
            Some(b'"') => break index,
            Some(b'\\') => match bytes.get(index + 1) {
                Some(b'\\' | b'"' | b'n') => index += 2,
                Some(_) => {
                    let escaped = rest[index + 1..].chars().next().unwrap_or('?');
                    return Err(ParseErrorKind::InvalidEscape(escaped));
                }
                None => return Err(ParseErrorKind::UnterminatedLabelValue),
            },
            Some(_) => index += 1,
        }
    };
    let value = &rest[..end];
    let after = skip_blanks(&rest[end + 1..]);
    if let Some(after_comma) = after.strip_prefix(',') {
        Ok(Some((name, value, after_comma)))
    } else if after.starts_with('}') {
        Ok(Some((name, value, after)))
    } else {
        Err(ParseErrorKind::ExpectedCommaOrBrace)
    }
}

/// Resolves label-value escapes (`\\`, `\"`, `\n`); borrows when there are none.
pub fn unescape_raw(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    Cow::Owned(out)
}

impl fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.unescape())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Owned = (String, Vec<(String, String)>, f64);

    fn all(text: &str) -> Result<Vec<Owned>, ParseError> {
        let mut out = Vec::new();
        parse_all(text, |sample| {
            let labels = sample
                .labels
                .iter()
                .map(|(name, value)| (name.to_owned(), value.unescape().into_owned()))
                .collect();
            out.push((sample.name.to_owned(), labels, sample.value));
        })?;
        Ok(out)
    }

    #[test]
    fn reads_colon_names_labels_and_special_values() {
        let text = "# HELP vllm:num_requests_waiting Number of requests waiting.\n\
                    # TYPE vllm:num_requests_waiting gauge\n\
                    vllm:num_requests_waiting{model_name=\"m\",engine=\"0\"} 3.0\n\
                    plain 1e3 1700000000000\n\
                    up +Inf\n\
                    down -Inf\n\
                    nothing NaN\n";
        let samples = all(text).unwrap();
        assert_eq!(samples.len(), 5);
        assert_eq!(samples[0].0, "vllm:num_requests_waiting");
        assert_eq!(
            samples[0].1,
            vec![
                ("model_name".to_owned(), "m".to_owned()),
                ("engine".to_owned(), "0".to_owned())
            ]
        );
        assert_eq!(samples[0].2, 3.0);
        assert_eq!(samples[1].2, 1000.0);
        assert_eq!(samples[2].2, f64::INFINITY);
        assert_eq!(samples[3].2, f64::NEG_INFINITY);
        assert!(samples[4].2.is_nan());
    }

    #[test]
    fn label_values_keep_commas_braces_and_escapes() {
        let text = r#"vllm:lora_requests_info{running_lora_adapters="a,b",waiting_lora_adapters="",max_lora="2"} 1.7e9
x{path="C:\\dir\\",q="say \"hi\"",nl="a\nb",brace="}{",} 2
"#;
        let samples = all(text).unwrap();
        assert_eq!(samples[0].1[0].1, "a,b");
        assert_eq!(samples[0].1[1].1, "");
        assert_eq!(samples[1].1[0].1, "C:\\dir\\");
        assert_eq!(samples[1].1[1].1, "say \"hi\"");
        assert_eq!(samples[1].1[2].1, "a\nb");
        assert_eq!(samples[1].1[3].1, "}{");
    }

    #[test]
    fn label_lookup_compares_without_allocating() {
        let text = "m{kind=\"used\",model=\"a\\\"b\"} 1\n";
        parse_all(text, |sample| {
            assert!(sample.labels.get("kind").unwrap().eq_str("used"));
            assert!(sample.labels.get("model").unwrap().eq_str("a\"b"));
            assert!(sample.labels.get("missing").is_none());
        })
        .unwrap();
    }

    #[test]
    fn eof_ends_the_exposition() {
        let ok = "# TYPE a counter\na_total 1\n# EOF\n";
        let summary = parse_all(ok, |_| {}).unwrap();
        assert!(summary.saw_eof);
        let bad = "a_total 1\n# EOF\na_total 2\n";
        let err = parse_all(bad, |_| {}).unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(err.kind, ParseErrorKind::ContentAfterEof);
    }

    #[test]
    fn exemplars_and_float_timestamps_are_accepted() {
        let text = "a_bucket{le=\"0.1\"} 4 # {trace_id=\"abc\"} 0.05 1700000000.123\n\
                    b 2 1700000000.5\n";
        assert_eq!(all(text).unwrap().len(), 2);
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases: &[(&str, ParseErrorKind)] = &[
            ("ok 1\nm{a=\"x} 1\n", ParseErrorKind::UnterminatedLabelValue),
            ("ok 1\nm{a=\"\\x\"} 1\n", ParseErrorKind::InvalidEscape('x')),
            ("ok 1\nm{a=x} 1\n", ParseErrorKind::ExpectedQuote),
            ("ok 1\nm{1a=\"x\"} 1\n", ParseErrorKind::InvalidLabelName),
            (
                "ok 1\nm{a \"x\"} 1\n",
                ParseErrorKind::ExpectedEquals { expected: '=' },
            ),
            (
                "ok 1\nm{a=\"x\" b=\"y\"} 1\n",
                ParseErrorKind::ExpectedCommaOrBrace,
            ),
            ("ok 1\nm\n", ParseErrorKind::MissingValue),
            ("ok 1\nm abc\n", ParseErrorKind::InvalidValue("abc".into())),
            (
                "ok 1\nm 1 12x\n",
                ParseErrorKind::InvalidTimestamp("12x".into()),
            ),
            ("ok 1\nm 1 2 3\n", ParseErrorKind::TrailingText),
            ("ok 1\nm{a=\"b\"}1\n", ParseErrorKind::ExpectedBlank),
            ("ok 1\n9m 1\n", ParseErrorKind::InvalidMetricName),
            ("ok 1\nmetric-name 1\n", ParseErrorKind::InvalidMetricName),
            (
                "ok 1\n# TYPE m countr\n",
                ParseErrorKind::UnknownType("countr".into()),
            ),
            (
                "ok 1\n# TYPE m\n",
                ParseErrorKind::MalformedDescriptor("TYPE"),
            ),
            (
                "ok 1\n# HELP 9m x\n",
                ParseErrorKind::MalformedDescriptor("HELP"),
            ),
        ];
        for (text, kind) in cases {
            let err = parse_all(text, |_| {}).unwrap_err();
            assert_eq!(err.line, 2, "{text:?}");
            assert_eq!(&err.kind, kind, "{text:?}");
            let message = err.to_string();
            assert!(message.starts_with("line 2: "), "{message}");
        }
    }

    #[test]
    fn unselected_families_are_skipped_after_their_name() {
        let text = "wanted{a=\"1\"} 5\nskipped{this is not checked} ???\nwanted 6\n";
        let mut seen = Vec::new();
        let summary = parse(
            text,
            |name| (name == "wanted").then_some(7u8),
            |key, sample| seen.push((key, sample.value)),
        )
        .unwrap();
        assert_eq!(seen, vec![(7, 5.0), (7, 6.0)]);
        assert_eq!(summary.samples, 3);
        assert_eq!(summary.selected, 2);
        assert!(parse_all(text, |_| {}).is_err());
    }

    #[test]
    fn crlf_blank_lines_and_plain_comments_pass() {
        let text = "# a plain comment\r\n\r\n  \nm 1\r\n";
        assert_eq!(all(text).unwrap().len(), 1);
    }

    #[test]
    fn long_lines_are_cut_in_errors() {
        let text = format!("m{{a=\"{}\n", "é".repeat(200));
        let err = parse_all(&text, |_| {}).unwrap_err();
        assert!(err.excerpt.chars().count() <= 121);
        assert!(err.excerpt.ends_with('…'));
    }
}
