//! The reconciler against a fake apiserver on a `tower-test` mock: every
//! request the reconciler sends is answered from an in-memory store and
//! recorded, so that the tests can say exactly which writes a reconcile made
//! (none, when there is nothing to do).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use commerce_api::crd::policy::{
    CONDITION_ACCEPTED, REASON_ACCEPTED, REASON_GATEWAY_DISABLED, REASON_RULES_BUDGET_EXCEEDED,
    REASON_STACK_INVALID, REASON_STACK_PAUSED, REASON_TARGET_NOT_FOUND,
};
use commerce_api::crd::stack::{
    CONDITION_DATABASES_CLEANED_UP, CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY,
    CONDITION_RECONCILING, CONDITION_STALLED, CONDITION_TOPICS_CLEANED_UP, TopicStatus,
};
use commerce_api::gateway_rules::MAX_RULES_FILE_BYTES;
use commerce_api::{CommerceStack, RateLimitPolicy};
use commerce_operator::Error;
use commerce_operator::build::monitoring::PodMonitorApi;
use commerce_operator::build::{self, names};
use commerce_operator::external::{
    DatabasePlan, ExternalState, KafkaCluster, KafkaUserPlan, PostgresServer, TopicPlan,
};
use commerce_operator::metrics::Metrics;
use commerce_operator::reconcile::admin_secret::{hold_finalizer, hold_label};
use commerce_operator::reconcile::policy::reconcile_policy;
use commerce_operator::reconcile::{
    Context, FINALIZER, backoff::Backoffs, error_policy, reconcile, reconcile_stack,
};
use commerce_topology::all_topics;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::client::Body;
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};

const UID: &str = "0b6f4b0e-1f0a-4a55-9a55-2f3c4d5e6f70";

/// One request as the fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    /// Path and query.
    uri: String,
    /// Resource plural, e.g. `deployments`.
    plural: String,
    /// Object name, if the request names one.
    name: Option<String>,
    /// The JSON body, `null` when there is none.
    body: Value,
}

impl Seen {
    fn is_write(&self) -> bool {
        self.method != Method::GET
    }
}

/// The Status the fake answers a refused apply with: code, reason, message.
type Refusal = (u16, String, String);

/// An in-memory apiserver, enough for the reconciler.
#[derive(Default)]
struct FakeApi {
    /// Objects by (plural, namespace, name).
    objects: Mutex<BTreeMap<(String, String, String), Value>>,
    seen: Mutex<Vec<Seen>>,
    /// Requests (method, plural) that fail with a 500.
    failing: Mutex<Vec<(Method, String)>>,
    /// Applies of one object (plural, name) that the apiserver refuses, with
    /// the Status it answers.
    rejected: Mutex<BTreeMap<(String, String), Refusal>>,
    resource_version: Mutex<u64>,
    /// Whether the fake serves the prometheus-operator's PodMonitor kind
    /// (discovery of monitoring.coreos.com/v1 lists it; else 404).
    serves_pod_monitors: std::sync::atomic::AtomicBool,
}

/// `(namespace, plural, name, subresource)` of a request path; the
/// namespace is empty for a cluster-scoped kind (a StorageClass).
fn parse_path(path: &str) -> (String, String, Option<String>, Option<String>) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let get = |i: usize| parts.get(i).map(|s| (*s).to_owned());
    match parts.iter().position(|p| *p == "namespaces") {
        Some(at) => (get(at + 1).unwrap(), get(at + 2).unwrap(), get(at + 3), get(at + 4)),
        // `/api/v1/<plural>/...` or `/apis/<group>/<version>/<plural>/...`.
        None => {
            let at = if parts[0] == "api" { 2 } else { 3 };
            (String::new(), get(at).unwrap(), get(at + 1), get(at + 2))
        }
    }
}

fn query_param(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.replace("%3D", "=").replace("%2C", ",").replace("%2F", "/"))
    })
}

fn matches_selector(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (key, value) = term.split_once('=').unwrap();
        object["metadata"]["labels"][key].as_str() == Some(value)
    })
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap(),
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code}),
    )
}

impl FakeApi {
    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = body.collect_bytes().await.unwrap();
        if parts.uri.path() == "/apis/monitoring.coreos.com/v1" {
            self.seen.lock().unwrap().push(Seen {
                method: parts.method.clone(),
                uri: parts.uri.to_string(),
                plural: String::new(),
                name: None,
                body: Value::Null,
            });
            if !self.serves_pod_monitors.load(std::sync::atomic::Ordering::Relaxed) {
                return status_response(404, "NotFound", "the server could not find the requested resource");
            }
            let resources = json!({
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "monitoring.coreos.com/v1",
                "resources": [{
                    "name": "podmonitors", "singularName": "podmonitor", "namespaced": true, "kind": "PodMonitor",
                    "verbs": ["delete", "get", "list", "patch", "create", "update", "watch"],
                }],
            });
            return json_response(StatusCode::OK, &resources);
        }
        let (namespace, plural, name, subresource) = parse_path(parts.uri.path());
        self.seen.lock().unwrap().push(Seen {
            method: parts.method.clone(),
            uri: parts.uri.to_string(),
            plural: plural.clone(),
            name: name.clone(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        if self.failing.lock().unwrap().contains(&(parts.method.clone(), plural.clone())) {
            return status_response(500, "InternalError", "injected failure");
        }
        if parts.method == Method::PATCH
            && let Some(name) = &name
            && let Some((code, reason, message)) =
                self.rejected.lock().unwrap().get(&(plural.clone(), name.clone()))
        {
            return status_response(*code, reason, message);
        }
        let mut objects = self.objects.lock().unwrap();
        match (parts.method.clone(), name) {
            (Method::GET, None) => {
                let selector = query_param(&parts.uri, "labelSelector").unwrap_or_default();
                let items: Vec<Value> = objects
                    .iter()
                    .filter(|((p, ns, _), object)| {
                        *p == plural && *ns == namespace && matches_selector(object, &selector)
                    })
                    .map(|(_, object)| object.clone())
                    .collect();
                json_response(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            (Method::GET, Some(name)) => match objects.get(&(plural, namespace, name)) {
                Some(object) => json_response(StatusCode::OK, object),
                None => status_response(404, "NotFound", "not found"),
            },
            (Method::PATCH, Some(name)) => {
                let patch: Value = serde_json::from_slice(&body).unwrap();
                let key = (plural, namespace, name);
                let version = self.next_version();
                let is_merge =
                    parts.headers.get("content-type").is_some_and(|v| v == "application/merge-patch+json");
                if is_merge {
                    let Some(object) = objects.get_mut(&key) else {
                        return status_response(404, "NotFound", "not found");
                    };
                    let expected = &patch["metadata"]["resourceVersion"];
                    if !expected.is_null() && *expected != object["metadata"]["resourceVersion"] {
                        return status_response(409, "Conflict", "the object has been modified");
                    }
                    // As the apiserver: an object being deleted takes no new
                    // finalizers.
                    let being_deleted = !object["metadata"]["deletionTimestamp"].is_null();
                    let had = object["metadata"]["finalizers"].clone();
                    let added = patch["metadata"]["finalizers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|f| !had.as_array().is_some_and(|had| had.contains(f)));
                    if being_deleted && added {
                        return status_response(
                            422,
                            "Invalid",
                            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                        );
                    }
                    merge(object, &patch);
                    object["metadata"]["resourceVersion"] = json!(version);
                    let object = object.clone();
                    // The apiserver removes an object being deleted once
                    // its last finalizer is gone.
                    let finalizers_gone =
                        object["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
                    if !object["metadata"]["deletionTimestamp"].is_null() && finalizers_gone {
                        objects.remove(&key);
                    }
                    return json_response(StatusCode::OK, &object);
                }
                if subresource.as_deref() == Some("status") {
                    let Some(object) = objects.get_mut(&key) else {
                        return status_response(404, "NotFound", "not found");
                    };
                    object["status"] = patch["status"].clone();
                    object["metadata"]["resourceVersion"] = json!(version);
                    return json_response(StatusCode::OK, object);
                }
                // As the apiserver: a ConfigMap holds at most 1 MiB of data.
                let data_len = |data: &Value| {
                    data.as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                        .sum::<usize>()
                };
                if key.0 == "configmaps" && data_len(&patch["data"]) > 1024 * 1024 {
                    let message = format!(
                        "ConfigMap {:?} is invalid: []: Too long: may not be more than 1048576 bytes",
                        key.2
                    );
                    return status_response(422, "Invalid", &message);
                }
                let mut object = patch;
                let uid = objects
                    .get(&key)
                    .map(|o| o["metadata"]["uid"].clone())
                    .unwrap_or(json!(format!("uid-{version}")));
                object["metadata"]["uid"] = uid;
                object["metadata"]["resourceVersion"] = json!(version);
                objects.insert(key, object.clone());
                json_response(StatusCode::OK, &object)
            }
            (Method::DELETE, Some(name)) => {
                let key = (plural, namespace, name);
                let Some(object) = objects.get(&key) else {
                    return status_response(404, "NotFound", "not found");
                };
                let expected_uid = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .map(|body| body["preconditions"]["uid"].clone())
                    .unwrap_or(Value::Null);
                if !expected_uid.is_null() && expected_uid != object["metadata"]["uid"] {
                    return status_response(409, "Conflict", "Precondition failed: UID in precondition");
                }
                json_response(StatusCode::OK, &objects.remove(&key).unwrap())
            }
            (Method::POST, None) => {
                let mut object: Value = serde_json::from_slice(&body).unwrap();
                object["metadata"]["resourceVersion"] = json!(self.next_version());
                json_response(StatusCode::CREATED, &object)
            }
            (method, name) => panic!("the fake apiserver does not serve {method} {plural} {name:?}"),
        }
    }

    fn next_version(&self) -> String {
        let mut version = self.resource_version.lock().unwrap();
        *version += 1;
        version.to_string()
    }

    fn put(&self, plural: &str, object: Value) {
        let namespace = object["metadata"]["namespace"].as_str().unwrap().to_owned();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        self.objects.lock().unwrap().insert((plural.into(), namespace, name), object);
    }

    fn get(&self, plural: &str, name: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(&(plural.to_owned(), "shop".to_owned(), name.to_owned())).cloned()
    }

    fn edit(&self, plural: &str, name: &str, edit: impl FnOnce(&mut Value)) {
        let mut objects = self.objects.lock().unwrap();
        edit(objects.get_mut(&(plural.to_owned(), "shop".to_owned(), name.to_owned())).unwrap());
    }

    /// The stack as stored, status included: what the next watch event
    /// would hand the reconciler.
    fn stack(&self) -> CommerceStack {
        serde_json::from_value(self.get("commercestacks", "shop").unwrap()).unwrap()
    }

    /// Forgets the requests seen so far.
    fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    fn fail(&self, method: Method, plural: &str) {
        self.failing.lock().unwrap().push((method, plural.into()));
    }

    /// Makes every apply of one object fail with the given Status.
    fn reject(&self, plural: &str, name: &str, code: u16, reason: &str, message: &str) {
        self.rejected
            .lock()
            .unwrap()
            .insert((plural.into(), name.into()), (code, reason.into(), message.into()));
    }

    fn heal(&self) {
        self.failing.lock().unwrap().clear();
        self.rejected.lock().unwrap().clear();
    }
}

/// Records what the reconciler asked of Kafka and Postgres, and fails on
/// request.
#[derive(Default)]
struct FakeExternal {
    calls: Mutex<Vec<String>>,
    /// Every call fails.
    failing: Mutex<bool>,
    /// Topic deletions fail (an unreachable Kafka), the rest works.
    failing_topic_deletions: Mutex<bool>,
    /// The names given to `drop_databases`, call after call.
    dropped: Mutex<Vec<String>>,
}

impl FakeExternal {
    fn record(&self, call: String) -> Result<(), Error> {
        let topic_deletion = call.starts_with("delete ");
        self.calls.lock().unwrap().push(call);
        if *self.failing.lock().unwrap() || (topic_deletion && *self.failing_topic_deletions.lock().unwrap())
        {
            return Err(Error::EnsureTopics {
                brokers: "127.0.0.1:1".into(),
                source: Box::new(commerce_platform::events::TopicAdminError::FetchMetadata(
                    rdkafka::error::KafkaError::Canceled,
                )),
            });
        }
        Ok(())
    }

    fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl ExternalState for FakeExternal {
    async fn ensure_topics(
        &self,
        kafka: &KafkaCluster,
        topics: &[TopicPlan],
    ) -> Result<Vec<TopicStatus>, Error> {
        self.record(format!("ensure {} topics at {}", topics.len(), kafka.brokers))?;
        Ok(topics.iter().map(|t| TopicStatus { name: t.name.clone(), partitions: t.partitions }).collect())
    }

    async fn ensure_databases(
        &self,
        server: &PostgresServer,
        databases: &[DatabasePlan],
    ) -> Result<(), Error> {
        self.record(format!("ensure {} databases at {} as {}", databases.len(), server.host, server.user))
    }

    async fn drop_databases(&self, server: &PostgresServer, databases: &[String]) -> Result<(), Error> {
        self.record(format!("drop {} databases at {} as {}", databases.len(), server.host, server.user))?;
        self.dropped.lock().unwrap().extend(databases.iter().cloned());
        Ok(())
    }

    async fn delete_topics(&self, kafka: &KafkaCluster, topics: &[TopicPlan]) -> Result<(), Error> {
        self.record(format!("delete {} topics at {}", topics.len(), kafka.brokers))
    }

    async fn ensure_kafka_user(&self, kafka: &KafkaCluster, user: &KafkaUserPlan) -> Result<(), Error> {
        let signed_in =
            kafka.settings.iter().find(|(key, _)| key == "sasl.username").map(|(_, v)| v.as_str());
        self.record(format!(
            "ensure kafka user {} ({:?}, {} ACLs on {}) at {} as {}",
            user.user,
            user.mechanism,
            user.acls.len(),
            user.acls
                .iter()
                .map(|acl| acl.resource_name.as_str())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(","),
            kafka.brokers,
            signed_in.unwrap_or("nobody"),
        ))
    }

    async fn delete_kafka_user(&self, kafka: &KafkaCluster, user: &str) -> Result<(), Error> {
        self.record(format!("delete kafka user {user} at {}", kafka.brokers))
    }
}

/// A context whose client talks to `fake`.
fn context(fake: &Arc<FakeApi>) -> Arc<Context> {
    context_with(fake, Arc::new(FakeExternal::default()))
}

fn context_with(fake: &Arc<FakeApi>, external: Arc<FakeExternal>) -> Arc<Context> {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = fake.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            respond.send_response(server.handle(request).await);
        }
    });
    let client = Client::new(service, "default");
    let reporter = Reporter { controller: names::MANAGER.into(), instance: None };
    Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        backoffs: Backoffs::default(),
        metrics: Arc::new(Metrics::default()),
        external,
    })
}

/// The minimal example, as the apiserver would hold it.
fn stored_stack(edit: impl FnOnce(&mut Value)) -> Value {
    let yaml = include_str!("../../manifests/examples/minimal.yaml");
    let mut stack: Value = serde_json::to_value(build::parse_stack(yaml).unwrap()).unwrap();
    stack["metadata"]["uid"] = json!(UID);
    stack["metadata"]["generation"] = json!(1);
    stack["metadata"]["resourceVersion"] = json!("1");
    edit(&mut stack);
    stack
}

/// A fake cluster holding the minimal stack.
fn cluster_with(edit: impl FnOnce(&mut Value)) -> Arc<FakeApi> {
    let fake = Arc::new(FakeApi::default());
    fake.put("commercestacks", stored_stack(edit));
    // The external Postgres' admin, as the example's comment creates it.
    fake.put(
        "secrets",
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "postgres-admin", "namespace": "shop"},
            "data": {"username": "Y29tbWVyY2VfYWRtaW4=", "password": "c2VjcmV0"},
        }),
    );
    fake
}

