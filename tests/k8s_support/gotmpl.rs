//! A test-only renderer for the subset of Helm's Go templates the Switchyard chart uses, so the
//! chart's templates themselves (not a hand-written copy) are rendered and parsed in tests; no
//! `helm` binary is needed.
//!
//! Supported, with Go template semantics: text; `{{ pipeline }}` output; `{{- ` / ` -}}`
//! whitespace trimming; `{{/* comments */}}`; `if` / `else` / `end`; `define "name"` (from
//! `_*.tpl` files and templates alike); operands `.`, `.A.B.C` field paths, "strings", integers,
//! true / false; pipelines `a | f x` (the piped value is the last argument); the functions
//! `include`, `toYaml`, `nindent`, `indent`, `quote`, `default` and `not`.
//!
//! Stricter than Helm on purpose: a reference to a value that values.yaml does not define is an
//! error (like `helm lint --strict`), as is anything outside the subset (`range`, `with`,
//! `printf`, ...), named with its file and line. Keep the chart inside this subset.
use std::collections::HashMap;
use std::path::Path;

use serde_yaml::{Mapping, Value};

/// What went wrong, with the template file and line.
pub type Error = String;

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Output {
        pipeline: String,
        at: String,
    },
    If {
        cond: String,
        at: String,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

enum Token {
    Text(String),
    Action { body: String, at: String },
}

/// Splits a template into text and actions, applying the trim markers.
fn lex(source: &str, file: &str) -> Result<Vec<Token>, Error> {
    let mut tokens = Vec::new();
    let mut rest = source;
    let mut trim_next = false;
    let mut consumed = 0usize;
    loop {
        let Some(open) = rest.find("{{") else {
            let text = if trim_next { rest.trim_start() } else { rest };
            tokens.push(Token::Text(text.to_string()));
            return Ok(tokens);
        };
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start();
        }
        let after_open = &rest[open + 2..];
        let trim_left = after_open.starts_with("- ") || after_open.starts_with("-\n");
        if trim_left {
            text = text.trim_end();
        }
        tokens.push(Token::Text(text.to_string()));
        let line = 1 + source[..consumed + open].matches('\n').count();
        let at = format!("{file}:{line}");
        let Some(close) = after_open.find("}}") else {
            return Err(format!("{at}: unclosed action"));
        };
        let mut body = &after_open[..close];
        if trim_left {
            body = &body[1..];
        }
        trim_next = body.ends_with(" -") || body.ends_with("\n-");
        if trim_next {
            body = &body[..body.len() - 1];
        }
        let body = body.trim();
        if !(body.starts_with("/*") && body.ends_with("*/")) {
            tokens.push(Token::Action {
                body: body.to_string(),
                at,
            });
        }
        let advance = open + 2 + close + 2;
        consumed += advance;
        rest = &rest[advance..];
    }
}

