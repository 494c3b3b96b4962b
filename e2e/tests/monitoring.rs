//! What the chart ships for monitoring, checked with Prometheus' own tool.
//!
//! The alerts (`charts/commerce-operator/files/alerts.yaml`): `promtool check rules` (valid PromQL and
//! rule files) and `promtool test rules` against the series written for
//! each alert (`files/alerts.test.yaml`). promtool is built from the Go
//! module pinned in e2e/prometheus/go.mod by `e2e/scripts/prometheus.sh`.
//!
//! Beyond what promtool can know: every alert has a test that expects it to
//! fire and a runbook section; every metric a rule reads is one the code
//! registers (a renamed metric would otherwise leave an alert that can
//! never fire); and the chart's PrometheusRule carries exactly these groups.
//!
//! The Grafana dashboards (`files/dashboards/*.json`): every panel's query
//! is valid PromQL (promtool checks each as a recording rule, with Grafana's
//! variables replaced by values) and reads only registered metrics; the
//! chart ships each as a ConfigMap for Grafana's dashboard sidecar.
//!
//! And one alert end to end: a real Prometheus scraping a local shop fires
//! CommercePaymentProviderUnavailable once the mock provider is switched off
//! and the payment worker's breaker has opened.

mod support;

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

/// `tool` (`promtool` or `prometheus`), built by e2e/scripts/prometheus.sh
/// if it is not cached yet.
fn prometheus_tool(tool: &str) -> Result<PathBuf> {
    let output = Command::new("bash")
        .arg(repo().join("e2e/scripts/prometheus.sh"))
        .args(["path", tool])
        .output()
        .context("running e2e/scripts/prometheus.sh")?;
    ensure!(
        output.status.success(),
        "prometheus.sh path {tool}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    ensure!(path.is_file(), "prometheus.sh printed {}", path.display());
    Ok(path)
}

fn promtool() -> Result<PathBuf> {
    prometheus_tool("promtool")
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

/// Every metric name the code registers, as Prometheus sees it: each
/// "commerce_..." string literal of the Rust sources (the names given to
/// `register` and to collectors' descriptors) with its exposition suffixes,
/// and the standard `process_*` metrics.
fn registered_metrics() -> Result<BTreeSet<String>> {
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
                    let is_name = |prefix| {
                        literal.starts_with(prefix)
                            && literal.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    };
                    if is_name("commerce_") || is_name("process_") {
                        registered.extend(exposed(literal));
                    }
                }
            }
        }
    }
    Ok(registered)
}

/// The metric names `text` (PromQL) reads.
fn metrics_read(text: &str) -> BTreeSet<String> {
    let mut read = BTreeSet::new();
    for prefix in ["commerce_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            let name: String =
                text[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            read.insert(name);
        }
    }
    read
}

#[test]
fn every_metric_a_rule_reads_is_registered_by_the_code() -> Result<()> {
    let registered = registered_metrics()?;
    let read = metrics_read(&std::fs::read_to_string(chart_file("files/alerts.yaml"))?);
    ensure!(read.len() >= 8, "the rules read only {read:?}");
    let unknown: Vec<&String> = read.iter().filter(|name| !registered.contains(*name)).collect();
    ensure!(unknown.is_empty(), "the rules read metrics no code registers: {unknown:?}");
    Ok(())
}

/// Every query of the dashboard files: (file, panel title, PromQL).
fn dashboard_queries() -> Result<Vec<(String, String, String)>> {
    let mut queries = Vec::new();
    let mut uids = BTreeSet::new();
    for entry in std::fs::read_dir(chart_file("files/dashboards"))? {
        let path = entry?.path();
        let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("{file} is not JSON"))?;
        let uid = dashboard["uid"].as_str().unwrap_or_default().to_owned();
        ensure!(!uid.is_empty() && uids.insert(uid.clone()), "{file}: uid {uid:?} missing or repeated");
        ensure!(dashboard["schemaVersion"].as_u64().is_some(), "{file}: no schemaVersion");
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            if panel["type"] == "row" {
                continue;
            }
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
            ensure!(!targets.is_empty(), "{file}: panel {title:?} has no query");
            for target in targets {
                let expr = target["expr"].as_str().unwrap_or_default().to_owned();
                ensure!(!expr.is_empty(), "{file}: panel {title:?} has an empty query");
                queries.push((file.clone(), title.clone(), expr));
            }
        }
    }
    ensure!(uids.len() >= 2, "dashboards found: {uids:?}");
    Ok(queries)
}