fn writes(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.is_write())
        .map(|s| format!("{} {}/{}", s.method, s.plural, s.name.as_deref().unwrap_or("-")))
        .collect()
}

fn object_writes(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter().filter(|s| s.is_write() && s.plural != "events" && s.plural != "commercestacks").collect()
}

fn condition(stack: &CommerceStack, type_: &str) -> (String, String) {
    let condition = full_condition(stack, type_).expect("the condition");
    (condition.status, condition.reason)
}

fn full_condition(stack: &CommerceStack, type_: &str) -> Option<Condition> {
    let status = stack.status.as_ref().expect("a status");
    status.conditions.iter().find(|c| c.type_ == type_).cloned()
}

/// The notes of the Events with `reason` among the requests seen.
fn event_notes(seen: &[Seen], reason: &str) -> Vec<String> {
    seen.iter()
        .filter(|s| s.plural == "events" && s.method == Method::POST && s.body["reason"] == reason)
        .map(|s| s.body["note"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The finalizers of an object in the fake.
fn finalizers(fake: &FakeApi, plural: &str, name: &str) -> Vec<String> {
    let object = fake.get(plural, name).expect("the object");
    serde_json::from_value(object["metadata"]["finalizers"].clone()).unwrap_or_default()
}

/// Marks an object deleted now, as `kubectl delete` does to an object with
/// finalizers.
fn mark_deleted(fake: &FakeApi, plural: &str, name: &str) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    fake.edit(plural, name, |object| object["metadata"]["deletionTimestamp"] = json!(now));
}

/// Marks the stack deleted long ago, beyond the cleanup grace period.
fn mark_deleted_long_ago(fake: &FakeApi) {
    fake.edit("commercestacks", "shop", |stack| {
        stack["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z")
    });
}

/// The minimal stack under `deletionPolicy: Delete`, reconciled once.
async fn reconciled_delete_stack(
    edit: impl FnOnce(&mut Value),
) -> (Arc<FakeApi>, Arc<FakeExternal>, Arc<Context>) {
    let fake = cluster_with(|stack| {
        stack["spec"]["deletionPolicy"] = json!("Delete");
        edit(stack);
    });
    let external = Arc::new(FakeExternal::default());
    let ctx = context_with(&fake, external.clone());
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    external.take_calls();
    fake.take_seen();
    (fake, external, ctx)
}

/// Every object `build` wants for the stored stack.
fn desired_objects(fake: &FakeApi) -> Vec<build::DesiredObject> {
    let stack = fake.stack();
    let valid = commerce_operator::validate::validate(&stack, "shop").unwrap();
    build::build(&valid, &[], &build::secrets::SecretValues::placeholders(), PodMonitorApi::Missing).unwrap()
}

/// `Kind/name` of the desired objects the fake does not hold.
fn missing_objects(fake: &FakeApi) -> Vec<String> {
    desired_objects(fake)
        .iter()
        .filter(|o| fake.get(&o.resource.plural, o.name()).is_none())
        .map(build::DesiredObject::display)
        .collect()
}

/// Marks every Deployment available, as kube-controller-manager would.
fn make_deployments_available(fake: &FakeApi) {
    let mut objects = fake.objects.lock().unwrap();
    for ((plural, _, _), deployment) in objects.iter_mut() {
        if plural == "deployments" {
            deployment["status"] =
                json!({"replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1});
        }
    }
}

/// Disables the notification service: a new generation of the stack.
fn disable_notification(fake: &FakeApi) {
    fake.edit("commercestacks", "shop", |stack| {
        stack["spec"]["services"] = json!({"notification": {"enabled": false}});
        stack["metadata"]["generation"] = json!(2);
    });
}

#[tokio::test]
async fn a_new_stack_gets_every_object_applied_owned_and_a_status() {
    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    let action = reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(commerce_operator::reconcile::RESYNC));

    let seen = fake.take_seen();
    let applied = object_writes(&seen);
    let stack = fake.stack();
    let valid = commerce_operator::validate::validate(&stack, "shop").unwrap();
    let expected =
        build::build(&valid, &[], &build::secrets::SecretValues::placeholders(), PodMonitorApi::Missing)
            .unwrap();
    assert_eq!(applied.len(), expected.len(), "{:#?}", writes(&seen));
    for request in &applied {
        assert_eq!(request.method, Method::PATCH);
        assert!(
            request.uri.contains("fieldManager=commerce-operator") && request.uri.contains("force=true"),
            "{}",
            request.uri
        );
    }
    let owned = |o: &&Value| o["metadata"]["labels"][names::MANAGED_BY_LABEL] == names::MANAGER;
    for object in fake.objects.lock().unwrap().values().filter(owned) {
        assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], UID, "{}", object["metadata"]["name"]);
    }
    let status_writes: Vec<&Seen> =
        seen.iter().filter(|s| s.plural == "commercestacks" && s.is_write()).collect();
    assert_eq!(status_writes.len(), 1);
    assert!(status_writes[0].uri.contains("/status"));
    assert_eq!(condition(&stack, CONDITION_PROGRESSING), ("True".into(), "Applied".into()));
    assert_eq!(stack.status.unwrap().ready_services.as_deref(), Some("0/15"));
    assert!(seen.iter().any(|s| s.plural == "events" && s.method == Method::POST), "an Applied event");
    assert!(stack.metadata.finalizers.is_none(), "deletionPolicy Retain needs no finalizer");
}

#[tokio::test]
async fn topics_and_databases_are_ensured_and_shown_in_the_status() {
    let fake = cluster_with(|_| {});
    let external = Arc::new(FakeExternal::default());
    let ctx = context_with(&fake, external.clone());
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(
        external.take_calls(),
        [
            format!("ensure {} topics at kafka-0.kafka.infra.svc:9092", all_topics().len()),
            "ensure 13 databases at postgres.infra.svc as commerce_admin".to_owned(),
        ]
    );
    let status = fake.stack().status.unwrap();
    assert_eq!(status.topics.len(), all_topics().len());
    // The real names: the stack's (namespace `shop`, stack `shop`).
    let names = commerce_operator::build::names::external_names("shop", "shop");
    let listed: Vec<&str> = status.topics.iter().map(|t| t.name.as_str()).collect();
    let expected: Vec<String> = all_topics().iter().map(|spec| names.topic(spec.name)).collect();
    assert_eq!(listed, expected);
    assert!(listed.iter().all(|t| t.starts_with("shop.shop.commerce.")), "{listed:?}");
    let order = status.databases.iter().find(|d| d.service == "order").unwrap();
    assert_eq!(
        (order.name.as_str(), order.secret_name.as_str()),
        (names.database(commerce_topology::Service::Order).as_str(), "shop-db-order")
    );
    assert_eq!(order.name, "shop_shop_order");
}

#[tokio::test]
async fn a_broken_broker_does_not_hold_back_the_deployments() {
    let fake = cluster_with(|_| {});
    let external = Arc::new(FakeExternal::default());
    *external.failing.lock().unwrap() = true;
    let ctx = context_with(&fake, external);
    let error = reconcile_stack(&fake.stack(), &ctx).await.unwrap_err();
    assert!(matches!(error, Error::EnsureTopics { .. }), "{error}");
    assert!(fake.get("deployments", "shop-order").is_some(), "the Deployments were applied first");
    let stack = fake.stack();
    assert_eq!(condition(&stack, CONDITION_DEGRADED), ("True".into(), "ReconcileFailed".into()));
    assert_eq!(condition(&stack, CONDITION_READY).1, "ServicesUnavailable");
}

#[tokio::test]
async fn a_delete_policy_adds_a_finalizer_that_cleans_up_and_lets_the_stack_go() {
    let fake = cluster_with(|stack| stack["spec"]["deletionPolicy"] = json!("Delete"));
    let external = Arc::new(FakeExternal::default());
    let ctx = context_with(&fake, external.clone());
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(fake.stack().metadata.finalizers, Some(vec![FINALIZER.to_owned()]));
    external.take_calls();

    fake.edit("commercestacks", "shop", |stack| {
        stack["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z")
    });
    fake.take_seen();
    // Deleted long ago: still, a cleanup that works is done, not skipped.
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    // Both kinds, each on its own (in either order).
    let mut calls = external.take_calls();
    calls.sort();
    assert_eq!(
        calls,
        [
            format!("delete {} topics at kafka-0.kafka.infra.svc:9092", all_topics().len()),
            "drop 13 databases at postgres.infra.svc as commerce_admin".to_owned(),
        ]
    );
    assert!(fake.get("commercestacks", "shop").is_none(), "the finalizer was removed and the stack is gone");
}

#[tokio::test]
async fn a_per_stack_kafka_user_is_made_with_a_generated_secret_the_services_use_and_goes_with_the_stack() {
    let fake = cluster_with(|stack| {
        stack["spec"]["deletionPolicy"] = json!("Delete");
        stack["spec"]["kafka"]["external"]["sasl"] =
            json!({"secretName": "kafka-admin", "serviceUser": "PerStack"});
    });
    fake.put(
        "secrets",
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "kafka-admin", "namespace": "shop"},
            // admin / s3cret
            "data": {"username": "YWRtaW4=", "password": "czNjcmV0"},
        }),
    );
    let external = Arc::new(FakeExternal::default());
    let ctx = context_with(&fake, external.clone());
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let brokers = "kafka-0.kafka.infra.svc:9092";
    assert_eq!(
        external.take_calls(),
        [
            format!("ensure {} topics at {brokers}", all_topics().len()),
            // Made by the Secret's user, with ACLs on the stack's prefix only.
            format!("ensure kafka user shop.shop (Sha512, 3 ACLs on shop.shop.) at {brokers} as admin"),
            "ensure 13 databases at postgres.infra.svc as commerce_admin".to_owned(),
        ]
    );
    use base64::Engine as _;
    let decoded = |key: &str| {
        let secret = fake.get("secrets", "shop-kafka-user").expect("the user's Secret");
        let text = secret["data"][key].as_str().unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(text).unwrap()).unwrap()
    };
    assert_eq!(decoded("username"), "shop.shop");
    let password = decoded("password");
    assert!(password.len() >= 32 && password != "s3cret", "{password}");
    // The services log in as the stack's user, not as the admin.
    let deployment = fake.get("deployments", "shop-order").unwrap();
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    let from_secret = |name: &str| {
        env.iter().find(|e| e["name"] == name).map(|e| e["valueFrom"]["secretKeyRef"].clone()).unwrap()
    };
    assert_eq!(
        from_secret("COMMERCE_KAFKA_SASL_USERNAME"),
        json!({"name": "shop-kafka-user", "key": "username"})
    );
    assert_eq!(
        from_secret("COMMERCE_KAFKA_SASL_PASSWORD"),
        json!({"name": "shop-kafka-user", "key": "password"})
    );
    // The cleanup logs in as the Kafka admin: its Secret is held, beside
    // the Postgres admin's, until the cleanup is done.
    assert_eq!(finalizers(&fake, "secrets", "kafka-admin"), [hold_finalizer("shop")]);
    assert_eq!(finalizers(&fake, "secrets", "postgres-admin"), [hold_finalizer("shop")]);

    // The password is kept: the next reconcile writes nothing and sets the
    // same one (the real state skips it, having set it once).
    fake.take_seen();
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert!(object_writes(&fake.take_seen()).is_empty());
    assert_eq!(decoded("password"), password);
    external.take_calls();

    mark_deleted_long_ago(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let mut calls = external.take_calls();
    calls.sort();
    assert_eq!(
        calls,
        [
            format!("delete {} topics at {brokers}", all_topics().len()),
            "delete kafka user shop.shop at kafka-0.kafka.infra.svc:9092".to_owned(),
            "drop 13 databases at postgres.infra.svc as commerce_admin".to_owned(),
        ]
    );
    assert!(fake.get("commercestacks", "shop").is_none());
    assert!(finalizers(&fake, "secrets", "kafka-admin").is_empty(), "the hold outlived the stack");
}

