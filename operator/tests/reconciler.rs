//! The reconciler against a fake apiserver on a `tower-test` mock: every
//! request the reconciler sends is answered from an in-memory store and
//! recorded, so that the tests can say exactly which writes a reconcile made
//! (none, when there is nothing to do).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use commerce_api::CommerceStack;
use commerce_api::catalog::all_topics;
use commerce_api::crd::stack::{CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY, TopicStatus};
use commerce_operator::Error;
use commerce_operator::build::{self, names};
use commerce_operator::external::{DatabasePlan, ExternalState, PostgresServer, TopicPlan};
use commerce_operator::metrics::Metrics;
use commerce_operator::reconcile::{
    Context, FINALIZER, backoff::Backoffs, error_policy, reconcile, reconcile_stack,
};
use http::{Method, Request, Response, StatusCode};
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
}

impl Seen {
    fn is_write(&self) -> bool {
        self.method != Method::GET
    }
}

/// An in-memory apiserver, enough for the reconciler.
#[derive(Default)]
struct FakeApi {
    /// Objects by (plural, namespace, name).
    objects: Mutex<BTreeMap<(String, String, String), Value>>,
    seen: Mutex<Vec<Seen>>,
    /// Requests (method, plural) that fail with a 500.
    failing: Mutex<Option<(Method, String)>>,
    resource_version: Mutex<u64>,
}

/// `(namespace, plural, name, subresource)` of a request path.
fn parse_path(path: &str) -> (String, String, Option<String>, Option<String>) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let at = parts.iter().position(|p| *p == "namespaces").expect("namespaced request");
    let get = |i: usize| parts.get(at + i).map(|s| (*s).to_owned());
    (get(1).unwrap(), get(2).unwrap(), get(3), get(4))
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
        let (namespace, plural, name, subresource) = parse_path(parts.uri.path());
        self.seen.lock().unwrap().push(Seen {
            method: parts.method.clone(),
            uri: parts.uri.to_string(),
            plural: plural.clone(),
            name: name.clone(),
        });
        if self.failing.lock().unwrap().as_ref() == Some(&(parts.method.clone(), plural.clone())) {
            return status_response(500, "InternalError", "injected failure");
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
            (Method::DELETE, Some(name)) => match objects.remove(&(plural, namespace, name)) {
                Some(object) => json_response(StatusCode::OK, &object),
                None => status_response(404, "NotFound", "not found"),
            },
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
        *self.failing.lock().unwrap() = Some((method, plural.into()));
    }

    fn heal(&self) {
        *self.failing.lock().unwrap() = None;
    }
}

/// Records what the reconciler asked of Kafka and Postgres, and fails on
/// request.
#[derive(Default)]
struct FakeExternal {
    calls: Mutex<Vec<String>>,
    failing: Mutex<bool>,
}

impl FakeExternal {
    fn record(&self, call: String) -> Result<(), Error> {
        self.calls.lock().unwrap().push(call);
        if *self.failing.lock().unwrap() {
            return Err(Error::EnsureTopics {
                source: commerce_platform::events::TopicAdminError::FetchMetadata(
                    rdkafka::error::KafkaError::Canceled,
                ),
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
    async fn ensure_topics(&self, brokers: &str, topics: &[TopicPlan]) -> Result<Vec<TopicStatus>, Error> {
        self.record(format!("ensure {} topics at {brokers}", topics.len()))?;
        Ok(topics.iter().map(|t| TopicStatus { name: t.name.clone(), partitions: t.partitions }).collect())
    }

    async fn ensure_databases(
        &self,
        server: &PostgresServer,
        databases: &[DatabasePlan],
    ) -> Result<(), Error> {
        self.record(format!("ensure {} databases at {} as {}", databases.len(), server.host, server.user))
    }

    async fn drop_databases(&self, server: &PostgresServer, databases: &[DatabasePlan]) -> Result<(), Error> {
        self.record(format!("drop {} databases at {}", databases.len(), server.host))
    }

    async fn delete_topics(&self, brokers: &str, topics: &[TopicPlan]) -> Result<(), Error> {
        self.record(format!("delete {} topics at {brokers}", topics.len()))
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
    let status = stack.status.as_ref().expect("a status");
    let condition = status.conditions.iter().find(|c| c.type_ == type_).expect("the condition");
    (condition.status.clone(), condition.reason.clone())
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
    let expected = build::build(&valid, &[], &build::secrets::SecretValues::placeholders()).unwrap();
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
    assert_eq!(stack.status.unwrap().ready_services.as_deref(), Some("0/9"));
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
            "ensure 7 databases at postgres.infra.svc as commerce_admin".to_owned(),
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
        (names.database(commerce_api::catalog::Service::Order).as_str(), "shop-db-order")
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
    assert_eq!(
        external.take_calls(),
        [
            "drop 7 databases at postgres.infra.svc".to_owned(),
            format!("delete {} topics at kafka-0.kafka.infra.svc:9092", all_topics().len()),
        ]
    );
    assert!(fake.get("commercestacks", "shop").is_none(), "the finalizer was removed and the stack is gone");
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
        assert!(matches!(error, Error::ApplyObject { .. }), "{error}");
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