#[test]
fn every_dashboard_query_is_valid_promql_on_registered_metrics() -> Result<()> {
    let queries = dashboard_queries()?;
    // As recording rules, with Grafana's variables given values, so that
    // promtool parses each expression.
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(index, (_, _, expr))| {
            let expr = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*");
            serde_json::json!({ "record": format!("dashboard:query_{index}"), "expr": expr })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboards", "rules": rules }] });
    let dir = std::env::temp_dir().join(format!("commerce-dashboards-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("queries.yaml"), serde_yaml_ng::to_string(&file)?)?;
    let checked = run(&promtool()?, &["check", "rules", "queries.yaml"], &dir);
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", checked?);

    let registered = registered_metrics()?;
    for (file, title, expr) in &queries {
        let read = metrics_read(expr);
        ensure!(!read.is_empty(), "{file}: panel {title:?} reads no metric of the project: {expr}");
        let unknown: Vec<&String> = read.iter().filter(|name| !registered.contains(*name)).collect();
        ensure!(unknown.is_empty(), "{file}: panel {title:?} reads unregistered {unknown:?}: {expr}");
    }
    println!("{} dashboard queries checked", queries.len());
    Ok(())
}

#[test]
fn the_chart_ships_each_dashboard_as_a_configmap_for_grafanas_sidecar() -> Result<()> {
    let helm = helm()?;
    let chart = chart_file("").to_string_lossy().into_owned();
    let args = ["template", "commerce-operator", chart.as_str(), "--set", "metrics.dashboards.enabled=true"];
    let rendered = run(&helm, &args, &repo())?;
    let maps: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&rendered)
        .map(Value::deserialize)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|document| document["kind"] == "ConfigMap")
        .collect();
    let files: Vec<String> = std::fs::read_dir(chart_file("files/dashboards"))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    ensure!(maps.len() == files.len(), "{} ConfigMaps for {} dashboards", maps.len(), files.len());
    for file in &files {
        let shipped = maps
            .iter()
            .find_map(|map| map["data"][file.as_str()].as_str())
            .with_context(|| format!("no ConfigMap carries {file}"))?;
        let original = std::fs::read_to_string(chart_file("files/dashboards").join(file))?;
        ensure!(shipped.trim_end() == original.trim_end(), "{file} is shipped changed");
    }
    ensure!(maps.iter().all(|map| map["metadata"]["labels"]["grafana_dashboard"] == "1"));
    Ok(())
}

fn helm() -> Result<PathBuf> {
    Ok(PathBuf::from(std::env::var("COMMERCE_K8S_BIN_DIR").context(
        "COMMERCE_K8S_BIN_DIR is not set: run the tests with `source e2e/infra.env` (or `make test`)",
    )?)
    .join("helm"))
}

#[test]
fn the_charts_prometheus_rule_carries_exactly_the_tested_groups() -> Result<()> {
    let helm = helm()?;
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

/// A Prometheus server on loopback, stopped by its PID when dropped.
struct Prometheus {
    url: String,
    process: support::procs::Proc,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts a server scraping `targets` (job, `host:port`) every second,
    /// evaluating `rules` every second.
    fn start(targets: &[(&str, String)], rules: &Path) -> Result<Self> {
        let binary = prometheus_tool("prometheus")?;
        let dir = std::env::temp_dir().join(format!("commerce-prometheus-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("data"))?;
        let scrape: Vec<serde_json::Value> = targets
            .iter()
            .map(|(job, target)| serde_json::json!({ "job_name": job, "static_configs": [{ "targets": [target] }] }))
            .collect();
        let config = serde_json::json!({
            "global": { "scrape_interval": "1s", "evaluation_interval": "1s" },
            "rule_files": [rules],
            "scrape_configs": scrape,
        });
        std::fs::write(dir.join("prometheus.yml"), serde_yaml_ng::to_string(&config)?)?;
        let port = support::procs::free_port();
        let args = vec![
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        let process =
            support::procs::Proc::spawn("prometheus", &binary, args, Vec::new(), dir.join("prometheus.log"))?;
        Ok(Self { url: format!("http://127.0.0.1:{port}"), process, dir })
    }

    /// The state of alert `name` (`pending`, `firing`), if Prometheus has it.
    async fn alert_state(&self, http: &reqwest::Client, name: &str) -> Result<Option<String>> {
        let body: serde_json::Value =
            http.get(format!("{}/api/v1/alerts", self.url)).send().await?.json().await?;
        Ok(body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|alert| alert["labels"]["alertname"] == name)
            .and_then(|alert| alert["state"].as_str().map(str::to_owned)))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.process.stop(std::time::Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_real_prometheus_fires_payment_provider_unavailable_when_the_provider_goes_away() -> Result<()> {
    use std::time::{Duration, Instant};

    use commerce_topology::Service;
    use support::api::Api;
    use support::shop::{Shop, ShopOptions};

    let shop = Shop::start(ShopOptions::default()).await?;
    let payment_admin = format!("127.0.0.1:{}", shop.admin_port(Service::Payment));
    let prometheus =
        Prometheus::start(&[("payment", payment_admin.clone())], &chart_file("files/alerts.yaml"))?;
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?;
    let alert = "CommercePaymentProviderUnavailable";
    support::wait_for("Prometheus to be ready", Duration::from_secs(60), || async {
        let ready = http.get(format!("{}/-/ready", prometheus.url)).send().await?.status().is_success();
        Ok(ready.then_some(()))
    })
    .await
    .with_context(|| prometheus.process.log_tail(20))?;

    // A healthy shop: the alert is not even pending.
    let api = Api::new(&shop);
    let admin = api.admin().await?;
    let category = api.create_category(&admin, "Alerts").await?;
    let product = api.create_product(&admin, &category, "Alarm clock", 1500, 50).await?;
    let customer = api.register_customer("alerted").await?;
    support::wait_for("a first scrape of the payment service", Duration::from_secs(60), || async {
        let query = format!("{}/api/v1/query?query=up%7Bjob%3D%22payment%22%7D", prometheus.url);
        let body: serde_json::Value = http.get(query).send().await?.json().await?;
        Ok((body["data"]["result"][0]["value"][1] == "1").then_some(()))
    })
    .await?;
    ensure!(prometheus.alert_state(&http, alert).await?.is_none(), "the alert is active on a healthy shop");

    // The provider goes away; orders come; the breaker opens.
    let switched = http.post(format!("http://{payment_admin}/mock-provider/unavailable")).send().await?;
    ensure!(switched.status().is_success(), "switching the mock off: {}", switched.status());
    for _ in 0..4 {
        api.order(&customer, &[(product.as_str(), 1)], "tok_visa").await?;
    }
    let (_, opened) = support::wait_for("the breaker to open", Duration::from_secs(120), || async {
        let text = http.get(format!("http://{payment_admin}/metrics")).send().await?.text().await?;
        Ok(text.lines().any(|line| line == "commerce_payment_provider_circuit_open 1").then_some(()))
    })
    .await?;
    let open_since = Instant::now();
    println!("the breaker opened {opened:?} after the provider went away");
    // `for: 2m`: pending first, firing two minutes later.
    support::wait_for("the alert to be pending", Duration::from_secs(30), || async {
        Ok(prometheus.alert_state(&http, alert).await?.filter(|state| state == "pending"))
    })
    .await?;
    support::wait_for("the alert to fire", Duration::from_secs(240), || async {
        Ok(prometheus.alert_state(&http, alert).await?.filter(|state| state == "firing"))
    })
    .await
    .with_context(|| prometheus.process.log_tail(20))?;
    println!(
        "FIGURE alert end to end: {alert} fired {:.1} s after the breaker opened (for: 2m, scrape and evaluation every 1 s)",
        open_since.elapsed().as_secs_f64()
    );

    // The provider returns: the charges go through and the alert resolves.
    let switched = http.post(format!("http://{payment_admin}/mock-provider/available")).send().await?;
    ensure!(switched.status().is_success(), "switching the mock on: {}", switched.status());
    support::wait_for("the alert to resolve", Duration::from_secs(120), || async {
        Ok(prometheus.alert_state(&http, alert).await?.is_none().then_some(()))
    })
    .await?;
    drop(prometheus);
    shop.stop()
}