/// A `Delete` stack on an external Kafka with TLS (its own CA Secret) and
/// SASL (an admin Secret), both Secrets present.
fn cluster_with_kafka_secrets() -> Arc<FakeApi> {
    let fake = cluster_with(|stack| {
        stack["spec"]["deletionPolicy"] = json!("Delete");
        stack["spec"]["kafka"]["external"]["tls"] =
            json!({"caSecret": {"name": "kafka-ca", "key": "ca.crt"}});
        stack["spec"]["kafka"]["external"]["sasl"] = json!({"secretName": "kafka-admin"});
    });
    for (name, data) in [
        ("kafka-ca", json!({"ca.crt": "Y2E="})),
        ("kafka-admin", json!({"username": "YQ==", "password": "cA=="})),
    ] {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "shop"}, "data": data,
        });
        fake.put("secrets", secret);
    }
    fake
}

#[tokio::test]
async fn a_namespace_deletion_cannot_take_the_kafka_secrets_before_the_cleanup_has_used_them() {
    let fake = cluster_with_kafka_secrets();
    let external = Arc::new(FakeExternal::default());
    let ctx = context_with(&fake, external.clone());
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(finalizers(&fake, "secrets", "kafka-ca"), [hold_finalizer("shop")]);
    assert_eq!(finalizers(&fake, "secrets", "kafka-admin"), [hold_finalizer("shop")]);
    external.take_calls();

    mark_deleted(&fake, "secrets", "kafka-ca");
    mark_deleted(&fake, "secrets", "kafka-admin");
    mark_deleted(&fake, "commercestacks", "shop");
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let calls = external.take_calls();
    assert!(
        calls.contains(&format!("delete {} topics at kafka-0.kafka.infra.svc:9092", all_topics().len())),
        "{calls:?}"
    );
    assert!(fake.get("commercestacks", "shop").is_none());
    assert!(fake.get("secrets", "kafka-admin").is_none(), "released, the deleted Secret went");
    assert!(fake.get("secrets", "kafka-ca").is_none(), "released, the deleted Secret went");
}

#[tokio::test]
async fn a_reconcile_reads_the_policies_and_the_login_secrets_before_it_writes_anything() {
    let fake = cluster_with_kafka_secrets();
    let external = Arc::new(FakeExternal::default());
    let ctx = context_with(&fake, external.clone());
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let seen = fake.take_seen();
    // The stack's own finalizer comes first of all, before anything exists
    // that it guards; the first write of anything else counts.
    let first_write = seen
        .iter()
        .position(|request| request.is_write() && request.plural != "commercestacks")
        .expect("a new stack's objects are written");
    let login = ["kafka-ca", "kafka-admin", "postgres-admin"];
    let reads: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, request)| {
            !request.is_write()
                && ((request.plural == "secrets"
                    && login.contains(&request.name.as_deref().unwrap_or_default()))
                    || request.plural == "ratelimitpolicies")
        })
        .map(|(at, _)| at)
        .collect();
    // The three Secrets and the policies, each read once, all before the
    // first write (the holds on the Secrets come later, in the external step).
    assert_eq!(reads.len(), 4, "{seen:#?}");
    assert!(reads.iter().all(|at| *at < first_write), "reads at {reads:?}, first write at {first_write}");
    assert_eq!(finalizers(&fake, "secrets", "kafka-ca"), [hold_finalizer("shop")]);
    assert_eq!(finalizers(&fake, "secrets", "postgres-admin"), [hold_finalizer("shop")]);
}