/// Parses tokens into nodes; `define` blocks go to `defines`.
fn parse(
    tokens: &[Token],
    pos: &mut usize,
    defines: &mut HashMap<String, Vec<Node>>,
    inside: Option<&str>,
) -> Result<(Vec<Node>, Option<&'static str>), Error> {
    let mut nodes = Vec::new();
    while *pos < tokens.len() {
        let token = &tokens[*pos];
        *pos += 1;
        match token {
            Token::Text(text) => {
                if !text.is_empty() {
                    nodes.push(Node::Text(text.clone()));
                }
            }
            Token::Action { body, at } => {
                let keyword = body.split_whitespace().next().unwrap_or_default();
                match keyword {
                    "end" => {
                        return match inside {
                            Some(_) => Ok((nodes, Some("end"))),
                            None => Err(format!("{at}: `end` without a block")),
                        };
                    }
                    "else" => {
                        if body != "else" {
                            return Err(format!("{at}: only a plain `else` is supported"));
                        }
                        return match inside {
                            Some("if") => Ok((nodes, Some("else"))),
                            _ => Err(format!("{at}: `else` outside `if`")),
                        };
                    }
                    "if" => {
                        let cond = body["if".len()..].trim().to_string();
                        let (then, ended_by) = parse(tokens, pos, defines, Some("if"))?;
                        let otherwise = if ended_by == Some("else") {
                            let (otherwise, ended_by) = parse(tokens, pos, defines, Some("else"))?;
                            if ended_by != Some("end") {
                                return Err(format!("{at}: `if` without `end`"));
                            }
                            otherwise
                        } else if ended_by == Some("end") {
                            Vec::new()
                        } else {
                            return Err(format!("{at}: `if` without `end`"));
                        };
                        nodes.push(Node::If {
                            cond,
                            at: at.clone(),
                            then,
                            otherwise,
                        });
                    }
                    "define" => {
                        let name = unquote(body["define".len()..].trim())
                            .ok_or_else(|| format!("{at}: define needs a quoted name"))?;
                        let (body_nodes, ended_by) = parse(tokens, pos, defines, Some("define"))?;
                        if ended_by != Some("end") {
                            return Err(format!("{at}: `define` without `end`"));
                        }
                        defines.insert(name, body_nodes);
                    }
                    "range" | "with" | "template" | "block" | "break" | "continue" => {
                        return Err(format!("{at}: `{keyword}` is outside the supported subset"));
                    }
                    _ => nodes.push(Node::Output {
                        pipeline: body.clone(),
                        at: at.clone(),
                    }),
                }
            }
        }
    }
    match inside {
        Some(block) => Err(format!("unterminated `{block}` block")),
        None => Ok((nodes, None)),
    }
}

fn unquote(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    Some(inner.replace("\\\"", "\"").replace("\\\\", "\\"))
}

