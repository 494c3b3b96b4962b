//! The alerts the chart ships (`charts/commerce-operator/files/alerts.yaml`)
//! checked by Prometheus' own tool: `promtool check rules` (valid PromQL and
//! rule files) and `promtool test rules` against the series written for
//! each alert (`files/alerts.test.yaml`). promtool is built from the Go
//! module pinned in e2e/prometheus/go.mod by `e2e/scripts/promtool.sh`.
//!
//! Beyond what promtool can know: every alert has a test that expects it to
//! fire and a runbook section; every metric a rule reads is one the code
//! registers (a renamed metric would otherwise leave an alert that can
//! never fire); and the chart's PrometheusRule carries exactly these groups.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use serde::Deserialize as _;
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn chart_file(name: &str) -> PathBuf {
    repo().join("charts/commerce-operator").join(name)
}

/// Runs `program args` in `dir`; its stdout, or an error with its output.
fn run(program: &Path, args: &[&str], dir: &Path) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    ensure!(output.status.success(), "{} {} failed:\n{text}", program.display(), args.join(" "));
    Ok(text)
}

fn promtool() -> Result<PathBuf> {
    let script = repo().join("e2e/scripts/promtool.sh");
    let path = run(Path::new("bash"), &[&script.to_string_lossy(), "path"], &repo())?;
    let path = PathBuf::from(path.lines().last().unwrap_or_default().trim());
    ensure!(path.is_file(), "promtool.sh printed {}", path.display());
    Ok(path)
}

/// The alert names of a rule file.
fn alert_names(rules: &Value) -> BTreeSet<String> {
    rules["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_sequence().into_iter().flatten())
        .filter_map(|rule| rule["alert"].as_str().map(str::to_owned))
        .collect()
}

fn read_yaml(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_yaml_ng::from_str(&text)?)
}

#[test]
fn promtool_finds_the_rules_valid_and_every_alert_fires_on_its_series_and_only_there() -> Result<()> {
    let promtool = promtool()?;
    let files = chart_file("files");
    let checked = run(&promtool, &["check", "rules", "alerts.yaml"], &files)?;
    println!("{checked}");
    let tested = run(&promtool, &["test", "rules", "alerts.test.yaml"], &files)?;
    println!("{tested}");
    ensure!(tested.contains("SUCCESS"), "promtool test rules: {tested}");
    Ok(())
}

#[test]
fn every_alert_has_a_test_that_fires_it_and_a_runbook_section() -> Result<()> {
    let rules = read_yaml(&chart_file("files/alerts.yaml"))?;
    let alerts = alert_names(&rules);
    ensure!(alerts.len() >= 10, "only {} alerts: {alerts:?}", alerts.len());
    let tests = read_yaml(&chart_file("files/alerts.test.yaml"))?;
    let fired: BTreeSet<String> = tests["tests"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|test| test["alert_rule_test"].as_sequence().into_iter().flatten())
        .filter(|case| case["exp_alerts"].as_sequence().is_some_and(|expected| !expected.is_empty()))
        .filter_map(|case| case["alertname"].as_str().map(str::to_owned))
        .collect();
    let untested: Vec<&String> = alerts.difference(&fired).collect();
    ensure!(untested.is_empty(), "alerts no test expects to fire: {untested:?}");
    let runbooks = std::fs::read_to_string(chart_file("runbooks.md"))?;
    for rule in rules["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_sequence().into_iter().flatten())
    {
        let alert = rule["alert"].as_str().context("a rule without a name")?;
        ensure!(runbooks.contains(&format!("\n## {alert}\n")), "no runbook section for {alert}");
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or_default();
        ensure!(
            url == format!("charts/commerce-operator/runbooks.md#{}", alert.to_lowercase()),
            "{alert}'s runbook_url is {url:?}"
        );
    }
    Ok(())
}

/// The metric names a registration in the code gives to the families of
/// `name` as Prometheus sees them (counters gain `_total`, histograms
/// `_bucket`, `_sum` and `_count`).
fn exposed(name: &str) -> [String; 5] {
    ["", "_total", "_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}"))
}

#[test]
fn every_metric_a_rule_reads_is_registered_by_the_code() -> Result<()> {
    // Every "commerce_..." string literal of the Rust sources: the names
    // given to `register` and to collectors' descriptors.
    let mut registered = BTreeSet::new();
    let mut pending = vec![repo().join("services"), repo().join("operator")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path)?;
                for literal in text.split('"').skip(1).step_by(2) {
                    if literal.starts_with("commerce_")
                        && literal.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        registered.extend(exposed(literal));
                    }
                }
            }
        }
    }
    let rules = std::fs::read_to_string(chart_file("files/alerts.yaml"))?;
    let mut read = BTreeSet::new();
    for (at, _) in rules.match_indices("commerce_") {
        let name: String = rules[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        read.insert(name);
    }
    ensure!(read.len() >= 8, "the rules read only {read:?}");
    let unknown: Vec<&String> = read.iter().filter(|name| !registered.contains(*name)).collect();
    ensure!(unknown.is_empty(), "the rules read metrics no code registers: {unknown:?}");
    Ok(())
}

#[test]
fn the_charts_prometheus_rule_carries_exactly_the_tested_groups() -> Result<()> {
    let helm = PathBuf::from(std::env::var("COMMERCE_K8S_BIN_DIR").context(
        "COMMERCE_K8S_BIN_DIR is not set: run the tests with `source e2e/infra.env` (or `make test`)",
    )?)
    .join("helm");
    let chart = chart_file("").to_string_lossy().into_owned();
    let args = [
        "template",
        "commerce-operator",
        chart.as_str(),
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.prometheusRule.labels.release=prometheus",
    ];
    let rendered = run(&helm, &args, &repo())?;
    let rule = serde_yaml_ng::Deserializer::from_str(&rendered)
        .map(Value::deserialize)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .find(|document| document["kind"] == "PrometheusRule")
        .context("no PrometheusRule rendered")?;
    ensure!(rule["metadata"]["labels"]["release"] == "prometheus", "{:?}", rule["metadata"]);
    let shipped = read_yaml(&chart_file("files/alerts.yaml"))?;
    ensure!(
        rule["spec"]["groups"] == shipped["groups"],
        "the PrometheusRule's groups differ from alerts.yaml"
    );
    let default = run(&helm, &args[..3], &repo())?;
    ensure!(!default.contains("kind: PrometheusRule"), "a PrometheusRule without being asked for");
    Ok(())
}