#[tokio::test]
async fn a_cleanup_that_keeps_failing_blocks_deletion_only_for_the_grace_period() {
    let fake = cluster_with(|stack| stack["spec"]["deletionPolicy"] = json!("Delete"));
    let external = Arc::new(FakeExternal::default());
    let ctx = context_with(&fake, external.clone());
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    *external.failing.lock().unwrap() = true;

    let just_now = k8s_openapi::jiff::Timestamp::now().to_string();
    fake.edit("commercestacks", "shop", |stack| stack["metadata"]["deletionTimestamp"] = json!(just_now));
    let error = reconcile_stack(&fake.stack(), &ctx).await.unwrap_err();
    assert!(matches!(error, Error::CleanUp { .. }), "{error}");
    assert!(fake.get("commercestacks", "shop").is_some(), "within the grace period the stack waits");

    fake.edit("commercestacks", "shop", |stack| {
        stack["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z")
    });
    fake.take_seen();
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert!(fake.get("commercestacks", "shop").is_none(), "after the grace period the finalizer goes");
    assert!(fake.take_seen().iter().any(|s| s.plural == "events"), "a Warning event names what was left");
}

#[tokio::test]
async fn a_reconcile_with_nothing_to_do_writes_nothing() {
    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    // The first pass said "Applied"; the next one finds nothing to apply
    // and reports the stack up to date.
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(condition(&fake.stack(), CONDITION_PROGRESSING).1, "RollingOut");
    fake.take_seen();

    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let seen = fake.take_seen();
    assert_eq!(writes(&seen), Vec::<String>::new());
    assert!(!seen.is_empty(), "the reconcile read the cluster");
}

#[tokio::test]
async fn generated_passwords_survive_reconciles_and_a_deleted_secret_is_regenerated() {
    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let password =
        |fake: &FakeApi| fake.get("secrets", "shop-db-order").map(|s| s["data"]["password"].clone());
    let first = password(&fake).unwrap();
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(password(&fake).unwrap(), first);

    fake.objects.lock().unwrap().remove(&("secrets".into(), "shop".into(), "shop-db-order".into()));
    fake.take_seen();
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let regenerated = password(&fake).unwrap();
    assert_ne!(regenerated, first);
    let applied: Vec<String> =
        writes(&fake.take_seen()).into_iter().filter(|w| !w.contains("events")).collect();
    // The new Secret, and the order Deployment whose config hash covers it.
    assert!(applied.contains(&"PATCH secrets/shop-db-order".to_owned()), "{applied:?}");
    assert!(applied.contains(&"PATCH deployments/shop-order".to_owned()), "{applied:?}");
}

#[tokio::test]
async fn drift_of_an_owned_object_is_corrected_and_nothing_else_is_touched() {
    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    fake.edit("deployments", "shop-cart", |deployment| deployment["spec"]["replicas"] = json!(7));
    fake.take_seen();

    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let seen = fake.take_seen();
    let applied: Vec<String> = object_writes(&seen)
        .iter()
        .map(|s| format!("{} {}/{}", s.method, s.plural, s.name.as_deref().unwrap()))
        .collect();
    assert_eq!(applied, ["PATCH deployments/shop-cart"]);
    assert_eq!(fake.get("deployments", "shop-cart").unwrap()["spec"]["replicas"], 1);
}

#[tokio::test]
async fn disabling_a_service_prunes_only_its_objects() {
    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    // An object with the stack's labels that another owner controls stays.
    let mut foreign = fake.get("configmaps", "shop-notification").unwrap();
    foreign["metadata"]["name"] = json!("adopted-by-hand");
    foreign["metadata"]["ownerReferences"][0]["uid"] = json!("someone-else");
    fake.put("configmaps", foreign);
    fake.edit("commercestacks", "shop", |stack| {
        stack["spec"]["services"] = json!({"notification": {"enabled": false}});
        stack["metadata"]["generation"] = json!(2);
    });
    fake.take_seen();

    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let seen = fake.take_seen();
    let mut deleted: Vec<String> = seen
        .iter()
        .filter(|s| s.method == Method::DELETE)
        .map(|s| format!("{}/{}", s.plural, s.name.as_deref().unwrap()))
        .collect();
    deleted.sort();
    assert_eq!(
        deleted,
        [
            "configmaps/shop-notification",
            "deployments/shop-notification",
            "networkpolicies/shop-notification",
            "poddisruptionbudgets/shop-notification",
            "secrets/shop-db-notification",
            "serviceaccounts/shop-notification",
            "services/shop-notification",
            "services/shop-notification-headless",
        ]
    );
    assert!(fake.get("configmaps", "adopted-by-hand").is_some());
    // The gateway no longer calls notification: its peers changed.
    assert!(seen.iter().any(|s| s.method == Method::PATCH
        && s.plural == "configmaps"
        && s.name.as_deref() == Some("shop-gateway")));
}

#[tokio::test]
async fn a_paused_stack_gets_no_writes_once_its_status_says_paused() {
    let fake = cluster_with(|stack| stack["spec"]["paused"] = json!(true));
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let seen = fake.take_seen();
    assert_eq!(writes(&seen), ["PATCH commercestacks/shop"], "only the status that says paused");
    assert_eq!(condition(&fake.stack(), CONDITION_PROGRESSING), ("False".into(), "Paused".into()));

    let action = reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    let seen = fake.take_seen();
    assert!(seen.is_empty(), "a paused stack is not even read: {seen:?}");
}

#[tokio::test]
async fn a_failing_apply_backs_off_longer_each_time_and_shows_in_the_status() {
    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    fake.fail(Method::PATCH, "deployments");
    let mut delays = Vec::new();
    for _ in 0..3 {
        let error = reconcile_stack(&fake.stack(), &ctx).await.unwrap_err();
        assert!(matches!(error, Error::ReconcileObjects { .. }), "{error}");
        let guard = Arc::new(DeserializeGuard(Ok(fake.stack())));
        delays.push(error_policy(guard, &error, ctx.clone()));
    }
    assert_eq!(
        delays,
        [5, 10, 20].map(|s| Action::requeue(std::time::Duration::from_secs(s))),
        "each failure of the same stack waits twice as long"
    );
    let (status, reason) = condition(&fake.stack(), CONDITION_DEGRADED);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "ReconcileFailed"));
    assert!(ctx.metrics.encode().contains(r#"error="apply"} 3"#));

    fake.heal();
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(condition(&fake.stack(), CONDITION_DEGRADED), ("False".into(), "AsExpected".into()));
    let guard = Arc::new(DeserializeGuard(Ok(fake.stack())));
    let error = Error::InvalidStack { name: "shop".into(), problems: vec![] };
    assert_eq!(
        error_policy(guard, &error, ctx.clone()),
        Action::requeue(std::time::Duration::from_secs(5)),
        "a success starts over"
    );
}

#[tokio::test]
async fn an_invalid_stack_is_reported_once_and_not_retried() {
    let fake = cluster_with(|stack| stack["spec"]["kafka"]["managed"] = json!({}));
    let ctx = context(&fake);
    let action = reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(condition(&fake.stack(), CONDITION_DEGRADED), ("True".into(), "InvalidSpec".into()));
    let seen = fake.take_seen();
    assert!(object_writes(&seen).is_empty(), "nothing is applied for an invalid spec");
    assert!(seen.iter().any(|s| s.plural == "events"), "a Warning event");

    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(writes(&fake.take_seen()), Vec::<String>::new());
}

#[tokio::test]
async fn a_malformed_stack_is_skipped_without_stopping_the_controller() {
    let fake = Arc::new(FakeApi::default());
    let ctx = context(&fake);
    let stack = stored_stack(|_| {});
    let invalid = InvalidObject {
        error: "spec.version: invalid type: integer, expected a string".into(),
        metadata: serde_json::from_value(stack["metadata"].clone()).unwrap(),
    };
    let action = reconcile(Arc::new(DeserializeGuard(Err(invalid))), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    let seen = fake.take_seen();
    assert_eq!(writes(&seen), ["POST events/-"], "only a Warning event");
}

/// The apiserver's answer to a Deployment whose CPU request exceeds its
/// limit, as kube-apiserver words it.
const INVALID_DEPLOYMENT: &str = "Deployment.apps \"shop-order\" is invalid: \
    spec.template.spec.containers[0].resources.requests: Invalid value: \"2\": \
    must be less than or equal to cpu limit of 500m";

#[tokio::test]
async fn a_rejected_object_does_not_stop_the_others_and_is_named_once_in_one_short_line() {
    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    fake.reject("deployments", "shop-order", 422, "Invalid", INVALID_DEPLOYMENT);
    reconcile_stack(&fake.stack(), &ctx).await.expect_err("a rejected object is retried with backoff");

    assert_eq!(missing_objects(&fake), ["Deployment/shop-order"], "every other object was applied");
    let line = format!("Deployment/shop-order: {INVALID_DEPLOYMENT}");
    let degraded = full_condition(&fake.stack(), CONDITION_DEGRADED).unwrap();
    assert_eq!((degraded.status.as_str(), degraded.message.as_str()), ("True", line.as_str()));
    assert_eq!(event_notes(&fake.take_seen(), "ReconcileFailed"), [line]);
    let ready = full_condition(&fake.stack(), CONDITION_READY).unwrap();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("Deployment/shop-order"), "{}", ready.message);
}

#[tokio::test]
async fn many_failing_objects_give_one_line_each_up_to_a_bounded_length() {
    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    fake.fail(Method::PATCH, "configmaps");
    fake.fail(Method::PATCH, "deployments");
    reconcile_stack(&fake.stack(), &ctx).await.expect_err("the failures are retried");

    let failed: Vec<String> = desired_objects(&fake)
        .iter()
        .filter(|o| matches!(o.resource.kind.as_str(), "ConfigMap" | "Deployment"))
        .map(build::DesiredObject::display)
        .collect();
    assert_eq!(missing_objects(&fake), failed, "only the failing kinds are missing");
    let message = full_condition(&fake.stack(), CONDITION_DEGRADED).unwrap().message;
    let lines: Vec<&str> = message.lines().collect();
    assert!(failed.len() > lines.len(), "{} failures in {} lines", failed.len(), lines.len());
    let (last, named) = lines.split_last().unwrap();
    for (line, object) in named.iter().zip(&failed) {
        assert_eq!(*line, format!("{object}: injected failure"));
    }
    assert_eq!(*last, format!("and {} more", failed.len() - named.len()));
    assert!(message.len() <= 2048, "{} bytes", message.len());
}

#[tokio::test]
async fn a_failed_apply_still_prunes_what_is_no_longer_desired_and_nothing_it_failed_to_apply() {
    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    disable_notification(&fake);
    // The gateway's peers change with notification gone; that apply fails.
    fake.reject("configmaps", "shop-gateway", 500, "InternalError", "etcdserver: request timed out");
    fake.take_seen();

    reconcile_stack(&fake.stack(), &ctx).await.expect_err("the failed apply is retried");
    let seen = fake.take_seen();
    let deleted: Vec<String> = seen
        .iter()
        .filter(|s| s.method == Method::DELETE)
        .map(|s| format!("{}/{}", s.plural, s.name.as_deref().unwrap()))
        .collect();
    assert!(deleted.contains(&"deployments/shop-notification".to_owned()), "{deleted:?}");
    assert!(deleted.iter().all(|d| d.contains("notification")), "{deleted:?}");
    assert!(fake.get("configmaps", "shop-gateway").is_some(), "a failed apply never deletes");
    assert_eq!(missing_objects(&fake), Vec::<String>::new());
}

#[tokio::test]
async fn an_object_the_stack_did_not_create_is_refused_reported_and_never_touched() {
    let fake = cluster_with(|_| {});
    // Someone's own ConfigMap, named as the stack wants one.
    let theirs = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "shop-order", "namespace": "shop", "uid": "their-uid", "resourceVersion": "1"},
        "data": {"owner": "the payments team"},
    });
    fake.put("configmaps", theirs.clone());
    // A Deployment applied from `render` output: the stack's labels, no owner.
    let rendered = desired_objects(&fake)
        .into_iter()
        .find(|o| o.display() == "Deployment/shop-cart")
        .map(|o| {
            let mut object = serde_json::to_value(&o.object).unwrap();
            object["metadata"]["ownerReferences"] = Value::Null;
            object["metadata"]["namespace"] = json!("shop");
            object["metadata"]["uid"] = json!("rendered-uid");
            object
        })
        .unwrap();
    fake.put("deployments", rendered.clone());
    let ctx = context(&fake);

    reconcile_stack(&fake.stack(), &ctx).await.expect_err("the conflict is retried");
    let seen = fake.take_seen();
    let touched: Vec<String> = writes(&seen)
        .into_iter()
        .filter(|w| w.ends_with("configmaps/shop-order") || w.ends_with("deployments/shop-cart"))
        .collect();
    assert_eq!(touched, Vec::<String>::new());
    assert_eq!(fake.get("configmaps", "shop-order").unwrap(), theirs);
    assert_eq!(fake.get("deployments", "shop-cart").unwrap(), rendered);
    // The order service's pods would read their ConfigMap: someone else's.
    assert!(
        fake.get("deployments", "shop-order").is_none(),
        "a workload reading a foreign ConfigMap is held back"
    );
    assert!(fake.get("services", "shop-order").is_some(), "the rest is reconciled");
    assert!(fake.get("configmaps", "shop-cart").is_some(), "the rest is reconciled");
    assert!(fake.get("deployments", "shop-payment").is_some(), "the rest is reconciled");
    let message = full_condition(&fake.stack(), CONDITION_DEGRADED).unwrap().message;
    assert_eq!(
        message.lines().collect::<Vec<_>>(),
        [
            "ConfigMap/shop-order exists and is not managed by this stack",
            "Deployment/shop-cart exists and is not managed by this stack",
            "Deployment/shop-order: not applied: its pods would read ConfigMap/shop-order, which is not managed by this stack",
        ]
    );

    // Neither is deleted when the stack stops wanting them.
    fake.edit("commercestacks", "shop", |stack| {
        stack["spec"]["services"] = json!({"order": {"enabled": false}, "cart": {"enabled": false}});
        stack["metadata"]["generation"] = json!(2);
    });
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let seen = fake.take_seen();
    assert!(seen.iter().any(|s| s.method == Method::DELETE), "the stack's own objects are pruned");
    assert_eq!(fake.get("configmaps", "shop-order").unwrap(), theirs);
    assert_eq!(fake.get("deployments", "shop-cart").unwrap(), rendered);
    assert!(fake.get("deployments", "shop-order").is_none());
    assert_eq!(condition(&fake.stack(), CONDITION_DEGRADED).0, "False");
}