/// Splits on `sep` outside double quotes.
fn split_outside_quotes(text: &str, sep: impl Fn(char) -> bool) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        if quoted {
            current.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
        } else if c == '"' {
            quoted = true;
            current.push(c);
        } else if sep(c) {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

/// A loaded chart: metadata, default values and templates.
pub struct Chart {
    meta: Value,
    values: Value,
    defines: HashMap<String, Vec<Node>>,
    /// Rendered templates (not `_*` files, not NOTES.txt): file name and parsed nodes.
    templates: Vec<(String, Vec<Node>)>,
}

/// One rendered template file.
pub struct Rendered {
    pub file: String,
    pub text: String,
}

impl Chart {
    pub fn load(dir: &Path) -> Result<Chart, Error> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let meta: Value = serde_yaml::from_str(&read(&dir.join("Chart.yaml"))?)
            .map_err(|e| format!("Chart.yaml: {e}"))?;
        let values: Value = serde_yaml::from_str(&read(&dir.join("values.yaml"))?)
            .map_err(|e| format!("values.yaml: {e}"))?;
        let mut files: Vec<_> = std::fs::read_dir(dir.join("templates"))
            .map_err(|e| format!("templates/: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        let mut defines = HashMap::new();
        let mut templates = Vec::new();
        for path in files {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tokens = lex(&read(&path)?, &format!("templates/{name}"))?;
            let (nodes, _) = parse(&tokens, &mut 0, &mut defines, None)?;
            if !name.starts_with('_') && name != "NOTES.txt" {
                templates.push((name, nodes));
            }
        }
        Ok(Chart {
            meta,
            values,
            defines,
            templates,
        })
    }

    /// The chart's default values.
    pub fn values(&self) -> &Value {
        &self.values
    }

    /// Renders every template with values.yaml deep-merged with `overrides`.
    pub fn render(
        &self,
        release: &str,
        namespace: &str,
        overrides: &Value,
    ) -> Result<Vec<Rendered>, Error> {
        let mut values = self.values.clone();
        merge(&mut values, overrides);
        let chart = |key: &str| self.meta.get(key).cloned().unwrap_or(Value::Null);
        let mut root = Mapping::new();
        root.insert("Values".into(), values);
        root.insert(
            "Release".into(),
            Value::Mapping(Mapping::from_iter([
                ("Name".into(), release.into()),
                ("Namespace".into(), namespace.into()),
                ("Service".into(), "Helm".into()),
            ])),
        );
        root.insert(
            "Chart".into(),
            Value::Mapping(Mapping::from_iter([
                ("Name".into(), chart("name")),
                ("Version".into(), chart("version")),
                ("AppVersion".into(), chart("appVersion")),
            ])),
        );
        let root = Value::Mapping(root);
        self.templates
            .iter()
            .map(|(file, nodes)| {
                Ok(Rendered {
                    file: file.clone(),
                    text: self.exec(nodes, &root)?,
                })
            })
            .collect()
    }

    fn exec(&self, nodes: &[Node], dot: &Value) -> Result<String, Error> {
        let mut out = String::new();
        for node in nodes {
            match node {
                Node::Text(text) => out.push_str(text),
                Node::Output { pipeline, at } => {
                    let value = self.pipeline(pipeline, dot, at)?;
                    out.push_str(&display(&value, at)?);
                }
                Node::If {
                    cond,
                    at,
                    then,
                    otherwise,
                } => {
                    let branch = if truthy(&self.pipeline(cond, dot, at)?) {
                        then
                    } else {
                        otherwise
                    };
                    out.push_str(&self.exec(branch, dot)?);
                }
            }
        }
        Ok(out)
    }

    fn pipeline(&self, pipeline: &str, dot: &Value, at: &str) -> Result<Value, Error> {
        let mut piped: Option<Value> = None;
        for command in split_outside_quotes(pipeline, |c| c == '|') {
            let words: Vec<String> = split_outside_quotes(command.trim(), char::is_whitespace)
                .into_iter()
                .filter(|w| !w.is_empty())
                .collect();
            let Some((head, args)) = words.split_first() else {
                return Err(format!("{at}: empty command in `{pipeline}`"));
            };
            let mut args: Vec<Value> = args
                .iter()
                .map(|a| self.operand(a, dot, at))
                .collect::<Result<_, _>>()?;
            if let Some(value) = piped.take() {
                args.push(value);
            }
            piped = Some(if is_function(head) {
                self.call(head, args, at)?
            } else if args.is_empty() {
                self.operand(head, dot, at)?
            } else {
                return Err(format!("{at}: `{head}` is not a supported function"));
            });
        }
        piped.ok_or_else(|| format!("{at}: empty pipeline"))
    }

    fn operand(&self, word: &str, dot: &Value, at: &str) -> Result<Value, Error> {
        if word == "." {
            return Ok(dot.clone());
        }
        if let Some(path) = word.strip_prefix('.') {
            let mut value = dot;
            for field in path.split('.') {
                value = value
                    .get(field)
                    .ok_or_else(|| format!("{at}: `{word}` is not defined (missing `{field}`)"))?;
            }
            return Ok(value.clone());
        }
        if let Some(text) = unquote(word) {
            return Ok(Value::String(text));
        }
        if let Ok(n) = word.parse::<i64>() {
            return Ok(Value::Number(n.into()));
        }
        match word {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("{at}: `{word}` is outside the supported subset")),
        }
    }

    fn call(&self, name: &str, args: Vec<Value>, at: &str) -> Result<Value, Error> {
        let arity = |n: usize| {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "{at}: `{name}` takes {n} arguments, got {}",
                    args.len()
                ))
            }
        };
        let int = |v: &Value| {
            v.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| format!("{at}: `{name}` needs a number"))
        };
        match name {
            "include" => {
                arity(2)?;
                let template = args[0]
                    .as_str()
                    .ok_or_else(|| format!("{at}: include needs a template name"))?;
                let body = self
                    .defines
                    .get(template)
                    .ok_or_else(|| format!("{at}: no template named {template:?}"))?;
                Ok(Value::String(self.exec(body, &args[1])?))
            }
            "toYaml" => {
                arity(1)?;
                let text = serde_yaml::to_string(&args[0]).map_err(|e| format!("{at}: {e}"))?;
                Ok(Value::String(text.trim_end_matches('\n').to_string()))
            }
            "nindent" | "indent" => {
                arity(2)?;
                let width = int(&args[0])?;
                let text = display(&args[1], at)?;
                let pad = " ".repeat(width);
                let body = text
                    .split('\n')
                    .map(|line| format!("{pad}{line}"))
                    .collect::<Vec<_>>()
                    .join("\n");
                Ok(Value::String(if name == "nindent" {
                    format!("\n{body}")
                } else {
                    body
                }))
            }
            "quote" => {
                arity(1)?;
                let text = display(&args[0], at)?;
                Ok(Value::String(format!(
                    "\"{}\"",
                    text.replace('\\', "\\\\").replace('"', "\\\"")
                )))
            }
            "default" => {
                arity(2)?;
                let mut args = args;
                let value = args.pop().unwrap_or(Value::Null);
                let fallback = args.pop().unwrap_or(Value::Null);
                Ok(if truthy(&value) { value } else { fallback })
            }
            "not" => {
                arity(1)?;
                Ok(Value::Bool(!truthy(&args[0])))
            }
            _ => Err(format!("{at}: `{name}` is not a supported function")),
        }
    }
}

