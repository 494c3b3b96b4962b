//! The `render` subcommand: the objects a stack becomes, as YAML, without a
//! cluster. It runs the same `validate` and `build` as the reconciler;
//! generated Secret values show as placeholders, and the objects carry no
//! ownerReferences (the stack has no uid before it is applied).
//!
//! The YAML it prints is read by YAML 1.1 readers too (kubectl, Helm, Argo
//! CD, PyYAML), which take plain `yes`, `off`, `0755` or `1:20` for a bool
//! or a number where serde_yaml_ng (YAML 1.2) writes them as plain strings:
//! [`to_yaml`] quotes every string such a reader would misread.

use commerce_api::{CommerceStack, RateLimitPolicy};
use serde::Deserialize;

use crate::Error;
use crate::build::monitoring::PodMonitorApi;
use crate::build::{self, DesiredObject, secrets::SecretValues};
use crate::validate::validate;

/// Renders every CommerceStack in `yaml` (a multi-document stream that may
/// also hold RateLimitPolicies, which join the stacks they target).
/// `namespace` stands in for resources that name none.
pub fn render(yaml: &str, namespace: &str) -> Result<String, Error> {
    let mut stacks: Vec<CommerceStack> = Vec::new();
    let mut policies: Vec<RateLimitPolicy> = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = serde_yaml_ng::Value::deserialize(document)
            .map_err(|source| Error::ParseYaml { what: "a YAML document".into(), source })?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_owned();
        match kind.as_str() {
            "CommerceStack" => stacks.push(
                serde_yaml_ng::from_value(value).map_err(|source| Error::ParseYaml { what: kind, source })?,
            ),
            "RateLimitPolicy" => policies.push(
                serde_yaml_ng::from_value(value).map_err(|source| Error::ParseYaml { what: kind, source })?,
            ),
            _ => return Err(Error::UnexpectedKind { kind }),
        }
    }
    if stacks.is_empty() {
        return Err(Error::UnexpectedKind { kind: "none (the input holds no CommerceStack)".into() });
    }
    for policy in &mut policies {
        policy.metadata.namespace.get_or_insert_with(|| namespace.to_owned());
    }
    let mut out = String::new();
    for stack in &stacks {
        let valid = validate(stack, namespace)?;
        // Offline: what the stack asks for (a PodMonitor, if it does).
        let objects = build::build(&valid, &policies, &SecretValues::placeholders(), PodMonitorApi::Served)?;
        out.push_str(&to_yaml(&objects)?);
    }
    Ok(out)
}

/// The objects as one multi-document YAML stream, every string that a YAML
/// 1.1 or 1.2 reader would resolve to something else quoted
/// ([`is_ambiguous_plain`]).
///
/// serde_yaml_ng decides quoting by its own (YAML 1.2) rules and cannot be
/// told to quote more, so each ambiguous string (key or value) goes to the
/// emitter as a placeholder that is a plain string by every schema, and the
/// placeholder is then replaced by the string single-quoted: `'yes'`. An
/// ambiguous string holds neither a quote nor a line break, so the quoted
/// form needs no escapes; the emitter's layout is otherwise unchanged.
pub fn to_yaml(objects: &[DesiredObject]) -> Result<String, Error> {
    let mut out = String::new();
    for desired in objects {
        let serialize = |source| Error::SerializeYaml { what: desired.display(), source };
        let value = serde_yaml_ng::to_value(&desired.object).map_err(serialize)?;
        out.push_str("---\n");
        out.push_str(&to_yaml11_safe(value).map_err(serialize)?);
    }
    Ok(out)
}

/// `value` as YAML, with ambiguous strings quoted.
fn to_yaml11_safe(value: serde_yaml_ng::Value) -> Result<String, serde_yaml_ng::Error> {
    // A placeholder prefix that no string of the value contains, so that
    // replacing placeholders touches nothing else.
    let mut strings = Vec::new();
    collect_strings(&value, &mut strings);
    let mut prefix = String::from("yaml11-quoted-");
    while strings.iter().any(|s| s.contains(&prefix)) {
        prefix.push('x');
    }
    let mut ambiguous = Vec::new();
    let value = replace_ambiguous(value, &prefix, &mut ambiguous);
    let mut text = serde_yaml_ng::to_string(&value)?;
    // Placeholders end in `-q`, so `...-1-q` never matches inside `...-11-q`.
    for (index, original) in ambiguous.iter().enumerate() {
        text = text.replace(&placeholder(&prefix, index), &format!("'{original}'"));
    }
    Ok(text)
}