#[tokio::test]
async fn a_database_secret_the_stack_may_not_write_keeps_generated_passwords_away_from_postgres() {
    let fake = cluster_with(|_| {});
    fake.put(
        "secrets",
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "shop-db-order", "namespace": "shop", "uid": "their-uid"},
            "data": {"password": "dGhlaXJz"},
        }),
    );
    let external = Arc::new(FakeExternal::default());
    let ctx = context_with(&fake, external.clone());
    reconcile_stack(&fake.stack(), &ctx).await.expect_err("the conflict is retried");
    assert_eq!(
        external.take_calls(),
        [format!("ensure {} topics at kafka-0.kafka.infra.svc:9092", all_topics().len())],
        "a password that no Secret keeps must not become a role's password"
    );
    assert_eq!(fake.get("secrets", "shop-db-order").unwrap()["data"]["password"], "dGhlaXJz");
    let message = full_condition(&fake.stack(), CONDITION_DEGRADED).unwrap().message;
    assert!(message.starts_with("Secret/shop-db-order exists and is not managed by this stack"), "{message}");
}

#[tokio::test]
async fn pruning_deletes_only_the_very_object_it_listed() {
    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let listed_uid = fake.get("deployments", "shop-notification").unwrap()["metadata"]["uid"].clone();
    disable_notification(&fake);
    fake.take_seen();

    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let seen = fake.take_seen();
    let delete = seen
        .iter()
        .find(|s| s.method == Method::DELETE && s.uri.contains("/deployments/shop-notification"))
        .expect("the Deployment is pruned");
    assert_eq!(delete.body["preconditions"]["uid"], listed_uid, "{}", delete.body);
}

#[tokio::test]
async fn a_cpu_request_above_its_limit_is_an_invalid_spec_and_nothing_is_applied() {
    let fake = cluster_with(|stack| {
        stack["spec"]["services"] =
            json!({"order": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "500m"}}}})
    });
    let ctx = context(&fake);
    let action = reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    let degraded = full_condition(&fake.stack(), CONDITION_DEGRADED).unwrap();
    assert_eq!(
        (degraded.reason.as_str(), degraded.message.as_str()),
        ("InvalidSpec", "services.order.resources: requests.cpu 2 exceeds limits.cpu 500m")
    );
    assert!(object_writes(&fake.take_seen()).is_empty(), "nothing is applied for an invalid spec");
}

#[tokio::test]
async fn a_paused_stack_is_not_reported_ready_or_observed_and_resumes_when_unpaused() {
    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    make_deployments_available(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(condition(&fake.stack(), CONDITION_READY).0, "True");

    fake.edit("commercestacks", "shop", |stack| {
        stack["spec"]["paused"] = json!(true);
        stack["metadata"]["generation"] = json!(2);
    });
    fake.objects.lock().unwrap().remove(&("deployments".into(), "shop".into(), "shop-cart".into()));
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let stack = fake.stack();
    assert_eq!(condition(&stack, CONDITION_READY), ("Unknown".into(), "Paused".into()));
    assert_eq!(condition(&stack, "Paused"), ("True".into(), "Paused".into()));
    assert_eq!(stack.status.as_ref().unwrap().observed_generation, Some(1), "generation 2 was not observed");
    assert!(fake.get("deployments", "shop-cart").is_none(), "a paused stack is not changed");

    fake.edit("commercestacks", "shop", |stack| {
        stack["spec"]["paused"] = json!(false);
        stack["metadata"]["generation"] = json!(3);
    });
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let stack = fake.stack();
    assert!(fake.get("deployments", "shop-cart").is_some(), "the deleted Deployment is back");
    assert_eq!(stack.status.as_ref().unwrap().observed_generation, Some(3));
    assert!(full_condition(&stack, "Paused").is_none());
    assert_eq!(condition(&stack, CONDITION_READY), ("False".into(), "ServicesUnavailable".into()));
}

#[tokio::test]
async fn a_namespace_deletion_cannot_take_the_admin_secret_before_the_cleanup_has_used_it() {
    let (fake, external, ctx) = reconciled_delete_stack(|_| {}).await;
    assert_eq!(finalizers(&fake, "secrets", "postgres-admin"), [hold_finalizer("shop")]);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let writes = writes(&fake.take_seen());
    assert!(!writes.iter().any(|w| w.contains("secrets/postgres-admin")), "held once: {writes:?}");
    external.take_calls();

    // `kubectl delete namespace shop`: everything is deleted at once, and no
    // Event can be created in a namespace being deleted.
    mark_deleted(&fake, "secrets", "postgres-admin");
    mark_deleted(&fake, "commercestacks", "shop");
    fake.fail(Method::POST, "events");
    fake.fail(Method::PATCH, "events");
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let mut calls = external.take_calls();
    calls.sort();
    assert_eq!(
        calls,
        [
            format!("delete {} topics at kafka-0.kafka.infra.svc:9092", all_topics().len()),
            "drop 13 databases at postgres.infra.svc as commerce_admin".to_owned(),
        ],
        "the cleanup logged in with the held Secret's credentials"
    );
    assert!(fake.get("commercestacks", "shop").is_none(), "the stack's finalizer is gone");
    assert!(fake.get("secrets", "postgres-admin").is_none(), "the hold was released, so the Secret went too");
}

#[tokio::test]
async fn the_hold_follows_the_admin_secret_reference_and_goes_when_the_policy_becomes_retain() {
    let other_hold = hold_finalizer("other-shop");
    let (fake, _external, ctx) = reconciled_delete_stack(|_| {}).await;
    fake.put(
        "secrets",
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "postgres-admin-2", "namespace": "shop", "resourceVersion": "7",
                         "finalizers": [other_hold]},
            "data": {"username": "Y29tbWVyY2VfYWRtaW4=", "password": "c2VjcmV0"},
        }),
    );
    fake.edit("commercestacks", "shop", |stack| {
        stack["spec"]["postgres"]["external"]["adminSecret"]["name"] = json!("postgres-admin-2");
        stack["metadata"]["generation"] = json!(2);
    });
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(
        finalizers(&fake, "secrets", "postgres-admin-2"),
        [other_hold.clone(), hold_finalizer("shop")]
    );
    assert_eq!(finalizers(&fake, "secrets", "postgres-admin"), Vec::<String>::new(), "released");
    assert_eq!(hold_label_of(&fake, "postgres-admin-2"), Some("held".into()), "the hold is labelled");
    assert_eq!(hold_label_of(&fake, "postgres-admin"), None, "the release removes the label too");

    fake.edit("commercestacks", "shop", |stack| {
        stack["spec"]["deletionPolicy"] = json!("Retain");
        stack["metadata"]["generation"] = json!(3);
    });
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(finalizers(&fake, "secrets", "postgres-admin-2"), [other_hold], "another stack's hold stays");
    assert_eq!(hold_label_of(&fake, "postgres-admin-2"), None);
    assert!(fake.stack().metadata.finalizers.is_none_or(|f| f.is_empty()));
}