fn is_function(word: &str) -> bool {
    matches!(
        word,
        "include" | "toYaml" | "nindent" | "indent" | "quote" | "default" | "not"
    )
}

/// Go template truthiness: false, 0, "", nil and empty collections are false.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

fn display(value: &Value, at: &str) -> Result<String, Error> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!(
            "{at}: cannot print {other:?} (use toYaml for collections)"
        )),
    }
}

/// Deep-merges `overrides` into `base` (maps merge, anything else replaces), as `--set` does.
pub fn merge(base: &mut Value, overrides: &Value) {
    match (base, overrides) {
        (Value::Mapping(base), Value::Mapping(overrides)) => {
            for (key, value) in overrides {
                match base.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, overrides) => *base = overrides.clone(),
    }
}

/// The YAML documents of rendered text (empty and comment-only documents dropped).
pub fn documents(text: &str) -> Result<Vec<Value>, Error> {
    let mut docs = Vec::new();
    for chunk in split_documents(text) {
        let value: Value = serde_yaml::from_str(&chunk).map_err(|e| format!("{e}\n{chunk}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, values: &str) -> Result<String, Error> {
        let tokens = lex(source, "t")?;
        let mut defines = HashMap::new();
        let (nodes, _) = parse(&tokens, &mut 0, &mut defines, None)?;
        let chart = Chart {
            meta: Value::Null,
            values: Value::Null,
            defines,
            templates: Vec::new(),
        };
        let mut root = Mapping::new();
        root.insert("Values".into(), serde_yaml::from_str(values).unwrap());
        chart.exec(&nodes, &Value::Mapping(root))
    }

    #[test]
    fn trimming_and_blocks() {
        let out = render(
            "a:\n  {{- if .Values.on }}\n  b: {{ .Values.x | quote }}\n  {{- else }}\n  c: 1\n  {{- end }}\n",
            "on: true\nx: 5",
        )
        .unwrap();
        assert_eq!(out, "a:\n  b: \"5\"\n");
        let out = render("a:\n  {{- if .Values.on }} yes{{- end }}\nz", "on: false").unwrap();
        assert_eq!(out, "a:\nz");
    }

    #[test]
    fn include_toyaml_nindent_default() {
        let out = render(
            "{{- define \"l\" -}}\nk: {{ .Values.n | default \"d\" }}\n{{- end }}\nm:\n  {{- include \"l\" . | nindent 2 }}\nl:\n  {{- toYaml .Values.list | nindent 2 }}\n",
            "n: ''\nlist: [1, 2]",
        )
        .unwrap();
        // Text after `{{- end }}` keeps its newline, as in Go.
        assert_eq!(out, "\nm:\n  k: d\nl:\n  - 1\n  - 2\n");
    }

    #[test]
    fn strictness() {
        assert!(
            render("{{ .Values.missing }}", "a: 1")
                .unwrap_err()
                .contains("missing")
        );
        assert!(
            render("{{ range .Values.a }}{{ end }}", "a: 1")
                .unwrap_err()
                .contains("range")
        );
        assert!(render("{{ printf \"%s\" .Values.a }}", "a: 1").is_err());
        assert!(render("{{ if .Values.a }}", "a: 1").is_err());
    }
}