fn placeholder(prefix: &str, index: usize) -> String {
    format!("{prefix}{index}-q")
}

fn collect_strings<'a>(value: &'a serde_yaml_ng::Value, out: &mut Vec<&'a str>) {
    use serde_yaml_ng::Value;
    match value {
        Value::String(s) => out.push(s),
        Value::Sequence(items) => items.iter().for_each(|item| collect_strings(item, out)),
        Value::Mapping(map) => map.iter().for_each(|(k, v)| {
            collect_strings(k, out);
            collect_strings(v, out);
        }),
        Value::Tagged(tagged) => collect_strings(&tagged.value, out),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `value` with every ambiguous string (keys included) replaced by a
/// placeholder; the originals are pushed to `ambiguous` in placeholder order.
fn replace_ambiguous(
    value: serde_yaml_ng::Value,
    prefix: &str,
    ambiguous: &mut Vec<String>,
) -> serde_yaml_ng::Value {
    use serde_yaml_ng::Value;
    match value {
        Value::String(s) if is_ambiguous_plain(&s) => {
            let replaced = Value::String(placeholder(prefix, ambiguous.len()));
            ambiguous.push(s);
            replaced
        }
        Value::Sequence(items) => Value::Sequence(
            items.into_iter().map(|item| replace_ambiguous(item, prefix, ambiguous)).collect(),
        ),
        Value::Mapping(map) => Value::Mapping(
            map.into_iter()
                .map(|(k, v)| {
                    let key = replace_ambiguous(k, prefix, ambiguous);
                    (key, replace_ambiguous(v, prefix, ambiguous))
                })
                .collect(),
        ),
        Value::Tagged(mut tagged) => {
            tagged.value = replace_ambiguous(tagged.value, prefix, ambiguous);
            Value::Tagged(tagged)
        }
        other => other,
    }
}

/// Whether `s`, written as a plain (unquoted) scalar, could be read as
/// anything but that string by a YAML 1.1 reader (the 1.1 type repository:
/// bool, null, int, float, timestamp, merge and value keys) or a YAML 1.2
/// reader (core schema). Case variants count too, which is more than the
/// specs say (`yEs` is a string in both) and costs only two quotes.
/// Errs on the side of quoting: a quoted string is read right by every
/// reader.
pub fn is_ambiguous_plain(s: &str) -> bool {
    const WORDS: [&str; 12] = ["y", "n", "yes", "no", "true", "false", "on", "off", "null", "~", "<<", "="];
    if s.is_empty() || WORDS.iter().any(|word| s.eq_ignore_ascii_case(word)) {
        return true;
    }
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    if [".inf", "inf", "infinity", ".nan", "nan"].iter().any(|word| unsigned.eq_ignore_ascii_case(word)) {
        return true;
    }
    is_prefixed_int(unsigned) || is_decimal(unsigned) || is_sexagesimal(unsigned) || is_timestamp(s)
}

/// `0b1010`, `0o17`, `0x1F` (underscores allowed after the prefix).
fn is_prefixed_int(s: &str) -> bool {
    let digits = |rest: &str, radix: u32| {
        rest.chars().any(|c| c.is_digit(radix)) && rest.chars().all(|c| c == '_' || c.is_digit(radix))
    };
    let lower = s.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("0b") {
        return digits(rest, 2);
    }
    if let Some(rest) = lower.strip_prefix("0o") {
        return digits(rest, 8);
    }
    if let Some(rest) = lower.strip_prefix("0x") {
        return digits(rest, 16);
    }
    false
}

/// Decimal and octal ints and floats, with underscores: `42`, `0755`,
/// `1_000`, `3.14`, `.5`, `1.`, `6.02e+23`, `1e3`. The 1.1 spec's float
/// pattern would also take `1.2.3`, which no reader (PyYAML, SnakeYAML,
/// go-yaml) does; versions stay plain.
fn is_decimal(s: &str) -> bool {
    if !s.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return false;
    }
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(at) => (&s[..at], Some(&s[at + 1..])),
        None => (s, None),
    };
    let mantissa_ok = mantissa.chars().all(|c| c.is_ascii_digit() || c == '_' || c == '.')
        && mantissa.matches('.').count() <= 1
        && (mantissa.chars().any(|c| c.is_ascii_digit()) || mantissa == ".");
    let exponent_ok = exponent.is_none_or(|e| {
        let digits = e.strip_prefix(['-', '+']).unwrap_or(e);
        mantissa.chars().any(|c| c.is_ascii_digit())
            && digits.chars().any(|c| c.is_ascii_digit())
            && digits.chars().all(|c| c.is_ascii_digit() || c == '_')
    });
    mantissa_ok && exponent_ok
}