/// The value of the stack `shop`'s hold label on a Secret.
fn hold_label_of(fake: &FakeApi, secret: &str) -> Option<String> {
    let object = fake.get("secrets", secret).expect("the Secret");
    object["metadata"]["labels"][hold_label("shop")].as_str().map(str::to_owned)
}

#[tokio::test]
async fn held_secrets_are_found_by_their_label_and_a_hold_taken_without_one_gets_it() {
    let (fake, _external, ctx) = reconciled_delete_stack(|_| {}).await;
    assert_eq!(hold_label_of(&fake, "postgres-admin"), Some("held".into()));
    // A hold taken by an operator that did not label (chart 0.1.0).
    fake.edit("secrets", "postgres-admin", |secret| {
        secret["metadata"]["labels"].as_object_mut().unwrap().remove(&hold_label("shop"));
    });
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(hold_label_of(&fake, "postgres-admin"), Some("held".into()), "labelled at the next reconcile");
    fake.take_seen();

    // Releasing lists Secrets by the hold label only, never all of them.
    fake.edit("commercestacks", "shop", |stack| {
        stack["spec"]["deletionPolicy"] = json!("Retain");
        stack["metadata"]["generation"] = json!(2);
    });
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(finalizers(&fake, "secrets", "postgres-admin"), Vec::<String>::new());
    let secret_lists: Vec<String> = fake
        .take_seen()
        .into_iter()
        .filter(|seen| seen.method == Method::GET && seen.plural == "secrets" && seen.name.is_none())
        .map(|seen| seen.uri)
        .collect();
    assert!(!secret_lists.is_empty(), "the release looked for held Secrets");
    for path in &secret_lists {
        assert!(path.contains("labelSelector="), "a Secret list without a label selector: {path}");
    }
}

#[tokio::test]
async fn with_the_admin_secret_missing_the_topics_are_still_deleted_and_the_databases_named_as_left() {
    let (fake, external, ctx) = reconciled_delete_stack(|_| {}).await;
    // Gone regardless of the hold (its finalizer removed by hand).
    fake.objects.lock().unwrap().remove(&("secrets".into(), "shop".into(), "postgres-admin".into()));
    mark_deleted(&fake, "commercestacks", "shop");

    let error = reconcile_stack(&fake.stack(), &ctx).await.unwrap_err();
    assert!(matches!(error, Error::CleanUp { .. }), "{error}");
    assert_eq!(
        external.take_calls(),
        [format!("delete {} topics at kafka-0.kafka.infra.svc:9092", all_topics().len())],
        "the topics do not wait for Postgres"
    );
    let stack = fake.stack();
    let topics = full_condition(&stack, CONDITION_TOPICS_CLEANED_UP).unwrap();
    assert_eq!((topics.status.as_str(), topics.reason.as_str()), ("True", "Deleted"));
    let databases = full_condition(&stack, CONDITION_DATABASES_CLEANED_UP).unwrap();
    assert_eq!(databases.status, "False");
    assert!(databases.message.contains("shop_shop_order"), "{}", databases.message);
    assert!(databases.message.contains("Secret postgres-admin does not exist"), "{}", databases.message);
    let notes = event_notes(&fake.take_seen(), "CleanupFailed");
    assert_eq!(notes.len(), 1, "{notes:?}");

    // A retry works on the databases only, and reports nothing new.
    reconcile_stack(&fake.stack(), &ctx).await.unwrap_err();
    assert_eq!(external.take_calls(), Vec::<String>::new(), "the deleted topics are not deleted again");
    assert!(event_notes(&fake.take_seen(), "CleanupFailed").is_empty());

    mark_deleted_long_ago(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert!(fake.get("commercestacks", "shop").is_none(), "after the grace period the finalizer goes");
    let notes = event_notes(&fake.take_seen(), "CleanupAbandoned");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("shop_shop_order") && !notes[0].contains("topics"), "{}", notes[0]);
}

#[tokio::test]
async fn the_databases_are_dropped_even_when_kafka_is_unreachable_and_not_again_once_it_is_back() {
    let (fake, external, ctx) = reconciled_delete_stack(|_| {}).await;
    *external.failing_topic_deletions.lock().unwrap() = true;
    mark_deleted(&fake, "commercestacks", "shop");
    reconcile_stack(&fake.stack(), &ctx).await.unwrap_err();
    assert!(
        external
            .take_calls()
            .contains(&"drop 13 databases at postgres.infra.svc as commerce_admin".to_owned())
    );
    let stack = fake.stack();
    assert_eq!(condition(&stack, CONDITION_DATABASES_CLEANED_UP), ("True".into(), "Dropped".into()));
    assert_eq!(condition(&stack, CONDITION_TOPICS_CLEANED_UP).0, "False");
    assert_eq!(
        finalizers(&fake, "secrets", "postgres-admin"),
        [hold_finalizer("shop")],
        "held until the end"
    );

    *external.failing_topic_deletions.lock().unwrap() = false;
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(
        external.take_calls(),
        [format!("delete {} topics at kafka-0.kafka.infra.svc:9092", all_topics().len())]
    );
    assert!(fake.get("commercestacks", "shop").is_none());
    assert_eq!(finalizers(&fake, "secrets", "postgres-admin"), Vec::<String>::new());
    let notes = event_notes(&fake.take_seen(), "CleanedUp");
    assert!(
        notes.len() == 1 && notes[0].contains("dropped databases") && notes[0].contains("deleted the"),
        "{notes:?}"
    );
}

#[tokio::test]
async fn a_disabled_services_database_is_dropped_with_the_stack() {
    let (fake, external, ctx) = reconciled_delete_stack(|stack| {
        stack["spec"]["services"] = json!({"notification": {"enabled": false}})
    })
    .await;
    let ensured: Vec<String> = fake.stack().status.unwrap().databases.into_iter().map(|d| d.name).collect();
    assert!(!ensured.contains(&"shop_shop_notification".to_owned()), "{ensured:?}");

    mark_deleted(&fake, "commercestacks", "shop");
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let dropped = external.dropped.lock().unwrap().clone();
    assert!(dropped.contains(&"shop_shop_notification".to_owned()), "enabled once, maybe: {dropped:?}");
    assert!(ensured.iter().all(|name| dropped.contains(name)), "{ensured:?} not all in {dropped:?}");
    assert!(fake.get("commercestacks", "shop").is_none());
}

#[tokio::test]
async fn a_stack_set_to_retain_before_its_cleanup_ran_keeps_its_data_and_lets_go() {
    let (fake, external, ctx) = reconciled_delete_stack(|_| {}).await;
    fake.edit("commercestacks", "shop", |stack| stack["spec"]["deletionPolicy"] = json!("Retain"));
    mark_deleted(&fake, "commercestacks", "shop");
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(external.take_calls(), Vec::<String>::new(), "nothing dropped or deleted");
    assert!(fake.get("commercestacks", "shop").is_none());
    assert_eq!(finalizers(&fake, "secrets", "postgres-admin"), Vec::<String>::new());
    assert_eq!(event_notes(&fake.take_seen(), "Retained").len(), 1);
}

#[tokio::test]
async fn an_admin_secret_being_deleted_is_not_used_to_create_databases_it_could_not_drop() {
    let fake = cluster_with(|stack| stack["spec"]["deletionPolicy"] = json!("Delete"));
    fake.edit("secrets", "postgres-admin", |secret| {
        secret["metadata"]["finalizers"] = json!(["example.com/backup"]);
    });
    mark_deleted(&fake, "secrets", "postgres-admin");
    let external = Arc::new(FakeExternal::default());
    let ctx = context_with(&fake, external.clone());
    let error = reconcile_stack(&fake.stack(), &ctx).await.unwrap_err();
    assert!(matches!(error, Error::SecretBeingDeleted { .. }), "{error}");
    assert!(!external.take_calls().iter().any(|c| c.starts_with("ensure") && c.contains(" databases at ")));
    assert_eq!(finalizers(&fake, "secrets", "postgres-admin"), ["example.com/backup"]);
    let message = full_condition(&fake.stack(), CONDITION_DEGRADED).unwrap().message;
    assert!(message.contains("Secret postgres-admin is being deleted"), "{message}");
}

// ------------------------------------------------------- RateLimitPolicies

/// Stores a RateLimitPolicy `name` targeting `target`, with `rules` rules of
/// usual size (about 200 bytes each in the rules file), created `created`
/// seconds into 2026.
fn put_policy(fake: &FakeApi, name: &str, target: &str, rules: usize, created: i64) {
    let rules: Vec<Value> = (0..rules)
        .map(|i| {
            json!({"name": format!("orders-create-{i}"), "pathPrefix": format!("/api/orders/{i}/items"),
                   "methods": ["POST", "PUT"], "key": "user", "requests": 100, "per": "minute", "burst": 10})
        })
        .collect();
    let created = k8s_openapi::jiff::Timestamp::from_second(1_767_225_600 + created).unwrap().to_string();
    fake.put(
        "ratelimitpolicies",
        json!({
            "apiVersion": "commerce-stack.dev/v1alpha1", "kind": "RateLimitPolicy",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "generation": 1,
                         "resourceVersion": "1", "creationTimestamp": created},
            "spec": {"targetRef": {"name": target}, "rules": rules},
        }),
    );
}

fn stored_policy(fake: &FakeApi, name: &str) -> RateLimitPolicy {
    serde_json::from_value(fake.get("ratelimitpolicies", name).expect("the policy")).unwrap()
}

/// The policy's `Accepted` condition: status, reason, message.
fn accepted(fake: &FakeApi, name: &str) -> Option<(String, String, String)> {
    let policy = stored_policy(fake, name);
    let condition = policy.status?.conditions.into_iter().find(|c| c.type_ == CONDITION_ACCEPTED)?;
    Some((condition.status, condition.reason, condition.message))
}

fn accepted_reason(fake: &FakeApi, name: &str) -> (String, String) {
    let (status, reason, _) = accepted(fake, name).expect("an Accepted condition");
    (status, reason)
}

