//! A strict OpenMetrics text parser for `/metrics`: families, HELP and TYPE lines, labelled
//! samples, `# EOF`, and histogram bucket consistency.

use std::collections::{BTreeMap, BTreeSet};

/// One parsed exposition: families by name with their type, and samples.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub helps: BTreeSet<String>,
    /// (sample name, labels, value)
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Exposition {
    pub fn family_samples(&self, family: &str) -> Vec<&(String, BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|(n, _, _)| family_of(n, &self.types).as_deref() == Some(family))
            .collect()
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.iter().find_map(|(n, l, v)| {
            let want: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            (n == name && *l == want).then_some(*v)
        })
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The family a sample name belongs to, given the declared types.
fn family_of(sample: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if let Some(t) = types.get(sample)
        && matches!(t.as_str(), "gauge" | "unknown" | "stateset")
    {
        return Some(sample.to_owned());
    }
    for suffix in ["_total", "_created", "_bucket", "_sum", "_count", "_info"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && let Some(t) = types.get(base)
        {
            let ok = match t.as_str() {
                "counter" => matches!(suffix, "_total" | "_created"),
                "histogram" => matches!(suffix, "_bucket" | "_sum" | "_count" | "_created"),
                "summary" => matches!(suffix, "_sum" | "_count" | "_created"),
                "info" => suffix == "_info",
                _ => false,
            };
            if ok {
                return Some(base.to_owned());
            }
        }
    }
    None
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .map_err(|e| format!("bad value `{s}`: {e}")),
    }
}

/// `{k="v",...}`: returns the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected `{`")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without `=`")?;
        let name = &rest[..eq];
        if !valid_name(name) || name.contains(':') {
            return Err(format!("bad label name `{name}`"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("duplicate label `{name}`"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected `,` or `}` after a label".into());
        }
    }
}

/// A strict parser for the text exposition prometheus-client writes (OpenMetrics text):
/// `# HELP`/`# TYPE`/`# UNIT` lines, samples that belong to the most recently declared
/// family, no duplicate families or series, and exactly one `# EOF` as the last line.
pub fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut exp = Exposition::default();
    let mut seen_series = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut eof = false;
    for (i, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: `{line}`", i + 1);
        if eof {
            return Err(at("content after # EOF".into()));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or_default();
            let name = parts
                .next()
                .ok_or_else(|| at("missing metric name".into()))?;
            if !valid_name(name) {
                return Err(at(format!("bad metric name `{name}`")));
            }
            match kind {
                "HELP" => {
                    if !exp.helps.insert(name.to_owned()) {
                        return Err(at("duplicate HELP".into()));
                    }
                }
                "TYPE" => {
                    let t = parts
                        .next()
                        .ok_or_else(|| at("TYPE without a type".into()))?;
                    if !matches!(
                        t,
                        "counter"
                            | "gauge"
                            | "histogram"
                            | "summary"
                            | "info"
                            | "stateset"
                            | "unknown"
                            | "gaugehistogram"
                    ) {
                        return Err(at(format!("unknown type `{t}`")));
                    }
                    if exp.types.insert(name.to_owned(), t.to_owned()).is_some() {
                        return Err(at("duplicate TYPE".into()));
                    }
                    current = Some(name.to_owned());
                }
                "UNIT" => {}
                _ => return Err(at(format!("unknown comment `{kind}`"))),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(at("blank or malformed comment line".into()));
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| at("sample without a value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(at(format!("bad sample name `{name}`")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("expected a space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or_default()).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<f64>()
                .map_err(|e| at(format!("bad timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = family_of(name, &exp.types)
            .ok_or_else(|| at(format!("sample `{name}` has no declared family")))?;
        if current.as_deref() != Some(family.as_str()) {
            return Err(at(format!(
                "sample of `{family}` outside its family block (current: {current:?})"
            )));
        }
        if !seen_series.insert((name.to_owned(), labels.clone())) {
            return Err(at("duplicate series".into()));
        }
        exp.samples.push((name.to_owned(), labels, value));
    }
    if !eof {
        return Err("missing # EOF at the end".into());
    }
    check_histograms(&exp)?;
    Ok(exp)
}

/// Buckets are cumulative, end with `le="+Inf"`, and `+Inf` equals `_count`.
fn check_histograms(exp: &Exposition) -> Result<(), String> {
    for (family, t) in &exp.types {
        if t != "histogram" {
            continue;
        }
        let bucket = format!("{family}_bucket");
        let count = format!("{family}_count");
        let mut by_series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for (n, labels, v) in &exp.samples {
            if *n != bucket {
                continue;
            }
            let mut rest = labels.clone();
            let le = rest
                .remove("le")
                .ok_or_else(|| format!("{bucket} without `le`"))?;
            by_series
                .entry(rest)
                .or_default()
                .push((parse_value(&le)?, *v));
        }
        for (labels, buckets) in by_series {
            if buckets
                .windows(2)
                .any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1)
            {
                return Err(format!(
                    "{bucket}{labels:?}: buckets not cumulative: {buckets:?}"
                ));
            }
            let last = buckets.last().unwrap();
            if last.0 != f64::INFINITY {
                return Err(format!("{bucket}{labels:?}: no +Inf bucket"));
            }
            let c = exp
                .samples
                .iter()
                .find(|(n, l, _)| *n == count && *l == labels)
                .map(|(_, _, v)| *v)
                .ok_or_else(|| format!("{count}{labels:?} missing"))?;
            if c != last.1 {
                return Err(format!(
                    "{family}{labels:?}: +Inf bucket {} != count {c}",
                    last.1
                ));
            }
        }
    }
    Ok(())
}