/// Base 60, YAML 1.1: `1:20` (80), `190:20:30`, `1:20.5`.
fn is_sexagesimal(s: &str) -> bool {
    let (whole, fraction) = match s.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (s, None),
    };
    let mut parts = whole.split(':');
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let digits = |part: &str| {
        part.chars().any(|c| c.is_ascii_digit()) && part.chars().all(|c| c.is_ascii_digit() || c == '_')
    };
    !rest.is_empty()
        && first.starts_with(|c: char| c.is_ascii_digit())
        && digits(first)
        && rest.iter().all(|part| digits(part))
        && fraction.is_none_or(|f| f.chars().all(|c| c.is_ascii_digit() || c == '_'))
}

/// YAML 1.1 timestamps: `2001-12-14`, `2001-12-14t21:59:43.10-05:00`,
/// `2001-12-14 21:59:43.10 -5`; quoted whenever the date part matches.
fn is_timestamp(s: &str) -> bool {
    let bytes = s.as_bytes();
    let digit_run = |from: usize| bytes[from..].iter().take_while(|b| b.is_ascii_digit()).count();
    if bytes.len() < 8 || digit_run(0) != 4 || bytes[4] != b'-' {
        return false;
    }
    let month = digit_run(5);
    if !(1..=2).contains(&month) || bytes.get(5 + month) != Some(&b'-') {
        return false;
    }
    let day_at = 6 + month;
    let day = digit_run(day_at);
    if !(1..=2).contains(&day) {
        return false;
    }
    match bytes.get(day_at + day) {
        None => month == 2 && day == 2,
        Some(next) => matches!(next, b'T' | b't' | b' ' | b'\t'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings a YAML 1.1 reader takes for a bool, null, number or timestamp.
    #[rustfmt::skip]
    const AMBIGUOUS: &[&str] = &[
        // bool, with case variants
        "yes", "Yes", "YES", "yEs", "no", "No", "NO", "y", "Y", "n", "N", "on", "On", "ON", "off", "Off",
        "OFF", "true", "True", "TRUE", "false", "False", "FALSE",
        // null
        "null", "Null", "NULL", "~", "",
        // ints: decimal, signed, underscores, octal (1.1 and 1.2), hex, binary
        "0", "42", "-17", "+17", "1_000", "0755", "0o755", "0x1F", "0X1f", "0xdead_beef", "-0x1F", "0b1010",
        "0b1_0",
        // floats
        "3.14", "-3.14", ".5", "1.", "6.02e+23", "6.02E-23", "1e3", "1_000.5", ".inf", "-.inf", "+.INF",
        ".Inf", ".nan", ".NaN", ".NAN", "-inf", "NaN", ".",
        // sexagesimal (base 60)
        "1:20", "190:20:30", "1:20.5", "-1:20", "22:80",
        // timestamps, merge and value keys
        "2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "<<", "=",
    ];

    /// Look alike, but are plain strings everywhere.
    #[rustfmt::skip]
    const PLAIN: &[&str] = &[
        "yesterday", "no-cache", "on-call", "offline", "nullable", "truey", "y1", "0xZZ", "0b102", "1.2.3a",
        "1e", "e3", "12:3a", "1-2", "v1.2.3", "shop-redis", "--appendonly", "/data", "0.1.0-rc1", "2001-1",
        "10.0.0.0/8", "::1", "a:b", "_1", "0.1.0", "1.2.3", "10.0.0.1",
    ];

    /// Prints `value` through `to_yaml11_safe`.
    fn emit(value: &serde_json::Value) -> String {
        to_yaml11_safe(serde_yaml_ng::to_value(value).unwrap()).unwrap()
    }

    #[test]
    fn the_classifier_knows_the_yaml_1_1_forms() {
        for s in AMBIGUOUS {
            assert!(is_ambiguous_plain(s), "{s:?} is ambiguous");
        }
        for s in PLAIN {
            assert!(!is_ambiguous_plain(s), "{s:?} is a plain string");
        }
    }

    #[test]
    fn ambiguous_strings_are_quoted_as_values_keys_and_list_items_and_read_back_as_strings() {
        for s in AMBIGUOUS {
            let mut labels = serde_json::Map::new();
            labels.insert((*s).to_owned(), serde_json::json!(s));
            let value = serde_json::json!({ "args": ["--flag", s], "value": s, "labels": labels });
            let text = emit(&value);
            assert!(text.contains(&format!("- '{s}'\n")), "{s:?} unquoted in a list:\n{text}");
            assert!(text.contains(&format!("value: '{s}'\n")), "{s:?} unquoted as a value:\n{text}");
            assert!(text.contains(&format!("  '{s}': '{s}'\n")), "{s:?} unquoted as a key:\n{text}");
            let back: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
            assert_eq!(back, value, "{s:?} does not round-trip:\n{text}");
        }
    }

    #[test]
    fn plain_strings_stay_plain_and_the_layout_is_serde_yaml_ngs() {
        for s in PLAIN {
            let value = serde_json::json!({ "args": [s], "value": s });
            let text = emit(&value);
            assert_eq!(text, serde_yaml_ng::to_string(&value).unwrap(), "{s:?}");
            let back: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
            assert_eq!(back, value);
        }
        let multiline = serde_json::json!({ "data": { "rules.yaml": "rules:\n- name: yes\n  rate: 10\n" } });
        assert_eq!(emit(&multiline), serde_yaml_ng::to_string(&multiline).unwrap());
    }

    #[test]
    fn numbers_and_bools_stay_unquoted_and_a_colliding_placeholder_prefix_is_avoided() {
        let value = serde_json::json!({
            "replicas": 3, "ratio": 0.5, "enabled": true, "none": null,
            "note": "yaml11-quoted-0-q", "flag": "on",
        });
        let text = emit(&value);
        assert!(
            text.contains("replicas: 3\n")
                && text.contains("enabled: true\n")
                && text.contains("none: null\n")
        );
        assert!(text.contains("flag: 'on'\n") && text.contains("note: yaml11-quoted-0-q\n"), "{text}");
        assert_eq!(serde_yaml_ng::from_str::<serde_json::Value>(&text).unwrap(), value);
    }

    #[test]
    fn the_examples_render_no_ambiguous_string_plain() {
        let full = render(include_str!("../../manifests/examples/full.yaml"), "default").unwrap();
        assert!(full.contains("- --appendonly\n        - 'yes'\n"), "{full}");
        for yaml in [
            full,
            render(include_str!("../../manifests/examples/minimal.yaml"), "default").unwrap(),
            render(include_str!("../../manifests/examples/local.yaml"), "default").unwrap(),
        ] {
            for token in plain_scalars(&yaml) {
                // What a YAML 1.1 reader would misread must be what the
                // object holds: a number, bool or null, not a string.
                if is_ambiguous_plain(token) {
                    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(token).unwrap();
                    assert!(!value.is_string(), "the string {token:?} is written plain");
                }
            }
        }
    }

    /// The plain scalars of block-style YAML as serde_yaml_ng writes it:
    /// after `- ` and `key: `, outside block scalars (`|`).
    fn plain_scalars(text: &str) -> Vec<&str> {
        let mut scalars = Vec::new();
        let mut block_opened_at: Option<usize> = None;
        for line in text.lines() {
            let indent = line.len() - line.trim_start().len();
            if let Some(opened) = block_opened_at {
                if line.trim().is_empty() || indent > opened {
                    continue;
                }
                block_opened_at = None;
            }
            let mut rest = line.trim_start();
            while let Some(item) = rest.strip_prefix("- ") {
                rest = item;
            }
            let scalar = rest.split_once(": ").map_or(rest, |(_, value)| value);
            if scalar.starts_with(['|', '>']) {
                block_opened_at = Some(indent);
            } else if !scalar.starts_with(['\'', '"']) && !scalar.ends_with(':') {
                scalars.push(scalar);
            }
        }
        scalars
    }
}