/// The policy controller's reconcile of the stored policy `name`.
async fn reconcile_stored_policy(fake: &FakeApi, ctx: &Arc<Context>, name: &str) -> Action {
    let guard = Arc::new(DeserializeGuard(Ok(stored_policy(fake, name))));
    reconcile_policy(guard, ctx.clone()).await.unwrap()
}

#[tokio::test]
async fn a_policy_whose_stack_does_not_exist_says_so_until_the_stack_appears_and_again_once_it_is_gone() {
    let fake = Arc::new(FakeApi::default());
    let ctx = context(&fake);
    put_policy(&fake, "checkout", "shop", 1, 0);
    reconcile_stored_policy(&fake, &ctx, "checkout").await;
    let (status, reason, message) =
        accepted(&fake, "checkout").expect("a status for a policy without a stack");
    assert_eq!((status.as_str(), reason.as_str()), ("False", REASON_TARGET_NOT_FOUND));
    assert!(message.contains("no CommerceStack shop in namespace shop"), "{message}");
    let notes = event_notes(&fake.take_seen(), REASON_TARGET_NOT_FOUND);
    assert_eq!(notes.len(), 1, "one Warning Event");
    reconcile_stored_policy(&fake, &ctx, "checkout").await;
    assert_eq!(writes(&fake.take_seen()), Vec::<String>::new(), "said once");

    // The stack appears: its reconcile takes the policy; the policy
    // controller, woken by the stack, leaves the status to it.
    fake.put("commercestacks", stored_stack(|_| {}));
    fake.put(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "postgres-admin", "namespace": "shop"},
               "data": {"username": "Y29tbWVyY2VfYWRtaW4=", "password": "c2VjcmV0"}}),
    );
    reconcile_stored_policy(&fake, &ctx, "checkout").await;
    assert_eq!(writes(&fake.take_seen()), Vec::<String>::new());
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(accepted_reason(&fake, "checkout"), ("True".into(), REASON_ACCEPTED.into()));
    let rules = fake.get("configmaps", "shop-gateway-rate-limits").unwrap();
    assert!(rules["data"].to_string().contains("checkout_orders-create-0"), "{}", rules["data"]);
    assert_eq!(event_notes(&fake.take_seen(), REASON_ACCEPTED).len(), 1, "a Normal Event on the policy");

    // The stack goes: the policy is no longer accepted.
    fake.objects.lock().unwrap().remove(&("commercestacks".into(), "shop".into(), "shop".into()));
    reconcile_stored_policy(&fake, &ctx, "checkout").await;
    assert_eq!(accepted_reason(&fake, "checkout"), ("False".into(), REASON_TARGET_NOT_FOUND.into()));
}

#[tokio::test]
async fn policies_beyond_the_rules_budget_are_refused_oldest_first_and_the_stack_stays_ready() {
    let fake = cluster_with(|_| {});
    // 80 policies of 64 rules, about 1 MiB together; the youngest named first.
    for i in 0..80 {
        put_policy(&fake, &format!("team-{:02}", 79 - i), "shop", 64, i);
    }
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.expect("the stack reconciles");
    make_deployments_available(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();

    let stack = fake.stack();
    assert_eq!(condition(&stack, CONDITION_READY), ("True".into(), "AllServicesAvailable".into()));
    assert_eq!(condition(&stack, CONDITION_DEGRADED).0, "False");
    let rules = fake.get("configmaps", "shop-gateway-rate-limits").expect("the rules ConfigMap");
    let text = rules["data"]["rules.yaml"].as_str().expect("the rules file");
    assert!(text.len() <= MAX_RULES_FILE_BYTES, "{} bytes", text.len());

    let verdicts: Vec<(String, String)> =
        (0..80).map(|i| accepted_reason(&fake, &format!("team-{:02}", 79 - i))).collect();
    let taken = verdicts.iter().take_while(|v| v.0 == "True").count();
    assert!((10..80).contains(&taken), "{verdicts:?}");
    assert!(
        verdicts[taken..].iter().all(|v| *v == ("False".to_owned(), REASON_RULES_BUDGET_EXCEEDED.to_owned())),
        "the oldest are accepted, every younger one refused: {verdicts:?}"
    );
    for i in 0..80 {
        let name = format!("team-{:02}", 79 - i);
        let in_file = text.contains(&format!("# {name}_orders-create-0:"));
        assert_eq!(in_file, i < taken as i64, "{name}");
    }
    let (_, _, message) = accepted(&fake, &format!("team-{:02}", 79 - taken)).unwrap();
    assert!(message.contains("created earlier"), "{message}");
    let seen = fake.take_seen();
    assert_eq!(event_notes(&seen, REASON_RULES_BUDGET_EXCEEDED).len(), 80 - taken);

    // Nothing changed: nothing is written again.
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(writes(&fake.take_seen()), Vec::<String>::new());
}

#[tokio::test]
async fn the_policies_of_a_stack_without_a_gateway_are_not_accepted() {
    let fake = cluster_with(|stack| stack["spec"]["services"] = json!({"gateway": {"enabled": false}}));
    put_policy(&fake, "checkout", "shop", 1, 0);
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let (status, reason, message) = accepted(&fake, "checkout").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", REASON_GATEWAY_DISABLED));
    assert!(message.contains("services.gateway.enabled is false"), "{message}");
}

#[tokio::test]
async fn a_paused_stack_refuses_a_new_policy_and_keeps_the_accepted_one() {
    let fake = cluster_with(|_| {});
    put_policy(&fake, "checkout", "shop", 1, 0);
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(accepted_reason(&fake, "checkout").0, "True");

    // Paused, the stack's reconcile reads nothing; the policy controller,
    // woken by the stack and by the new policy, answers for it.
    fake.edit("commercestacks", "shop", |stack| stack["spec"]["paused"] = json!(true));
    put_policy(&fake, "search", "shop", 1, 1);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    reconcile_stored_policy(&fake, &ctx, "checkout").await;
    reconcile_stored_policy(&fake, &ctx, "search").await;
    assert_eq!(accepted_reason(&fake, "checkout"), ("True".into(), REASON_ACCEPTED.into()));
    assert_eq!(accepted_reason(&fake, "search"), ("False".into(), REASON_STACK_PAUSED.into()));
    let rules = fake.get("configmaps", "shop-gateway-rate-limits").unwrap();
    assert!(!rules["data"].to_string().contains("search_"), "nothing is applied while paused");

    fake.edit("commercestacks", "shop", |stack| stack["spec"]["paused"] = json!(false));
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(accepted_reason(&fake, "search"), ("True".into(), REASON_ACCEPTED.into()));
}

#[tokio::test]
async fn a_policy_of_a_stack_with_an_invalid_spec_is_refused_as_stack_invalid() {
    let fake = cluster_with(|stack| stack["spec"]["kafka"]["managed"] = json!({}));
    put_policy(&fake, "checkout", "shop", 1, 0);
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(accepted(&fake, "checkout"), None, "the stack's reconcile leaves it to the policy controller");
    reconcile_stored_policy(&fake, &ctx, "checkout").await;
    let (status, reason, message) = accepted(&fake, "checkout").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", REASON_STACK_INVALID));
    assert!(message.contains("CommerceStack/shop has an invalid spec"), "{message}");
}

// ------------------------------------------------------------ monitoring

#[tokio::test]
async fn a_pod_monitor_is_made_once_the_cluster_serves_the_kind_and_the_pods_are_annotated_until_then() {
    let fake = cluster_with(|stack| {
        stack["spec"]["monitoring"] =
            json!({"scrape": "PodMonitor", "labels": {"release": "prometheus"}, "interval": "30s"});
    });
    let ctx = context(&fake);
    let annotations = |fake: &FakeApi| {
        let deployment = fake.get("deployments", "shop-order").unwrap();
        deployment["spec"]["template"]["metadata"]["annotations"].clone()
    };

    // Without the prometheus-operator's CRDs: annotations, and the status
    // says why there is no PodMonitor.
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(annotations(&fake)["prometheus.io/scrape"], "true");
    assert_eq!(annotations(&fake)["prometheus.io/port"], "9090");
    assert!(fake.get("podmonitors", "shop").is_none());
    let degraded = full_condition(&fake.stack(), CONDITION_DEGRADED).unwrap();
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "PodMonitorNotServed"));
    assert!(degraded.message.contains("install the prometheus-operator's CRDs"), "{}", degraded.message);

    // The CRDs are installed: the next reconcile makes the PodMonitor and
    // takes the annotations off (no Prometheus scrapes a pod twice).
    fake.serves_pod_monitors.store(true, std::sync::atomic::Ordering::Relaxed);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let monitor = fake.get("podmonitors", "shop").expect("the stack's PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["metadata"]["labels"]["commerce-stack.dev/stack"], "shop");
    assert_eq!(monitor["metadata"]["ownerReferences"][0]["uid"], UID);
    let selector = &monitor["spec"]["selector"];
    assert_eq!(selector["matchLabels"]["app.kubernetes.io/instance"], "shop");
    let services: Vec<&str> = selector["matchExpressions"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(services.len(), commerce_topology::Service::ALL.len(), "{services:?}");
    assert!(services.contains(&"order") && !services.contains(&"kafka"), "{services:?}");
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(
        (&endpoint["port"], &endpoint["path"], &endpoint["interval"]),
        (&json!("admin"), &json!("/metrics"), &json!("30s"))
    );
    assert!(annotations(&fake).get("prometheus.io/scrape").is_none(), "{}", annotations(&fake));
    assert_ne!(full_condition(&fake.stack(), CONDITION_DEGRADED).unwrap().reason, "PodMonitorNotServed");

    // Back to annotations: the PodMonitor goes, the annotations come back.
    fake.edit("commercestacks", "shop", |stack| {
        stack["spec"]["monitoring"] = json!({});
        stack["metadata"]["generation"] = json!(2);
    });
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert!(fake.get("podmonitors", "shop").is_none(), "pruned");
    assert_eq!(annotations(&fake)["prometheus.io/scrape"], "true");
}

// ------------------------------------------------------------ StorageClasses

#[tokio::test]
async fn a_storage_class_that_managed_postgres_names_and_the_cluster_lacks_is_reported_as_degraded() {
    let fake = cluster_with(|stack| {
        stack["spec"]["postgres"] = json!({"managed": {"storage": {"storageClassName": "fast-ssd"}}});
    });
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let stack = fake.stack();
    let degraded = full_condition(&stack, CONDITION_DEGRADED).unwrap();
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "StorageClassNotFound"));
    assert!(
        degraded.message.contains("StorageClass fast-ssd does not exist")
            && degraded.message.contains("postgres.managed.storage.storageClassName"),
        "{}",
        degraded.message
    );
    assert_eq!(condition(&stack, CONDITION_READY).0, "False");
    assert!(fake.get("statefulsets", "shop-postgres").is_some(), "applied regardless");
    assert_eq!(event_notes(&fake.take_seen(), "StorageClassNotFound").len(), 1);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert!(event_notes(&fake.take_seen(), "StorageClassNotFound").is_empty(), "reported once");

    // The class is created: still waiting for Postgres, no longer degraded.
    fake.objects.lock().unwrap().insert(
        ("storageclasses".into(), String::new(), "fast-ssd".into()),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "fast-ssd"}, "provisioner": "example.com/ssd"}),
    );
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let stack = fake.stack();
    assert_eq!(condition(&stack, CONDITION_DEGRADED), ("False".into(), "AsExpected".into()));
    assert_eq!(condition(&stack, CONDITION_READY).0, "False", "Postgres is still starting");
}

// ------------------------------------------------------------------ kstatus

/// `(Reconciling, Stalled)` statuses of the stored stack.
fn kstatus(fake: &FakeApi) -> (String, String) {
    let stack = fake.stack();
    (condition(&stack, CONDITION_RECONCILING).0, condition(&stack, CONDITION_STALLED).0)
}

#[tokio::test]
async fn kstatus_sees_a_new_stack_reconciling_then_current_and_the_steady_state_writes_nothing() {
    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(kstatus(&fake), ("True".into(), "False".into()), "objects were just applied");
    make_deployments_available(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(condition(&fake.stack(), CONDITION_READY).0, "True");
    assert_eq!(kstatus(&fake), ("False".into(), "False".into()), "a Ready stack is Current");
    let reconciling = full_condition(&fake.stack(), CONDITION_RECONCILING).unwrap();
    assert_eq!(reconciling.observed_generation, Some(1));
    fake.take_seen();

    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(writes(&fake.take_seen()), Vec::<String>::new(), "a no-op reconcile writes nothing");
}

#[tokio::test]
async fn kstatus_sees_an_invalid_spec_and_a_refused_object_as_stalled_and_a_broken_broker_as_reconciling() {
    let fake = cluster_with(|stack| {
        stack["spec"]["services"] =
            json!({"order": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "500m"}}}})
    });
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    assert_eq!(kstatus(&fake), ("False".into(), "True".into()));
    let stalled = full_condition(&fake.stack(), CONDITION_STALLED).unwrap();
    assert_eq!(
        (stalled.reason.as_str(), stalled.message.as_str()),
        ("InvalidSpec", "services.order.resources: requests.cpu 2 exceeds limits.cpu 500m")
    );

    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    fake.reject("deployments", "shop-order", 422, "Invalid", INVALID_DEPLOYMENT);
    reconcile_stack(&fake.stack(), &ctx).await.expect_err("a rejected object is retried with backoff");
    assert_eq!(kstatus(&fake), ("False".into(), "True".into()));
    let stalled = full_condition(&fake.stack(), CONDITION_STALLED).unwrap();
    assert_eq!(stalled.reason, "ObjectsRefused");
    assert!(stalled.message.starts_with("Deployment/shop-order: "), "{}", stalled.message);

    let external = Arc::new(FakeExternal::default());
    *external.failing.lock().unwrap() = true;
    let fake = cluster_with(|_| {});
    let ctx = context_with(&fake, external);
    reconcile_stack(&fake.stack(), &ctx).await.expect_err("a broken broker is retried with backoff");
    assert_eq!(kstatus(&fake), ("True".into(), "False".into()), "retried: not stalled");
    let reconciling = full_condition(&fake.stack(), CONDITION_RECONCILING).unwrap();
    assert_eq!(reconciling.reason, "RetryingExternalState");
}

/// A value of the stack's signing-key Secret, decoded.
fn signing_key_data(fake: &FakeApi, key: &str) -> Option<String> {
    use base64::Engine as _;
    let secret = fake.get("secrets", "shop-auth-signing-key").expect("the signing-key Secret");
    let encoded = secret["data"][key].as_str()?.to_owned();
    Some(String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap())
}

fn signing_key_annotation(fake: &FakeApi, key: &str) -> Option<String> {
    let secret = fake.get("secrets", "shop-auth-signing-key").expect("the signing-key Secret");
    secret["metadata"]["annotations"][key].as_str().map(str::to_owned)
}

#[tokio::test]
async fn a_requested_key_rotation_prepublishes_the_next_key_then_promotes_it_across_operator_restarts() {
    use commerce_operator::build::secrets::{
        NEXT_SIGNING_KEY_ACTIVATION_KEY, NEXT_SIGNING_KEY_PEM_KEY, SIGNING_KEY_PEM_KEY,
    };
    use commerce_operator::reconcile::signing_key::{
        ACTIVATED_AT_ANNOTATION, HANDLED_REQUEST_ANNOTATION, REASON_ROTATION_FINISHED,
        REASON_ROTATION_STARTED, RETIRES_AT_ANNOTATION,
    };
    let fake = cluster_with(|_| {});
    let ctx = context(&fake);
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let old_key = signing_key_data(&fake, SIGNING_KEY_PEM_KEY).expect("a generated key");
    assert_eq!(signing_key_data(&fake, NEXT_SIGNING_KEY_PEM_KEY), None);
    assert!(signing_key_annotation(&fake, ACTIVATED_AT_ANNOTATION).is_some());
    let auth_deployment = fake.get("deployments", "shop-auth").unwrap();
    fake.take_seen();

    // Request a rotation, as `kubectl annotate` would.
    fake.edit("commercestacks", "shop", |stack| {
        stack["metadata"]["annotations"] =
            json!({"commerce-stack.dev/rotate-signing-key": "2026-12-03T20:00:00Z"});
    });
    let before = k8s_openapi::jiff::Timestamp::now();
    reconcile_stack(&fake.stack(), &ctx).await.unwrap();
    let seen = fake.take_seen();
    let next_key = signing_key_data(&fake, NEXT_SIGNING_KEY_PEM_KEY).expect("the next key is in the Secret");
    assert_ne!(next_key, old_key);
    assert!(next_key.starts_with("-----BEGIN PRIVATE KEY-----"), "{next_key}");
    assert_eq!(signing_key_data(&fake, SIGNING_KEY_PEM_KEY).unwrap(), old_key, "the old key still signs");
    let activates_at: k8s_openapi::jiff::Timestamp =
        signing_key_data(&fake, NEXT_SIGNING_KEY_ACTIVATION_KEY).unwrap().parse().unwrap();
    let prepublished = before.duration_until(activates_at).as_secs();
    assert!((299..=301).contains(&prepublished), "activates {prepublished}s ahead, not the default 5 min");
    let retires_at: k8s_openapi::jiff::Timestamp =
        signing_key_annotation(&fake, RETIRES_AT_ANNOTATION).unwrap().parse().unwrap();
    assert_eq!(activates_at.duration_until(retires_at).as_secs(), 15 * 60 + 120, "token lifetime + slack");
    assert_eq!(
        signing_key_annotation(&fake, HANDLED_REQUEST_ANNOTATION).as_deref(),
        Some("2026-12-03T20:00:00Z")
    );
    let notes = event_notes(&seen, REASON_ROTATION_STARTED);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("2026-12-03T20:00:00Z") && notes[0].contains(&activates_at.to_string()),
        "{}",
        notes[0]
    );
    // The pods are not rolled: they re-read the mounted files.
    let object_writes: Vec<String> = writes(&seen).into_iter().filter(|w| !w.contains("events")).collect();
    assert!(object_writes.contains(&"PATCH secrets/shop-auth-signing-key".to_owned()), "{object_writes:?}");
    assert!(!object_writes.iter().any(|w| w.contains("deployments/")), "{object_writes:?}");
    assert_eq!(fake.get("deployments", "shop-auth").unwrap(), auth_deployment);

    // A restarted operator (a new context, nothing in memory) keeps the
    // rotation as it is while the old key's tokens live.
    let restarted = context(&fake);
    reconcile_stack(&fake.stack(), &restarted).await.unwrap();
    let seen = fake.take_seen();
    assert!(!writes(&seen).iter().any(|w| w.contains("secrets/")), "{:?}", writes(&seen));
    assert_eq!(signing_key_data(&fake, NEXT_SIGNING_KEY_PEM_KEY).unwrap(), next_key);
    assert!(event_notes(&seen, REASON_ROTATION_STARTED).is_empty());

    // Time passes: the stored activation and retirement lie in the past.
    fake.edit("secrets", "shop-auth-signing-key", |secret| {
        use base64::Engine as _;
        let past = base64::engine::general_purpose::STANDARD.encode("2020-01-01T00:05:00Z");
        secret["data"][NEXT_SIGNING_KEY_ACTIVATION_KEY] = json!(past);
        secret["metadata"]["annotations"][RETIRES_AT_ANNOTATION] = json!("2020-01-01T00:22:00Z");
    });
    let restarted = context(&fake);
    reconcile_stack(&fake.stack(), &restarted).await.unwrap();
    let seen = fake.take_seen();
    assert_eq!(signing_key_data(&fake, SIGNING_KEY_PEM_KEY).unwrap(), next_key, "promoted");
    assert_eq!(signing_key_data(&fake, NEXT_SIGNING_KEY_PEM_KEY), None, "the old key is gone");
    assert_eq!(signing_key_data(&fake, NEXT_SIGNING_KEY_ACTIVATION_KEY), None);
    assert_eq!(signing_key_annotation(&fake, RETIRES_AT_ANNOTATION), None);
    assert_eq!(
        signing_key_annotation(&fake, ACTIVATED_AT_ANNOTATION).as_deref(),
        Some("2020-01-01T00:05:00Z")
    );
    assert_eq!(event_notes(&seen, REASON_ROTATION_FINISHED).len(), 1);
    assert!(!writes(&seen).iter().any(|w| w.contains("deployments/")), "{:?}", writes(&seen));

    // The same request value asks for nothing more.
    reconcile_stack(&fake.stack(), &restarted).await.unwrap();
    let seen = fake.take_seen();
    assert!(!writes(&seen).iter().any(|w| w.contains("secrets/")), "{:?}", writes(&seen));
    assert_eq!(signing_key_data(&fake, SIGNING_KEY_PEM_KEY).unwrap(), next_key);
}
